"""`modelops merge`: every mergekit method, from a mergekit YAML config or flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelops.cli.common import (
    AllowPickle,
    Device,
    DryRun,
    DtypeOpt,
    OutDir,
    Overwrite,
    Quiet,
    RecipeOpt,
    Resume,
    ShardSize,
    Threads,
    print_merge_result,
    setup,
)  # fmt: skip
from modelops.cli.progress import ByteProgress
from modelops.cli.publishing import writes_folder

HELP = (
    "Merge models by any mergekit method; a mergekit YAML config runs unchanged.\n\n"
    "Methods: linear, task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs, breadcrumbs_ties, della, "
    "della_linear, model_stock, slerp, nuslerp, multislerp, karcher, sce, ram, ramplus_tl, nearswap, arcee_fusion, "
    "passthrough, expo. `slices:` stacks layers; `tokenizer_source: union` merges vocabularies. Flags override "
    "the recipe (--model/--weight/--density pair up in order). --dry-run on Hub repos reads only safetensors headers."
)


@writes_folder
def merge(
    out: OutDir,
    recipe: RecipeOpt = None,
    method: Annotated[str | None, typer.Option("--method", help="Merge method (see above).")] = None,
    base: Annotated[str | None, typer.Option("--base", help="Base model (folder or org/name[@rev]).")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="A model to merge; repeat.")] = None,
    weight: Annotated[list[float] | None, typer.Option("--weight", help="Weight per --model, in order.")] = None,
    density: Annotated[
        list[float] | None, typer.Option("--density", help="Density per --model (TIES, DARE...).")
    ] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="Global KEY=VALUE, e.g. lambda=0.8.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for random methods (DARE, DELLA).")] = None,
    dtype: DtypeOpt = None,
    dry_run: DryRun = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
    shard_size: ShardSize = "5GB",
    allow_pickle: AllowPickle = False,
    device: Device = "cpu",
    threads: Threads = 1,
    quiet: Quiet = False,
) -> Path | None:
    setup(quiet, threads)
    from modelops import api

    if not recipe and not method:
        raise typer.BadParameter("give --recipe or --method")
    for flag, values in (("--weight", weight), ("--density", density)):
        if model and values and len(values) != len(model):
            raise typer.BadParameter(f"{len(values)} {flag} value(s) for {len(model)} --model(s)", param_hint=flag)
    if any("=" not in item or item.startswith("=") for item in param or []):
        raise typer.BadParameter("expected KEY=VALUE, e.g. lambda=0.8", param_hint="--param")
    the_recipe = api.merge_recipe(recipe, method=method, base=base, models=model, weights=weight, densities=density,
                                  parameters=param, seed=seed, dtype=dtype)  # fmt: skip
    plan = api.plan_merge(the_recipe, out, overwrite=overwrite, allow_pickle=allow_pickle, shard_size=shard_size,
                          headers_only=dry_run)  # fmt: skip
    if dry_run:
        typer.echo(plan.describe())
        return None
    with ByteProgress(plan.total_bytes, the_recipe.merge_method, quiet) as bar:
        result = api.merge(the_recipe, out, plan=plan, overwrite=overwrite, shard_size=shard_size, device=device,
                           resume=resume, progress=bar)  # fmt: skip
    print_merge_result(result)
    return result.out


def register(app: typer.Typer) -> None:
    app.command("merge", help=HELP, short_help="Merge models by any mergekit method.")(merge)
