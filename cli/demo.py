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
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="Several zoo seeds (0,1,2 or 0-2): one table over them all.")
    ] = None,
    sample_seeds: Annotated[
        str, typer.Option("--sample-seeds", help="Sampling seeds of the searches (0-2); with --seeds.")
    ] = "0",
    table: Annotated[
        Path | None,
        typer.Option("--table", help="With --seeds: the Markdown table (default WORKDIR/demo-PRESET-seeds.md)."),
    ] = None,
    readme: Annotated[
        Path | None, typer.Option("--readme", help="With --seeds: also put the table between README's marker lines.")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Evaluate only the first N rows of each task.")] = None,
    workdir: Annotated[Path, typer.Option("--workdir", help="Where demo outputs go.")] = Path("modelops-demo"),
    threads: Threads = 1,
    quiet: Quiet = False,
) -> None:
    """Build the zoo (cached) and run extrapolate, merge, extract-lora, fuse-decode (every rule) and eval on it."""
    from modelops.demo import PRESETS, run_demo

    if preset not in PRESETS:
        raise typer.BadParameter(f"{preset!r}: expected one of {', '.join(PRESETS)}", param_hint="--preset")
    if seeds is not None and preset == "tiny":
        raise typer.BadParameter("--seeds needs a zoo preset (mini or full)", param_hint="--seeds")
    setup(quiet, threads)
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    err_console = Console(stderr=True)

    def show(line) -> None:
        if not quiet:
            err_console.print(f"[dim]{line.seconds:6.1f} s[/dim]  {line.claim} — {line.verdict}")

    from modelops.cli.progress import ZooProgress

    building = None if quiet or preset == "tiny" else ZooProgress()  # a bar per model while the zoo is built
    try:
        if seeds is not None:
            _seed_table(preset, seeds, sample_seeds, table, readme, limit, workdir, show, building)
            return
        report = run_demo(preset, seed=seed, workdir=workdir, limit=limit, on_line=show, zoo_progress=building)
    finally:
        if building is not None:
            building.close()
    _print_report(report)
    out = workdir / f"demo-{preset}-s{seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"zoo": str(report.zoo), "preset": preset, "seed": seed, "seconds": report.seconds,
               "lines": [x.to_dict() for x in report.lines], "details": report.details}  # fmt: skip
    out.write_text(json.dumps(payload, indent=2, default=str))
    typer.echo(f"Details in {out}")


def _print_report(report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"modelops demo --preset {report.preset} ({report.zoo}), {report.seconds:.0f} s", show_lines=True
    )
    for col in ("half", "claim", "task", "measured", "verdict", "s"):
        table.add_column(col, overflow="fold")
    for line in report.lines:
        table.add_row(line.section, line.claim, line.task, line.values, line.verdict, f"{line.seconds:.1f}")
    Console(width=160).print(table)
    typer.echo(f"Verdicts: {report.tally()}. {report.caveat()}")


def _seed_table(preset, seeds, sample_seeds, table, readme, limit, workdir, show, building) -> None:
    """Every zoo seed × sampling seed, one Markdown table (and README's copy of it)."""
    from modelops.demo.seeds import parse_seeds, replace_table, run_seeds, seed_table

    zoo_seeds, samples = parse_seeds(seeds), parse_seeds(sample_seeds, "--sample-seeds")
    runs = run_seeds(preset, zoo_seeds, samples, workdir=workdir, limit=limit, on_line=show, zoo_progress=building)
    text = seed_table(runs, preset=preset, limit=limit)
    table = table or workdir / f"demo-{preset}-seeds.md"
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(text, encoding="utf-8")
    raw = workdir / f"demo-{preset}-seeds.json"
    raw.write_text(json.dumps([{"zoo_seed": r.zoo_seed, "sample_seed": r.sample_seed,
                                "lines": [x.to_dict() for x in r.lines]} for r in runs], indent=1, default=str))  # fmt: skip
    typer.echo(text)
    if readme is not None:
        replace_table(readme, text)
        typer.echo(f"Table written to {table} and {readme}; every run's claims in {raw}")
    else:
        typer.echo(f"Table written to {table}; every run's claims in {raw}")


def register(app: typer.Typer) -> None:
    app.command("demo", short_help="The whole toolkit on models it makes itself: one table of claims.")(demo)
