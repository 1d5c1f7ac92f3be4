"""Merge recipes: mergekit YAML in, a validated `MergeRecipe` out, and back to YAML for provenance.

The keys are mergekit's (`merge_method`, `base_model`, `models[].model`, `models[].parameters`, `slices[].sources`
with `layer_range`, `parameters`, `dtype`, `out_dtype`, `tokenizer_source`, `tokenizer.source`, `model@revision`),
so a mergekit config runs unchanged. Parameter values may be scalars, gradients over depth, or filter lists;
`modelops.merge.params` says how each resolves per tensor. Every unknown key, method or parameter is refused in
one line that names it and the closest known spelling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modelops.errors import RecipeError
from modelops.merge.methods import get_method
from modelops.merge.registry import MergeMethod, Param, closest

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
    "tokenizer",
    "seed",
    "name",
    "model_name",
    "modelops",
}
UNSUPPORTED_KEYS = {"modules": "per-module configs (vision towers etc.)", "chat_template": "chat_template"}


@dataclass
class ModelEntry:
    model: str
    parameters: dict[str, Any] = field(default_factory=dict)
    layer_range: tuple[int, int] | None = None  # slices only: [first, end) of the source's layers


@dataclass
class OutputSlice:
    """One run of output layers, each merged from the same offset in every source's `layer_range`."""

    sources: list[ModelEntry]
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        first, end = self.sources[0].layer_range or (0, 0)
        return end - first


