"""`modelops extrapolate`: ExPO, θ_dpo + α(θ_dpo − θ_sft), streamed over safetensors shards."""

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

HELP = """Extrapolate an aligned model away from its SFT start (ExPO, Zheng et al., arXiv 2404.16792).

θ_out = θ_dpo + α·(θ_dpo − θ_sft). α 0.1–0.5 suits off-the-shelf models; under-trained DPO checkpoints want
larger α; α < 0 interpolates back toward the SFT. Computed in float32; with a bf16/fp16 output the share of the
update that survives rounding is measured and reported.
"""


@handle_errors
def extrapolate(
    out: OutDir,
    sft: Annotated[str | None, typer.Option("--sft", help="SFT model: folder or org/name[@revision].")] = None,
    dpo: Annotated[
        str | None, typer.Option("--dpo", help="Aligned (DPO/RLHF) model: folder or org/name[@rev].")
    ] = None,
    alpha: Annotated[float | None, typer.Option("--alpha", help="Extrapolation strength α (≥ −1).")] = None,
    recipe: RecipeOpt = None,
    dtype: DtypeOpt = None,
    dry_run: DryRun = False,
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
    from modelops.merge import build_plan, expo_recipe, load_recipe, normalize_dtype, run_merge

    base_recipe = load_recipe(recipe) if recipe else None
    if base_recipe is not None and base_recipe.merge_method != "expo":
        raise typer.BadParameter(f"{recipe} uses merge_method {base_recipe.merge_method}; use `modelops merge`")
    sft = sft or (base_recipe.base_model if base_recipe else None)
    dpo = dpo or (base_recipe.models[0].model if base_recipe else None)
    if alpha is None and base_recipe is not None:
        alpha = base_recipe.parameters.get("alpha")
    if sft is None or dpo is None or alpha is None:
        raise typer.BadParameter("--sft, --dpo and --alpha are required (or a --recipe that gives them)")
    out_dtype = normalize_dtype(dtype, "--dtype") or (base_recipe.dtype if base_recipe else None)
    the_recipe = expo_recipe(sft, dpo, alpha, dtype=out_dtype)
    plan = build_plan(the_recipe, out=out, overwrite=overwrite, allow_pickle=allow_pickle, shard_size=shard_size)
    if dry_run:
        typer.echo(plan.describe())
        return
    with ByteProgress(plan.total_bytes, "extrapolate", quiet) as bar:
        result = run_merge(
            plan,
            out,
            overwrite=overwrite,
            device=pick_device(device),
            progress=bar,
            shard_size=shard_size,
            provenance={"operation": "extrapolate"},
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
    app.command("extrapolate", help=HELP)(extrapolate)
