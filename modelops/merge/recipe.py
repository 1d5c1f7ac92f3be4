"""Merge recipes: mergekit-compatible YAML in, a validated `MergeRecipe` out, and back to YAML for provenance.

Keys follow mergekit where the concepts overlap (`merge_method`, `base_model`, `models[].model`,
`models[].parameters`, `parameters`, `dtype`, `out_dtype`, `tokenizer_source`, `model@revision`), so a mergekit
config for linear / task_arithmetic / ties / dare / slerp runs unchanged. Parameter values may be scalars,
gradients (a list interpolated over layer depth) or filtered lists (`[{filter: mlp, value: 0.3}, {value: 0.5}]`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modelops.errors import RecipeError
from modelops.merge.registry import MergeMethod, get_method

OUTPUT_DTYPES = ("float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
TOP_KEYS = {
    "merge_method",
    "base_model",
    "models",
    "slices",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "seed",
    "name",
    "model_name",
    "modelops",
}
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


@dataclass
class ModelEntry:
    model: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class MergeRecipe:
    merge_method: str
    models: list[ModelEntry]
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None  # output dtype; None = as the reference input
    tokenizer_source: str | None = None
    seed: int = 0

    @property
    def method(self) -> MergeMethod:
        return get_method(self.merge_method)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model:
            out["base_model"] = self.base_model
        out["models"] = [
            {"model": m.model, **({"parameters": m.parameters} if m.parameters else {})} for m in self.models
        ]
        if self.parameters:
            out["parameters"] = self.parameters
        if self.dtype:
            out["dtype"] = self.dtype
        if self.tokenizer_source:
            out["tokenizer_source"] = self.tokenizer_source
        if self.seed:
            out["seed"] = self.seed
        return out


def normalize_dtype(value: str | None, where: str = "dtype") -> str | None:
    if value is None:
        return None
    name = _DTYPE_ALIASES.get(str(value).lower(), str(value).lower())
    if name not in OUTPUT_DTYPES:
        raise RecipeError(f"{where}: {value!r} is not an output dtype; use one of {', '.join(OUTPUT_DTYPES)}")
    return name


def load_recipe(path: Path) -> MergeRecipe:
    """Read and validate a YAML recipe; every error names the field's path in the file."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level (merge_method, models, ...)")
    return recipe_from_dict(data, source=str(path))


