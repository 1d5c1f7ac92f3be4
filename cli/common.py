"""Shared option aliases and the one place that turns exceptions into a one-line error and an exit code."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; only the result.")]
Threads = Annotated[
    int, typer.Option("--threads", min=1, help="torch CPU threads (1 is fastest on small shared machines).")
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output folder (atomically).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Validate and print the plan; write nothing.")]
Resume = Annotated[
    bool, typer.Option("--resume", help="Continue an interrupted run of the same command, keeping what it finished.")
]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Output folder (created; written atomically).")]
DtypeOpt = Annotated[
    str | None, typer.Option("--dtype", help="Output dtype: float32, bfloat16 or float16 (default: as the input).")
]
ShardSize = Annotated[str, typer.Option("--shard-size", help="Largest shard file, e.g. 5GB, 500MB.")]
AllowPickle = Annotated[
    bool, typer.Option("--allow-pickle", help="Accept .bin pickle weights (loaded with weights_only=True).")
]
Device = Annotated[str, typer.Option("--device", help="Where the math runs: cpu, cuda, cuda:N or auto.")]
RecipeOpt = Annotated[Path | None, typer.Option("--recipe", help="YAML recipe; flags given here override it.")]


def err(message: str) -> None:
    typer.echo(message, err=True)


def _terminated(signum: int, frame: object) -> None:
    from modelops.errors import Interrupted

    raise Interrupted("Terminated; nothing was written to the output folder.", 143)


def setup(quiet: bool, threads: int | None = None) -> None:
    """Logging to stderr (warnings always, info unless quiet), the torch thread count, and SIGTERM handled like
    Ctrl-C (what a pre-empted job receives), so finished work is kept and the exit status is 143."""
    signal.signal(signal.SIGTERM, _terminated)
    level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    for noisy in ("httpx", "httpx2", "httpcore", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        import torch

        torch.set_num_threads(threads)


def handle_errors(fn: F) -> F:
    """ModelopsError -> 'Error: <line>' on stderr, exit 1. Tracebacks only with MODELOPS_DEBUG=1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from modelops.errors import ModelopsError

        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except ModelopsError as exc:
            if os.environ.get("MODELOPS_DEBUG"):
                raise
            err(f"Error: {exc}")
            raise typer.Exit(1) from None
        except BrokenPipeError:  # output piped into `head` etc.: not an error of ours
            raise typer.Exit(0) from None
        except KeyboardInterrupt as exc:
            err(getattr(exc, "message", "Interrupted; nothing was written to the output folder."))
            raise typer.Exit(getattr(exc, "code", 130)) from None
        except (OSError, MemoryError) as exc:
            if os.environ.get("MODELOPS_DEBUG"):
                raise
            err(f"Error: {exc}")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def print_merge_result(result: Any) -> None:
    """One summary line on stdout."""
    survival = f", ExPO update kept {result.survival:.1%}" if result.survival is not None else ""
    kept = f" ({result.resumed_shards} shard(s) kept from the interrupted run)" if result.resumed_shards else ""
    typer.echo(
        f"Wrote {result.tensors} tensors ({human_bytes(result.bytes_written)}) in "
        f"{sum(f.endswith('.safetensors') for f in result.files)} shard(s) to {result.out} "
        f"in {result.seconds:.1f} s, peak RSS {human_bytes(result.peak_rss)}{survival}{kept}"
    )
