"""`modelops demo`: the whole weight-space toolkit on a model family it makes itself, checked on logits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelops.cli.common import Quiet, Threads, handle_errors, setup


@handle_errors
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where demo models and outputs go.")] = Path(
        "modelops-demo"
    ),
    threads: Threads = 1,
    quiet: Quiet = False,
) -> None:
    """Build a small Llama family from config (no download) and run extrapolate and merges on it."""
    setup(quiet, threads)
    from rich.console import Console
    from rich.table import Table

    from modelops.demo import run_demo

    rows = run_demo(workdir)
    table = Table(title=f"modelops demo (models in {workdir / 'models'})")
    for col in ("operation", "same as", "seconds", "check"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.operation, r.command, f"{r.seconds:.2f}", r.check)
    Console().print(table)
    typer.echo(f"Outputs in {workdir / 'outputs'}; try: modelops merge --recipe recipes/ties.yaml --out my-merge")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