@dataclass
class MergeRecipe:
    merge_method: str
    models: list[ModelEntry]  # every input model once (for `slices:` recipes, the distinct sources)
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None  # output dtype; None = as the reference input
    tokenizer_source: str | None = None  # 'base', 'union' or a model: embeddings are laid out in its vocabulary
    seed: int = 0
    slices: list[OutputSlice] | None = None  # layer surgery; None = every layer of every model
    pad_to_multiple_of: int | None = None  # pad the merged vocabulary's rows (tokenizer.pad_to_multiple_of)

    @property
    def method(self) -> MergeMethod:
        return get_method(self.merge_method)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model:
            out["base_model"] = self.base_model
        if self.slices is not None:
            out["slices"] = [_slice_dict(s) for s in self.slices]
        else:
            out["models"] = [_entry_dict(m) for m in self.models]
        for key in ("parameters", "dtype", "tokenizer_source", "seed"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.pad_to_multiple_of:
            out.pop("tokenizer_source", None)
            out["tokenizer"] = {"source": self.tokenizer_source, "pad_to_multiple_of": self.pad_to_multiple_of}
        return out


def _entry_dict(m: ModelEntry) -> dict[str, Any]:
    return {
        "model": m.model,
        **({"layer_range": list(m.layer_range)} if m.layer_range is not None else {}),
        **({"parameters": m.parameters} if m.parameters else {}),
    }


def _slice_dict(s: OutputSlice) -> dict[str, Any]:
    return {
        "sources": [_entry_dict(m) for m in s.sources],
        **({"base_model": s.base_model} if s.base_model else {}),
        **({"parameters": s.parameters} if s.parameters else {}),
    }


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


def _refuse_unknown(keys: Any, known: set[str], where: str) -> None:
    for key in sorted(set(keys) - known, key=str):
        raise RecipeError(f"{where}: unknown key {key!r}{closest(str(key), known)}; known: {', '.join(sorted(known))}")


def recipe_from_dict(data: dict[str, Any], *, source: str = "recipe") -> MergeRecipe:
    for key, what in UNSUPPORTED_KEYS.items():
        if key in data:
            raise RecipeError(f"{source}: {key}: {what} is not supported yet; remove the key to merge without it")
    _refuse_unknown(data, TOP_KEYS, source)
    if "merge_method" not in data:
        raise RecipeError(f"{source}: merge_method is missing")
    if not isinstance(data["merge_method"], str):
        raise RecipeError(f"{source}: merge_method: expected a string, got {data['merge_method']!r}")
    try:
        method = get_method(data["merge_method"])
    except RecipeError as exc:
        raise RecipeError(f"{source}: merge_method: {exc}") from None
    base = data.get("base_model")
    if base is not None and not isinstance(base, str):
        raise RecipeError(f"{source}: base_model: expected a model path or repo id, got {base!r}")
    if ("slices" in data) == ("models" in data):
        raise RecipeError(f"{source}: give exactly one of models: (whole models) or slices: (layer ranges)")
    slices = _slices_from(data["slices"], source) if "slices" in data else None
    models = _entries(data["models"], f"{source}: models", slices=False) if slices is None else _distinct(slices)
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        raise RecipeError(f"{source}: parameters: expected a mapping, got {params!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RecipeError(f"{source}: seed: expected an integer, got {seed!r}")
    dtype = normalize_dtype(data.get("out_dtype") or data.get("dtype"), f"{source}: dtype")
    tok, pad = _tokenizer_source(data, source)
    recipe = MergeRecipe(method.name, models, base, params, dtype, tok, seed, slices, pad)
    validate_recipe(recipe, source)
    return recipe


def _tokenizer_source(data: dict[str, Any], source: str) -> tuple[str | None, int | None]:
    """`tokenizer_source: X` or mergekit's newer `tokenizer: {source: X, pad_to_multiple_of: N}`."""
    if "tokenizer" in data and "tokenizer_source" in data:
        raise RecipeError(f"{source}: give tokenizer_source or tokenizer, not both")
    tok, pad = data.get("tokenizer_source"), None
    if "tokenizer" in data:
        block = data["tokenizer"]
        if not isinstance(block, dict):
            raise RecipeError(f"{source}: tokenizer: expected a mapping like {{source: union}}, got {block!r}")
        if "tokens" in block:
            raise RecipeError(
                f"{source}: tokenizer.tokens (per-token embedding sources) is not supported yet; remove it to use "
                "the default rules (see docs/merge.md)"
            )
        _refuse_unknown(block, {"source", "pad_to_multiple_of"}, f"{source}: tokenizer")
        tok, pad = block.get("source", "union"), block.get("pad_to_multiple_of")
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < 1):
            raise RecipeError(f"{source}: tokenizer.pad_to_multiple_of: expected a positive integer, got {pad!r}")
    if tok is not None and not isinstance(tok, str):
        raise RecipeError(f"{source}: tokenizer source: expected 'union', 'base' or a model, got {tok!r}")
    return tok, pad


def _entries(raw: Any, where: str, *, slices: bool) -> list[ModelEntry]:
    what = "{model, layer_range, parameters}" if slices else "{model, parameters}"
    if not isinstance(raw, list) or not raw:
        raise RecipeError(f"{where}: expected a non-empty list of {what}")
    out = []
    for i, entry in enumerate(raw):
        if isinstance(entry, str) and not slices:
            entry = {"model": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise RecipeError(f"{where}[{i}].model: expected a model path or repo id, got {entry!r}")
        _refuse_unknown(entry, {"model", "parameters", *(["layer_range"] if slices else [])}, f"{where}[{i}]")
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise RecipeError(f"{where}[{i}].parameters: expected a mapping, got {params!r}")
        out.append(ModelEntry(entry["model"], dict(params), _layer_range(entry, f"{where}[{i}]") if slices else None))
    return out


def _layer_range(entry: dict[str, Any], where: str) -> tuple[int, int]:
    rng = entry.get("layer_range")
    ok = isinstance(rng, list | tuple) and len(rng) == 2 and all(isinstance(v, int) and v >= 0 for v in rng)
    if not ok or rng[0] >= rng[1]:
        raise RecipeError(f"{where}.layer_range: expected [first, end) with 0 <= first < end, got {rng!r}")
    return int(rng[0]), int(rng[1])


def _slices_from(raw: Any, source: str) -> list[OutputSlice]:
    if not isinstance(raw, list) or not raw:
        raise RecipeError(f"{source}: slices: expected a non-empty list of {{sources: [...]}}")
    out = []
    for i, block in enumerate(raw):
        where = f"{source}: slices[{i}]"
        if not isinstance(block, dict):
            raise RecipeError(f"{where}: expected a mapping with sources")
        _refuse_unknown(block, {"sources", "base_model", "parameters"}, where)
        sources = _entries(block.get("sources"), f"{where}.sources", slices=True)
        lengths = {s.layer_range[1] - s.layer_range[0] for s in sources if s.layer_range}
        if len(lengths) != 1:
            raise RecipeError(
                f"{where}.sources: every source must span the same number of layers, got {sorted(lengths)}"
            )
        params = block.get("parameters") or {}
        if not isinstance(params, dict):
            raise RecipeError(f"{where}.parameters: expected a mapping, got {params!r}")
        out.append(OutputSlice(sources, block.get("base_model"), dict(params)))
    return out


def _distinct(slices: list[OutputSlice]) -> list[ModelEntry]:
    seen: dict[str, ModelEntry] = {}
    for s in slices:
        for src in s.sources:
            seen.setdefault(src.model, ModelEntry(src.model))
    return list(seen.values())


def validate_recipe(recipe: MergeRecipe, source: str = "recipe") -> None:
    """Check method arity, base model and every parameter's name, type and range before any I/O."""
    method = recipe.method
    if recipe.slices is None:
        recipe.models = _without_base(recipe, method, recipe.models, source)
        _check_arity(method, len(recipe.models), source)
        _check_levels(method, recipe.models, recipe.parameters, source, "models")
    else:
        for i, s in enumerate(recipe.slices):
            base = s.base_model or recipe.base_model
            if method.needs_base and not base:
                raise RecipeError(f"{source}: base_model is required by {method.name}")
            others = [m for m in s.sources if m.model != base] if method.base != "none" else s.sources
            _check_arity(method, len(others), f"{source}: slices[{i}]")
            _check_levels(method, s.sources, {**recipe.parameters, **s.parameters}, source, f"slices[{i}].sources")
            _check_params(method, s.parameters, f"{source}: slices[{i}].parameters")
    _check_params(method, recipe.parameters, f"{source}: parameters")
    for p in method.params:
        in_slices = recipe.slices is not None and all(p.name in s.parameters for s in recipe.slices)
        if p.required and not p.per_model and p.name not in recipe.parameters and not in_slices:
            raise RecipeError(f"{source}: parameters.{p.name} is required by {method.name}")


def _without_base(recipe: MergeRecipe, method: MergeMethod, models: list[ModelEntry], source: str) -> list[ModelEntry]:
    """mergekit lets the base appear in models (slerp configs list both); the base's own entry is then dropped."""
    if method.needs_base and not recipe.base_model:
        raise RecipeError(f"{source}: base_model is required by {method.name}")
    if method.base == "none":
        if recipe.base_model and recipe.base_model not in [m.model for m in models]:
            raise RecipeError(
                f"{source}: base_model: {method.name} uses no base model; remove base_model or list it under models"
            )
        return models
    return [m for m in models if m.model != recipe.base_model]


def _check_arity(method: MergeMethod, n: int, where: str) -> None:
    if n < method.min_models or (method.max_models is not None and n > method.max_models):
        if method.max_models == method.min_models:
            want = f"exactly {method.min_models}"
        elif method.max_models is not None:
            want = f"{method.min_models} to {method.max_models}"
        else:
            want = f"at least {method.min_models}"
        besides = " besides the base" if method.base != "none" else ""
        raise RecipeError(f"{where}: {method.name} takes {want} model(s){besides}; got {n}")


def _check_levels(
    method: MergeMethod, entries: list[ModelEntry], shared: dict[str, Any], source: str, label: str
) -> None:
    """Per-model parameters: known names, valid values, and required ones set at some level for every model."""
    for i, m in enumerate(entries):
        for key, value in m.parameters.items():
            p = method.param(key)
            if p is None or not p.per_model:
                known = {q.name for q in method.params if q.per_model}
                hint = closest(key, known) or (f" ({key} is a global parameter)" if p is not None else "")
                raise RecipeError(
                    f"{source}: {label}[{i}].parameters.{key}: not a per-model parameter of {method.name}{hint}; "
                    f"known: {', '.join(sorted(known)) or 'none'}"
                )
            check_setting(p, value, f"{source}: {label}[{i}].parameters.{key}")
    for p in method.params:
        if p.required and p.per_model:
            for i, m in enumerate(entries):
                if p.name not in m.parameters and p.name not in shared:
                    raise RecipeError(f"{source}: {label}[{i}].parameters.{p.name} is required by {method.name}")


def _check_params(method: MergeMethod, params: dict[str, Any], where: str) -> None:
    known = {p.name for p in method.params}
    for key, value in params.items():
        p = method.param(key)
        if p is None:
            raise RecipeError(
                f"{where}.{key}: not a parameter of {method.name}{closest(key, known)}; "
                f"known: {', '.join(sorted(known)) or 'none'}"
            )
        check_setting(p, value, f"{where}.{key}")


def check_setting(p: Param, value: Any, where: str) -> None:
    """Scalars, gradients (lists of scalars) and filter lists ({filter, value}) are all checked element-wise."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        if not value:
            raise RecipeError(f"{where}: empty list")
        for j, item in enumerate(value):
            if isinstance(item, dict):
                extra = set(item) - {"filter", "value"}
                if extra or "value" not in item:
                    raise RecipeError(f"{where}[{j}]: expected {{filter: <substring>, value: ...}}, got {item!r}")
                check_setting(p, item["value"], f"{where}[{j}].value")
            else:
                p.check(item, f"{where}[{j}]")
        return
    p.check(value, where)