def recipe_from_dict(data: dict[str, Any], *, source: str = "recipe") -> MergeRecipe:
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise RecipeError(
            f"{source}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(TOP_KEYS))}"
        )
    if "merge_method" not in data:
        raise RecipeError(f"{source}: merge_method is missing")
    if not isinstance(data["merge_method"], str):
        raise RecipeError(f"{source}: merge_method: expected a string, got {data['merge_method']!r}")
    try:
        method = get_method(data["merge_method"])
    except RecipeError as exc:
        raise RecipeError(f"{source}: merge_method: {exc}") from None
    models = _models_from(data, source)
    base = data.get("base_model")
    if base is not None and not isinstance(base, str):
        raise RecipeError(f"{source}: base_model: expected a model path or repo id, got {base!r}")
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        raise RecipeError(f"{source}: parameters: expected a mapping, got {params!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RecipeError(f"{source}: seed: expected an integer, got {seed!r}")
    dtype = normalize_dtype(data.get("out_dtype") or data.get("dtype"), f"{source}: dtype")
    tok = data.get("tokenizer_source")
    if tok is not None and (not isinstance(tok, str) or tok == "union"):
        raise RecipeError(f"{source}: tokenizer_source: only 'base' or a model of the recipe is supported, got {tok!r}")
    recipe = MergeRecipe(
        merge_method=method.name,
        models=models,
        base_model=base,
        parameters=params,
        dtype=dtype,
        tokenizer_source=tok,
        seed=seed,
    )
    validate_recipe(recipe, source)
    return recipe


def _models_from(data: dict[str, Any], source: str) -> list[ModelEntry]:
    if "slices" in data:
        return _models_from_slices(data, source)
    raw = data.get("models")
    if not isinstance(raw, list) or not raw:
        raise RecipeError(f"{source}: models: expected a non-empty list of {{model: ..., parameters: ...}}")
    out = []
    for i, entry in enumerate(raw):
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise RecipeError(f"{source}: models[{i}].model: expected a model path or repo id, got {entry!r}")
        extra = set(entry) - {"model", "parameters"}
        if extra:
            raise RecipeError(f"{source}: models[{i}]: unknown key(s) {', '.join(sorted(extra))}")
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise RecipeError(f"{source}: models[{i}].parameters: expected a mapping, got {params!r}")
        out.append(ModelEntry(entry["model"], dict(params)))
    return out


def _models_from_slices(data: dict[str, Any], source: str) -> list[ModelEntry]:
    """mergekit `slices:` are accepted only when there is one slice over the whole depth (no layer surgery)."""
    slices = data["slices"]
    if not isinstance(slices, list) or len(slices) != 1:
        raise RecipeError(f"{source}: slices: only a single slice over all layers is supported (use models: instead)")
    sources = slices[0].get("sources") if isinstance(slices[0], dict) else None
    if not isinstance(sources, list) or not sources:
        raise RecipeError(f"{source}: slices[0].sources: expected a list of {{model, layer_range}}")
    ranges = {tuple(s.get("layer_range") or ()) for s in sources if isinstance(s, dict)}
    if len(ranges) != 1:
        raise RecipeError(
            f"{source}: slices[0].sources: layer ranges differ ({ranges}); layer surgery is not supported"
        )
    entries = [{"model": s.get("model"), "parameters": s.get("parameters")} for s in sources]
    return _models_from({"models": entries}, source)


def validate_recipe(recipe: MergeRecipe, source: str = "recipe") -> None:
    """Check method arity, base model and every parameter's presence, type and range before any I/O."""
    method = recipe.method
    n = len(recipe.models)
    if method.needs_base and not recipe.base_model:
        raise RecipeError(f"{source}: base_model is required by {method.name}")
    if method.needs_base and recipe.base_model in [m.model for m in recipe.models]:
        # mergekit lets the base appear in models (slerp configs list both); the base's own entry is redundant
        recipe.models = [m for m in recipe.models if m.model != recipe.base_model]
        n = len(recipe.models)
    if n < method.min_models or (method.max_models is not None and n > method.max_models):
        want = method.min_models if method.max_models == method.min_models else f"at least {method.min_models}"
        raise RecipeError(f"{source}: {method.name} takes {want} model(s) besides the base; got {n}")
    known = {p.name for p in method.params} | {"int8_mask", "normalize"}
    for key in recipe.parameters:
        p = method.param(key)
        if key not in known:
            raise RecipeError(f"{source}: parameters.{key}: not a parameter of {method.name} ({_names(method)})")
        if p is not None and p.per_model:
            continue  # a global default for a per-model parameter (mergekit allows it)
        if p is not None:
            _check_value(p, recipe.parameters[key], f"{source}: parameters.{key}")
    for i, m in enumerate(recipe.models):
        for key, value in m.parameters.items():
            p = method.param(key)
            if p is None or not p.per_model:
                raise RecipeError(f"{source}: models[{i}].parameters.{key}: not a per-model parameter of {method.name}")
            _check_value(p, value, f"{source}: models[{i}].parameters.{key}")
    for p in method.params:
        if not p.required:
            continue
        if p.per_model:
            for i, m in enumerate(recipe.models):
                if p.name not in m.parameters and p.name not in recipe.parameters:
                    raise RecipeError(f"{source}: models[{i}].parameters.{p.name} is required by {method.name}")
        elif p.name not in recipe.parameters:
            raise RecipeError(f"{source}: parameters.{p.name} is required by {method.name}")


def _names(method: MergeMethod) -> str:
    return ", ".join(p.name for p in method.params)


def _check_value(p: Any, value: Any, where: str) -> None:
    """Scalars, gradients (lists of scalars) and filtered lists ({filter, value}) are all checked element-wise."""
    if isinstance(value, list):
        if not value:
            raise RecipeError(f"{where}: empty list")
        for j, item in enumerate(value):
            if isinstance(item, dict):
                extra = set(item) - {"filter", "value"}
                if extra or "value" not in item:
                    raise RecipeError(f"{where}[{j}]: expected {{filter: <substring>, value: ...}}, got {item!r}")
                _check_value(p, item["value"], f"{where}[{j}].value")
            else:
                p.check(item, f"{where}[{j}]")
        return
    p.check(value, where)


def layer_position(tensor_name: str, num_layers: int | None) -> float:
    """Depth of a tensor in [0, 1] for gradients: layer i of n → i/(n−1); embeddings 0; final norm/head 1."""
    match = _LAYER.search(tensor_name)
    if match and num_layers and num_layers > 1:
        return min(int(match.group(1)) / (num_layers - 1), 1.0)
    if match:
        return 0.0
    return 0.0 if any(k in tensor_name for k in ("embed", "wte", "wpe")) else 1.0


def resolve_value(value: Any, tensor_name: str, num_layers: int | None) -> Any:
    """The value a (possibly filtered / gradient) parameter takes for one tensor."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        for item in value:
            filt = item.get("filter")
            if filt is None or filt in tensor_name:
                return resolve_value(item["value"], tensor_name, num_layers)
        raise RecipeError(
            f"parameter has no filter matching tensor {tensor_name!r} and no default (entry without filter)"
        )
    if isinstance(value, list):
        if len(value) == 1:
            return value[0]
        pos = layer_position(tensor_name, num_layers) * (len(value) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(value) - 1)
        return value[lo] + (value[hi] - value[lo]) * (pos - lo)
    return value
