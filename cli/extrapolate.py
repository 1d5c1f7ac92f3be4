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
    Resume,
    ShardSize,
    Threads,
    err,
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
    alpha: Annotated[
        str | None, typer.Option("--alpha", help="Extrapolation strength α (≥ −1), or 'auto' to pick it with --eval.")
    ] = None,
    alpha_grid: Annotated[
        str | None, typer.Option("--alpha-grid", help="α values tried by --alpha auto (comma list; 0 = DPO itself).")
    ] = None,
    eval_task: Annotated[
        str | None, typer.Option("--eval", help="Task that picks α: a zoo task name or a JSONL file (see `eval`).")
    ] = None,
    metric: Annotated[str | None, typer.Option("--metric", help="Metric for a JSONL --eval task.")] = None,
    eval_limit: Annotated[int | None, typer.Option("--eval-limit", help="Score only the first N rows.")] = None,
    zoo: Annotated[str | None, typer.Option("--zoo", help="Zoo build folder for zoo task names.")] = None,
    recipe: RecipeOpt = None,
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
    from modelops.merge import build_plan, expo_recipe, load_recipe, normalize_dtype, run_merge

    base_recipe = load_recipe(recipe) if recipe else None
    if base_recipe is not None and base_recipe.merge_method != "expo":
        raise typer.BadParameter(f"{recipe} uses merge_method {base_recipe.merge_method}; use `modelops merge`")
    sft = sft or (base_recipe.base_model if base_recipe else None)
    dpo = dpo or (base_recipe.models[0].model if base_recipe else None)
    if alpha is None and base_recipe is not None:
        alpha = str(base_recipe.parameters.get("alpha"))
    if sft is None or dpo is None or alpha is None:
        raise typer.BadParameter("--sft, --dpo and --alpha are required (or a --recipe that gives them)")
    auto = alpha == "auto"
    if auto and not eval_task:
        raise typer.BadParameter(
            "--alpha auto needs --eval TASK (a zoo task name or a JSONL file)", param_hint="--eval"
        )
    if not auto and (alpha_grid or eval_task):
        raise typer.BadParameter("--alpha-grid and --eval go with --alpha auto", param_hint="--alpha")
    try:
        alpha_value = 0.0 if auto else float(alpha)
    except ValueError:
        raise typer.BadParameter(f"{alpha!r} is not a number or 'auto'", param_hint="--alpha") from None
    out_dtype = normalize_dtype(dtype, "--dtype") or (base_recipe.dtype if base_recipe else None)
    the_recipe = expo_recipe(sft, dpo, alpha_value, dtype=out_dtype)
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
    metrics = None
    if auto:
        from modelops.eval.alpha import choose_alpha

        def show(point) -> None:
            if not quiet:
                fl = f"  fluency {point.fluency:.3f}" if point.fluency is not None else ""
                err(f"α = {point.alpha:+g}: {point.mean:.4f} [{point.ci_low:.4f}, {point.ci_high:.4f}]{fl}")

        best, metrics = choose_alpha(
            sft, dpo, alpha_grid, eval_task, metric=metric, zoo=zoo, limit=eval_limit, device=pick_device(device),
            allow_pickle=allow_pickle, on_point=show,
        )  # fmt: skip
        alpha_value = best.alpha
        typer.echo(f"--alpha auto: best α = {best.alpha:g} ({metrics['alpha_search']['metric']} {best.mean:.4f})")
        plan.close()
        the_recipe = expo_recipe(sft, dpo, alpha_value, dtype=out_dtype)
        plan = build_plan(the_recipe, out=out, overwrite=overwrite, allow_pickle=allow_pickle, shard_size=shard_size)
    with ByteProgress(plan.total_bytes, "extrapolate", quiet) as bar:
        result = run_merge(
            plan,
            out,
            overwrite=overwrite,
            device=pick_device(device),
            progress=bar,
            shard_size=shard_size,
            resume=resume,
            provenance={"operation": "extrapolate"},
            metrics=metrics,
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
