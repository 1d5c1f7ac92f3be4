"""The public Python API of modelops: every command of the CLI is one call here.

Weight space: `merge`, `extrapolate`, `extract_lora`, `apply_lora`, `choose_alpha` (and `plan_*`, which validate
and describe without writing). Decode time: `decode_spec`, `load_decoder` / `CoDecoder`, `fuse_decode`,
`evaluate`. Publishing: `write_card`, `push`. The zoo: `build_zoo`, `list_zoos`. Each operation returns a result
object saying what it did.

Names are imported on first use, so `api.merge` does not pay for the decode stack and the reverse.
"""

from __future__ import annotations

import importlib
from typing import Any

EXPORTS: dict[str, tuple[str, ...]] = {
    "modelops.api.weights": (
        "AtomicOutput", "apply_lora", "as_recipe", "expo_recipe", "expo_tensor", "extract_lora", "extrapolate",
        "merge", "merge_recipe", "plan_apply_lora", "plan_extract_lora", "plan_merge", "ties_tensor",
    ),
    "modelops.api.alpha": ("DEFAULT_ALPHA_GRID", "AlphaPoint", "alpha_sweep", "best_alpha", "choose_alpha"),
    "modelops.api.decoding": (
        "CoDecoder", "DecodeRun", "DecodeSpec", "FusionRule", "SamplingConfig", "decode_spec", "fuse_decode",
        "load_decoder", "read_prompts",
    ),
    "modelops.api.evaluation": (
        "LmEvalRun", "run_lm_eval", "zoo_lm_eval_tasks",
        "Claim", "Verdict", "better", "pooled", "cell_values", "combine", "faster", "recovered", "share", "tally",
        "EvalReport", "OrderingRun", "SystemSpec", "TaskSpec", "end_worker_process", "eval_systems", "eval_tasks",
        "evaluate", "is_main_process", "measure_orderings", "model_system", "ordering_text", "zoo_task",
    ),
    "modelops.api.publish": ("alpha_curve_png", "alpha_trace_png", "build_card", "describe_method", "push", "write_card"),
    "modelops.api.zoo": (
        "build_zoo", "folder_bytes", "iter_models", "list_zoos", "load_manifest", "zoo_roles", "zoo_root",
    ),
}  # fmt: skip
_WHERE = {name: module for module, names in EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'modelops.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
