"""`modelops extrapolate`: ExPO, θ_dpo + α(θ_dpo − θ_sft), streamed over safetensors shards."""

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
    err,
    print_merge_result,
    setup,
)  # fmt: skip
from modelops.cli.progress import ByteProgress
from modelops.cli.publishing import writes_folder

HELP = """Extrapolate an aligned model away from its SFT start (ExPO, Zheng et al., arXiv 2404.16792).

θ_out = θ_dpo + α·(θ_dpo − θ_sft). α 0.1–0.5 suits off-the-shelf models; under-trained DPO checkpoints want
larger α; α < 0 interpolates back toward the SFT. Computed in float32; with a bf16/fp16 output the share of the
update that survives rounding is measured and reported.
"""
Model = Annotated[str | None, typer.Option(help="Folder or org/name[@revision].")]


def _alpha(alpha: str | None, grid: str | None, task: str | None) -> float | None:
    """α as a number, or None for 'auto' (which needs --eval)."""
    if alpha == "auto":
        if not task:
            raise typer.BadParameter("--alpha auto needs --eval TASK (a zoo task or a JSONL file)", param_hint="--eval")
        return None
    if grid or task:
        raise typer.BadParameter("--alpha-grid and --eval go with --alpha auto", param_hint="--alpha")
    try:
        return float(alpha)  # type: ignore[arg-type]
    except ValueError:
        raise typer.BadParameter(f"{alpha!r} is not a number or 'auto'", param_hint="--alpha") from None


@writes_folder
def extrapolate(
    out: OutDir,
    sft: Annotated[str | None, typer.Option("--sft", help="SFT model: folder or org/name[@revision].")] = None,
    dpo: Annotated[str | None, typer.Option("--dpo", help="Aligned (DPO/RLHF) model: folder or org/name.")] = None,
    alpha: Annotated[str | None, typer.Option("--alpha", help="Strength α (≥ −1), or 'auto' (with --eval).")] = None,
    alpha_grid: Annotated[str | None, typer.Option("--alpha-grid", help="α values for auto (comma list).")] = None,
    eval_task: Annotated[
        str | None, typer.Option("--eval", help="Task that picks α: zoo task, JSONL, lm-eval:TASK.")
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
    device: Device = "cpu",
    threads: Threads = 1,
    quiet: Quiet = False,
) -> Path | None:
    setup(quiet, threads)
    from modelops import api

    given = api.as_recipe(recipe) if recipe else None
    if given is not None and given.merge_method != "expo":
        raise typer.BadParameter(f"{recipe} uses merge_method {given.merge_method}; use `modelops merge`")
    sft = sft or (given.base_model if given else None)
    dpo = dpo or (given.models[0].model if given else None)
    alpha = alpha if alpha is not None or given is None else str(given.parameters.get("alpha"))
    dtype = dtype or (given.dtype if given else None)
    if sft is None or dpo is None or alpha is None:
        raise typer.BadParameter("--sft, --dpo and --alpha are required (or a --recipe that gives them)")
    value = _alpha(alpha, alpha_grid, eval_task)
    plan = api.plan_merge(api.expo_recipe(sft, dpo, value or 0.0, dtype=dtype), out, overwrite=overwrite,
                          allow_pickle=allow_pickle, shard_size=shard_size, headers_only=dry_run)  # fmt: skip
    if dry_run:
        typer.echo(plan.describe())
        return None
    metrics = None
    if value is None:

        def show(p: api.AlphaPoint) -> None:
            if not quiet:
                fluency = f"  fluency {p.fluency:.3f}" if p.fluency is not None else ""
                err(f"α = {p.alpha:+g}: {p.mean:.4f} [{p.ci_low:.4f}, {p.ci_high:.4f}]{fluency}")

        best, metrics = api.choose_alpha(sft, dpo, alpha_grid, eval_task, metric=metric, zoo=zoo, limit=eval_limit,
                                         device=device, allow_pickle=allow_pickle, on_point=show)  # fmt: skip
        typer.echo(f"--alpha auto: best α = {best.alpha:g} ({metrics['alpha_search']['metric']} {best.mean:.4f})")
        plan.close()
        value = best.alpha
        plan = api.plan_merge(api.expo_recipe(sft, dpo, value, dtype=dtype), out, overwrite=overwrite,
                              allow_pickle=allow_pickle, shard_size=shard_size)  # fmt: skip
    with ByteProgress(plan.total_bytes, "extrapolate", quiet) as bar:
        result = api.extrapolate(sft, dpo, out, alpha=value, dtype=dtype, overwrite=overwrite, plan=plan,
                                 allow_pickle=allow_pickle, shard_size=shard_size, device=device, resume=resume,
                                 progress=bar, metrics=metrics)  # fmt: skip
    print_merge_result(result)
    return result.out


def register(app: typer.Typer) -> None:
    app.command("extrapolate", help=HELP, short_help="ExPO: extrapolate an aligned model from its SFT start.")(
        extrapolate
    )
