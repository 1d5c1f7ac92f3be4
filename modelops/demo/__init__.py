"""`modelops demo`: the toolkit on models it makes itself, one table of claims, measurements and verdicts.

Presets: tiny (the weight-space operations on random from-config models, checked on logits, in seconds), mini and
full (the CPU-trained zoo: every operation and every paper's ordering). The demo is a client of `modelops.api`,
like the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelops.demo.report import DemoLine, DemoReport

PRESETS = ("tiny", "mini", "full")

__all__ = ["PRESETS", "DemoLine", "DemoReport", "run_demo"]


def run_demo(
    preset: str = "mini",
    *,
    seed: int = 0,
    workdir: Path = Path("modelops-demo"),
    limit: int | None = None,
    device: str = "cpu",
    on_line: Callable[[DemoLine], None] | None = None,
    zoo_progress: Any = None,
) -> DemoReport:
    """Run one preset; `on_line` sees each line as soon as it is measured."""
    import time

    from modelops.errors import ModelopsError

    if preset not in PRESETS:
        raise ModelopsError(f"demo preset {preset!r}: expected one of {', '.join(PRESETS)}")
    if preset != "tiny":
        from modelops.demo.zoo import run_zoo_demo

        return run_zoo_demo(preset, seed=seed, workdir=workdir, limit=limit, device=device, on_line=on_line,
                            zoo_progress=zoo_progress)  # fmt: skip
    from modelops.demo.tiny import run_tiny_demo

    start = time.perf_counter()
    report = DemoReport(workdir / "models", preset)
    for line in run_tiny_demo(workdir):
        report.lines.append(line)
        if on_line:
            on_line(line)
    report.seconds = time.perf_counter() - start
    return report
