"""`modelops demo`: the whole toolkit on models it makes itself; one table of claims and measurements."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from modelops.cli.common import Quiet, Threads, handle_errors, setup


@handle_errors
def demo(
    preset: Annotated[
        str, typer.Option("--preset", help="tiny: weight ops on random models (s); mini: zoo, ~4 min; full: ~25 min.")
    ] = "mini",
    seed: Annotated[int, typer.Option("--seed", help="Zoo seed (world and every training run).")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", help="Evaluate only the first N rows of each task.")] = None,
    workdir: Annotated[Path, typer.Option("--workdir", help="Where demo outputs go.")] = Path("modelops-demo"),
    threads: Threads = 1,
    quiet: Quiet = False,
) -> None:
    """Build the zoo (cached) and run extrapolate, merge, extract-lora, fuse-decode (every rule) and eval on it."""
    from modelops.demo import PRESETS, run_demo

    if preset not in PRESETS:
        raise typer.BadParameter(f"{preset!r}: expected one of {', '.join(PRESETS)}", param_hint="--preset")
    setup(quiet, threads)
    from rich.console import Console
    from rich.table import Table
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    err_console = Console(stderr=True)

    def show(line) -> None:
        if not quiet:
            err_console.print(f"[dim]{line.seconds:6.1f} s[/dim]  {line.claim} — {line.verdict}")

    from modelops.cli.progress import ZooProgress

    building = None if quiet or preset == "tiny" else ZooProgress()  # a bar per model while the zoo is built
    try:
        report = run_demo(preset, seed=seed, workdir=workdir, limit=limit, on_line=show, zoo_progress=building)
    finally:
        if building is not None:
            building.close()
    table = Table(title=f"modelops demo --preset {preset} ({report.zoo}), {report.seconds:.0f} s", show_lines=True)
    for col in ("half", "claim", "task", "measured", "verdict", "s"):
        table.add_column(col, overflow="fold")
    for line in report.lines:
        table.add_row(line.section, line.claim, line.task, line.values, line.verdict, f"{line.seconds:.1f}")
    Console(width=160).print(table)
    typer.echo(f"Verdicts: {report.tally()}. {report.caveat()}")
    out = workdir / f"demo-{preset}-s{seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"zoo": str(report.zoo), "preset": preset, "seed": seed, "seconds": report.seconds,
               "lines": [vars(x) for x in report.lines], "details": report.details}  # fmt: skip
    out.write_text(json.dumps(payload, indent=2, default=str))
    typer.echo(f"Details in {out}")


def register(app: typer.Typer) -> None:
    app.command("demo", short_help="The whole toolkit on models it makes itself: one table of claims.")(demo)
