"""`modelops zoo build|list`: the built-in model family, trained on CPU and cached by content hash."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelops.cli.common import Quiet, handle_errors, human_bytes, setup
from modelops.cli.progress import ZooProgress, score_text

PresetOpt = Annotated[
    str, typer.Option("--preset", help="mini (tests, ~70 s here) or full (~12 min here, 2 shared cores).")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the world and of every training run.")]
ZooOut = Annotated[Path | None, typer.Option("--out", "-o", help="Build folder (default: $MODELOPS_CACHE/zoo/<hash>).")]


def _print_zoo(folder: Path, manifest: dict | None) -> None:
    from modelops.api import folder_bytes, iter_models

    if manifest is None:
        typer.echo(f"{folder}  (unfinished build; run `modelops zoo build --out {folder}` to resume)")
        return
    typer.echo(
        f"{folder}  preset={manifest['preset']} seed={manifest['seed']} hash={manifest['hash']} "
        f"built in {manifest['build_seconds']:.0f} s, {human_bytes(folder_bytes(folder))}"
    )
    for role, m in iter_models(manifest):
        loss = f"loss {m['final_loss']:.3f}" if "final_loss" in m else "loss -"
        typer.echo(f"  {role:<20} {m['params']:>9,} params  {m['steps']:>5} steps  {loss:<11}  {score_text(m)}")


def register(app: typer.Typer) -> None:
    zoo = typer.Typer(help="Build and list the zoo: a small real model family trained here.")
    app.add_typer(zoo, name="zoo")

    @zoo.command("build")
    @handle_errors
    def build(preset: PresetOpt = "mini", out: ZooOut = None, seed: SeedOpt = 0, quiet: Quiet = False) -> None:
        """Train the tokenizer, bases, SFT experts, DPO (partial+full) and large SFTs; cached by content hash."""
        if preset not in ("mini", "full"):
            raise typer.BadParameter(f"{preset!r} is not a preset; use mini or full", param_hint="--preset")
        setup(quiet, threads=1)
        from transformers.utils import logging as hf_logging

        from modelops.api import build_zoo, load_manifest

        hf_logging.disable_progress_bar()  # per-model save/load bars would drown the build's own

        progress = None if quiet else ZooProgress()
        try:
            folder = build_zoo(preset, seed, out, progress)
        except KeyboardInterrupt:
            typer.echo("Interrupted; finished models are kept, run the same command to resume.", err=True)
            raise typer.Exit(130) from None
        finally:
            if progress is not None:
                progress.close()
        _print_zoo(folder, load_manifest(folder))

    @zoo.command("list")
    @handle_errors
    def list_(out: ZooOut = None) -> None:
        """What was built: folders, sizes, training loss and held-out scores of each model."""
        from modelops.api import list_zoos, load_manifest, zoo_root

        found = [(out, load_manifest(out))] if out else list_zoos()
        if not found:
            typer.echo(f"No zoo under {zoo_root()}; build one with `modelops zoo build`.")
        for folder, manifest in found:
            _print_zoo(folder, manifest)
