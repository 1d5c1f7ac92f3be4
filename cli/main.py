"""`modelops` entry point. Importing this must stay cheap: no torch/transformers at module level anywhere in cli/."""

from __future__ import annotations

import typer

from modelops.cli import apply_lora, card, demo, extract_lora, extrapolate, fuse_decode, merge, push, zoo
from modelops.cli import eval as eval_cli
from modelops.version import __version__


def _flags_as_switches() -> None:
    """typer prints a `<bool>` type after every flag; a switch takes no value, so its row shows none."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: typer.Context) -> str | None:
        return None if self.is_flag and self.metavar is None else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_as_switches()
app = typer.Typer(
    name="modelops",
    help="LLM model surgery and weak-to-strong transfer: ExPO, merges, LoRA extraction, fused decoding.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    add_completion=False,
)

for module in (extrapolate, merge, extract_lora, apply_lora, fuse_decode, eval_cli, push, card, zoo, demo):
    module.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"modelops {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """modelops: one toolkit for weight-space surgery and decode-time fusion."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
