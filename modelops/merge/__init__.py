"""Weight-space merging: methods by name in one registry, recipes, plans and one streaming executor.

The public entry points (`modelops.api.merge`, `modelops.api.extrapolate`) are built on these."""

from __future__ import annotations

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
    "get_method",
    "load_recipe",
    "method_names",
    "normalize_dtype",
    "recipe_from_dict",
    "register",
    "run_merge",
]
