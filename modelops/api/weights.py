"""Weight-space operations as the public API: plan, then stream the result into a folder with its recipe and card.

Each call validates every input before anything is written, writes atomically (a hidden temp folder, then a
rename), and returns a result object saying what was written and what it cost.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelops.api.publish import card_writer
from modelops.checkpoint import AtomicOutput
from modelops.devices import pick_device
from modelops.errors import RecipeError
from modelops.lora.apply import ApplyPlan, ApplyResult, plan_apply, run_apply
from modelops.lora.extract import ExtractOptions, ExtractPlan, ExtractResult, plan_extraction, run_extraction
from modelops.merge import MergeRecipe, MergeResult, build_plan, load_recipe, normalize_dtype, recipe_from_dict
from modelops.merge.methods import expo as expo_tensor
from modelops.merge.methods import ties as ties_tensor
from modelops.merge.plan import MergePlan

__all__ = [
    "AtomicOutput",
    "apply_lora",
    "as_recipe",
    "expo_recipe",
    "expo_tensor",
    "extract_lora",
    "extrapolate",
    "merge",
    "merge_recipe",
    "plan_apply_lora",
    "plan_extract_lora",
    "plan_merge",
    "ties_tensor",
]  # fmt: skip

Progress = Callable[[str, int], None]  # (tensor name, bytes done)
RecipeLike = MergeRecipe | dict[str, Any] | str | Path


def as_recipe(recipe: RecipeLike, *, source: str = "recipe") -> MergeRecipe:
    """A merge recipe from a `MergeRecipe`, a mergekit-style dict (`source` names it in errors), or the path of a
    YAML file."""
    if isinstance(recipe, MergeRecipe):
        return recipe
    if isinstance(recipe, dict):
        return recipe_from_dict(recipe, source=source)
    return load_recipe(Path(recipe))


def merge_recipe(
    recipe: RecipeLike | None = None,
    *,
    method: str | None = None,
    base: str | None = None,
    models: list[str] | None = None,
    weights: list[float] | None = None,
    densities: list[float] | None = None,
    parameters: list[str] | dict[str, Any] | None = None,
    seed: int | None = None,
    dtype: str | None = None,
) -> MergeRecipe:
    """A recipe (file, dict or nothing) with overrides on top, in mergekit's layout: `weights` and `densities` pair
    up with the models in order; `parameters` are global (KEY=VALUE strings, values read as YAML, or a dict)."""
    import yaml

    source = str(recipe) if isinstance(recipe, (str, Path)) else "command line"
    data = as_recipe(recipe).to_dict() if recipe is not None else {}
    data.update({k: v for k, v in (("merge_method", method), ("base_model", base)) if v})
    if models:
        data["models"] = [{"model": m} for m in models]
    entries = data.get("models") or []
    for key, values in (("weight", weights), ("density", densities)):
        if values and len(values) != len(entries):
            raise RecipeError(f"{len(values)} {key} value(s) for {len(entries)} model(s); give one per model")
        for entry, value in zip(entries, values or [], strict=False):
            entry.setdefault("parameters", {})[key] = value
    if isinstance(parameters, dict):
        data["parameters"] = {**data.get("parameters", {}), **parameters}
    for item in parameters if isinstance(parameters, list) else []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"parameter {item!r}: expected KEY=VALUE, e.g. lambda=0.8")
        data.setdefault("parameters", {})[key] = yaml.safe_load(value)
    data.update({k: v for k, v in (("seed", seed), ("dtype", dtype)) if v is not None})
    return as_recipe(data, source=source)


def expo_recipe(sft: str, dpo: str, alpha: float, *, dtype: str | None = None) -> MergeRecipe:
    """ExPO as a recipe: base = SFT, one model = the aligned model, parameter alpha."""
    data: dict[str, Any] = {"merge_method": "expo", "base_model": str(sft), "models": [{"model": str(dpo)}]}
    data["parameters"] = {"alpha": alpha}
    if dtype:
        data["dtype"] = normalize_dtype(dtype, "dtype")
    return recipe_from_dict(data, source="extrapolate")


def plan_merge(
    recipe: RecipeLike,
    out: Path | None = None,
    *,
    overwrite: bool = False,
    allow_pickle: bool = False,
    shard_size: int | str = "5GB",
    headers_only: bool = False,
) -> MergePlan:
    """Open every input (headers only) and plan every tensor; `.describe()` is what `--dry-run` prints.
    With `headers_only`, Hub inputs are never downloaded (the plan can be described, not run)."""
    return build_plan(
        as_recipe(recipe),
        out=Path(out) if out is not None else None,
        overwrite=overwrite,
        allow_pickle=allow_pickle,
        shard_size=shard_size,
        headers_only=headers_only,
    )


def merge(
    recipe: RecipeLike,
    out: str | Path,
    *,
    overwrite: bool = False,
    allow_pickle: bool = False,
    shard_size: int | str = "5GB",
    device: str = "cpu",
    resume: bool = False,
    progress: Progress | None = None,
    card: bool = True,
    plan: MergePlan | None = None,
    operation: str = "merge",
    metrics: dict[str, Any] | None = None,
) -> MergeResult:
    """Merge models by any registered method (a mergekit config runs unchanged), streamed tensor by tensor.

    `resume` continues an interrupted run of the same plan, keeping its finished shards (identical bytes)."""
    from modelops.merge import run_merge

    out = Path(out)
    plan = plan or plan_merge(recipe, out, overwrite=overwrite, allow_pickle=allow_pickle, shard_size=shard_size)
    return run_merge(
        plan,
        out,
        overwrite=overwrite,
        device=pick_device(device),
        progress=progress,
        shard_size=shard_size,
        resume=resume,
        provenance={"operation": operation},
        metrics=metrics,
        finish=card_writer(card),
    )


def extrapolate(
    sft: str,
    dpo: str,
    out: str | Path,
    *,
    alpha: float,
    dtype: str | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    shard_size: int | str = "5GB",
    device: str = "cpu",
    resume: bool = False,
    progress: Progress | None = None,
    card: bool = True,
    metrics: dict[str, Any] | None = None,
    plan: MergePlan | None = None,
) -> MergeResult:
    """ExPO (Zheng et al., arXiv 2404.16792): θ_dpo + α(θ_dpo − θ_sft), computed in float32 and streamed.
    With a bf16/fp16 output, the share of the update that survives rounding is in `result.survival`."""
    return merge(
        expo_recipe(sft, dpo, alpha, dtype=dtype),
        out,
        overwrite=overwrite,
        allow_pickle=allow_pickle,
        shard_size=shard_size,
        device=device,
        resume=resume,
        progress=progress,
        card=card,
        operation="extrapolate",
        metrics=metrics,
        plan=plan,
    )


def plan_extract_lora(
    base: str, tuned: str, out: Path | None = None, *, overwrite: bool = False, **options: Any
) -> ExtractPlan:
    """Open both checkpoints and refuse every bad input; `options` are `ExtractOptions` fields (rank or energy,
    max_rank, modules, embeddings, other, dtype, device, svd)."""
    if options.get("energy") is not None:
        options.setdefault("rank", None)
    if "device" in options:
        options["device"] = pick_device(options["device"])
    if options.get("dtype"):
        options["dtype"] = normalize_dtype(options["dtype"], "dtype")
    return plan_extraction(base, tuned, ExtractOptions(**options), out=out, overwrite=overwrite)


def extract_lora(
    base: str,
    tuned: str,
    out: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: Progress | None = None,
    card: bool = True,
    plan: ExtractPlan | None = None,
    **options: Any,
) -> ExtractResult:
    """A PEFT LoRA adapter from a full fine-tune: truncated SVD of ΔW per linear layer, with a per-module error
    report (`result.rows`, `result.summary`). `resume` keeps the modules an interrupted run had finished."""
    out = Path(out)
    plan = plan or plan_extract_lora(base, tuned, out, overwrite=overwrite, **options)
    return run_extraction(plan, out, overwrite=overwrite, progress=progress, finish=card_writer(card), resume=resume)


def plan_apply_lora(
    base: str, adapter: str, out: Path | None = None, *, overwrite: bool = False, dtype: str | None = None
) -> ApplyPlan:
    """Open the base and the adapter and check they fit, before anything is written."""
    return plan_apply(base, adapter, out=out, overwrite=overwrite, dtype=normalize_dtype(dtype, "dtype"))


def apply_lora(
    base: str,
    adapter: str,
    out: str | Path,
    *,
    dtype: str | None = None,
    overwrite: bool = False,
    shard_size: int | str = "5GB",
    device: str = "cpu",
    resume: bool = False,
    progress: Progress | None = None,
    card: bool = True,
    plan: ApplyPlan | None = None,
) -> ApplyResult:
    """Merge a PEFT LoRA adapter into its base, W + (α/r)·B·A, streamed; the output is a plain checkpoint."""
    out = Path(out)
    plan = plan or plan_apply_lora(base, adapter, out, overwrite=overwrite, dtype=dtype)
    return run_apply(
        plan,
        out,
        overwrite=overwrite,
        device=pick_device(device),
        shard_size=shard_size,
        progress=progress,
        resume=resume,
        finish=card_writer(card),
    )
