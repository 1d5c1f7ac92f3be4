"""Weight-space operations: merge methods by name, one streaming executor, ExPO as a front door."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelops.merge.executor import MergeResult, run_merge
from modelops.merge.methods import REGISTRY, get_method, method_names
from modelops.merge.plan import MergePlan, build_plan
from modelops.merge.recipe import MergeRecipe, ModelEntry, load_recipe, normalize_dtype, recipe_from_dict
from modelops.merge.registry import register

__all__ = [
    "REGISTRY",
    "MergePlan",
    "MergeRecipe",
    "MergeResult",
    "ModelEntry",
    "build_plan",
    "expo_recipe",
    "get_method",
    "load_recipe",
    "merge",
    "method_names",
    "normalize_dtype",
    "recipe_from_dict",
    "register",
    "run_merge",
]


def expo_recipe(sft: str, dpo: str, alpha: float, *, dtype: str | None = None) -> MergeRecipe:
    """ExPO as a recipe: base = SFT, one model = DPO, parameter alpha."""
    return recipe_from_dict(
        {
            "merge_method": "expo",
            "base_model": str(sft),
            "models": [{"model": str(dpo)}],
            "parameters": {"alpha": alpha},
            **({"dtype": dtype} if dtype else {}),
        },
        source="extrapolate",
    )


def merge(
    recipe: MergeRecipe,
    out: str | Path,
    *,
    overwrite: bool = False,
    allow_pickle: bool = False,
    shard_size: int | str = "5GB",
    device: str = "cpu",
    provenance: dict[str, Any] | None = None,
    resume: bool = False,
) -> MergeResult:
    """Plan (headers only, full validation) then stream the merge into `out`; `resume` continues an interrupted
    run of the same plan, keeping its finished shards."""
    plan = build_plan(recipe, out=Path(out), overwrite=overwrite, allow_pickle=allow_pickle, shard_size=shard_size)
    return run_merge(
        plan, Path(out), overwrite=overwrite, device=device, shard_size=shard_size, provenance=provenance, resume=resume
    )
