"""Run the small models on a second thread while the large model runs on the caller's: `--parallel-models`.

The fused decode is slower than the large model alone mostly because the models run one after another
(docs/methods.md §2.2). torch releases the GIL inside its kernels, so one worker thread can step the small models while
the large one steps here; every step still waits for all of them before the rule combines their logits, so the
tokens are exactly those of the sequential loop. On CUDA both threads queue work on the same stream, which stays
correct and overlaps only the Python-side cost. It uses a second CPU core: off by default.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Overlap:
    """Calls thunks [large, small…]: the first on the caller's thread, the rest in order on one worker thread."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelops-small-models")

    def run(self, calls: list[Callable[[], T]]) -> list[T]:
        if len(calls) < 2:
            return [call() for call in calls]
        rest = self.pool.submit(lambda: [call() for call in calls[1:]])
        try:
            first = calls[0]()
        finally:
            others = rest.result()  # wait for the worker even if the large model failed: no stray step
        return [first, *others]

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def run_all(calls: list[Callable[[], T]], overlap: Overlap | None) -> list[T]:
    """Every thunk's result in order; overlapped when an `Overlap` is given."""
    return overlap.run(calls) if overlap is not None else [call() for call in calls]
