"""`modelops card OUT_DIR`: (re)write the model card from the folder's modelops_recipe.yaml, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelops.cli.common import DryRun, Quiet, handle_errors, setup


@handle_errors
def card(
    folder: Annotated[Path, typer.Argument(help="Output folder written by modelops (has modelops_recipe.yaml).")],
    template: Annotated[
        Path | None,
        typer.Option("--template", help="Jinja card template (gets card_data, default_body, method, paper, ...)."),
    ] = None,
    extra_text: Annotated[
        Path | None, typer.Option("--extra-text", help="Markdown file appended to the card (intended use, license...).")
    ] = None,
    dry_run: DryRun = False,
    quiet: Quiet = False,
) -> None:
    """Write FOLDER/README.md: base models, relation, tags, method + paper, the exact recipe, measured numbers.

    Never touches the network. --dry-run prints the card instead of writing it.
    """
    setup(quiet)
    from modelops import api
    from modelops.errors import OutputError

    if not folder.is_dir():
        raise typer.BadParameter(f"{folder} is not a folder", param_hint="FOLDER")
    extra = None
    if extra_text is not None:
        try:
            extra = extra_text.read_text(encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"{extra_text}: cannot read the extra text ({exc.strerror})") from None
    if dry_run:
        typer.echo(str(api.build_card(folder, template=template, extra_text=extra)))
        return
    path = api.write_card(folder, template=template, extra_text=extra)
    typer.echo(f"Wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("card", help=card.__doc__, short_help="(Re)write a folder's model card, offline.")(card)
