"""`modelops merge`: every mergekit method, from a mergekit YAML config or flags."""

from __future__ import annotations

from typing import Annotated

import typer

from modelops.cli.common import (
    AllowPickle,
    ByteProgress,
    DryRun,
    DtypeOpt,
    OutDir,
    Overwrite,
    Quiet,
    RecipeOpt,
    Resume,
    ShardSize,
    Threads,
    handle_errors,
    print_merge_result,
    setup,
)
from modelops.cli.push import (
    CommitMessage,
    CreatePr,
    Private,
    PushTo,
    Revision,
    Token,
    check_push_options,
    push_after_write,
)

HELP = (
    "Merge models (every mergekit method; a mergekit YAML config runs unchanged), streamed tensor by tensor.\n\n"
    "Methods: linear, task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs, breadcrumbs_ties, della, "
    "della_linear, model_stock, slerp, nuslerp, multislerp, karcher, sce, ram, ramplus_tl, nearswap, arcee_fusion, "
    "passthrough, expo. `slices:` stacks layers; `tokenizer_source: union` merges vocabularies. Flags override "
    "the recipe (--model/--weight/--density pair up in order). --dry-run on Hub repos reads only safetensors headers."
)


def _parse_params(items: list[str]) -> dict[str, object]:
    import yaml

    params: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--param {item!r}: expected KEY=VALUE, e.g. lambda=0.8")
        params[key] = yaml.safe_load(value)
    return params


@handle_errors
def merge(
    out: OutDir,
    recipe: RecipeOpt = None,
    method: Annotated[str | None, typer.Option("--method", help="Merge method (see --help).")] = None,
    base: Annotated[str | None, typer.Option("--base", help="Base model (folder or org/name[@rev]).")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="A model to merge; repeat.")] = None,
    weight: Annotated[list[float] | None, typer.Option("--weight", help="Weight per --model, in order.")] = None,
    density: Annotated[
        list[float] | None, typer.Option("--density", help="Density per --model (TIES, DARE, DELLA...).")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Global parameter KEY=VALUE, e.g. lambda=0.8, t=0.5.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for random methods (DARE, DELLA).")] = None,
    dtype: DtypeOpt = None,
    dry_run: DryRun = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
    shard_size: ShardSize = "5GB",
    allow_pickle: AllowPickle = False,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")] = "cpu",
    threads: Threads = 1,
    quiet: Quiet = False,
    push_to: PushTo = None,
    private: Private = False,
    revision: Revision = None,
    create_pr: CreatePr = False,
    commit_message: CommitMessage = None,
    token: Token = None,
) -> None:
    setup(quiet, threads)
    check_push_options(push_to, create_pr=create_pr, revision=revision, repo_hint="--push-to")
    from modelops.devices import pick_device
    from modelops.merge import build_plan, load_recipe, recipe_from_dict, run_merge

    data = load_recipe(recipe).to_dict() if recipe else {}
    if method:
        data["merge_method"] = method
    if base:
        data["base_model"] = base
    if model:
        data["models"] = [{"model": m} for m in model]
    models = data.get("models") or []
    for key, values in (("weight", weight), ("density", density)):
        if values:
            if len(values) != len(models):
                raise typer.BadParameter(f"{len(values)} --{key} value(s) for {len(models)} model(s)")
            for entry, v in zip(models, values, strict=True):
                entry.setdefault("parameters", {})[key] = v
    if param:
        data["parameters"] = {**data.get("parameters", {}), **_parse_params(param)}
    if seed is not None:
        data["seed"] = seed
    if dtype:
        data["dtype"] = dtype
    if "merge_method" not in data:
        raise typer.BadParameter("give --recipe or --method")
    the_recipe = recipe_from_dict(data, source=str(recipe) if recipe else "command line")
    plan = build_plan(
        the_recipe,
        out=out,
        overwrite=overwrite,
        allow_pickle=allow_pickle,
        shard_size=shard_size,
        headers_only=dry_run,
    )
    if dry_run:
        typer.echo(plan.describe())
        return
    with ByteProgress(plan.total_bytes, the_recipe.merge_method, quiet) as bar:
        result = run_merge(
            plan,
            out,
            overwrite=overwrite,
            device=pick_device(device),
            progress=bar,
            shard_size=shard_size,
            resume=resume,
            provenance={"operation": "merge"},
        )
    print_merge_result(result)
    if push_to:
        push_after_write(
            result.out,
            push_to,
            private=private,
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message,
            token=token,
            quiet=quiet,
        )


def register(app: typer.Typer) -> None:
    app.command("merge", help=HELP)(merge)
