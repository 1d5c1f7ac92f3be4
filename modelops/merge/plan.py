"""Plan a merge from safetensors headers alone and refuse bad input before a single byte is written."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelops.checkpoint import Checkpoint, TensorInfo, TensorSpec, check_output_location, open_headers, plan_shards
from modelops.errors import CheckpointError
from modelops.merge import layers
from modelops.merge.layers import SourceTensor, TensorSources
from modelops.merge.recipe import MergeRecipe
from modelops.merge.registry import MergeMethod
from modelops.merge.vocab import VocabPlan, is_vocab_tensor, plan_vocab

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorPlan:
    """How one output tensor is produced: from which input tensors, at which depth, or copied unchanged."""

    name: str
    out: TensorSpec
    merge: bool  # False: copied unchanged from `copy_from` (non-float tensors)
    shared_rows: int | None = None  # set when the reference has extra vocabulary rows, copied as they are
    vocab: bool = False  # an embedding/head laid out in the merged tokenizer's vocabulary before merging
    t: float = 0.0
    base: SourceTensor | None = None
    sources: tuple[SourceTensor, ...] = ()
    copy_from: SourceTensor | None = None
    slice_parameters: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class MergePlan:
    recipe: MergeRecipe
    method: MergeMethod
    base: Checkpoint | None
    models: list[Checkpoint]
    reference: Checkpoint
    tensors: dict[str, TensorPlan]
    shards: dict[str, list[TensorSpec]]
    warnings: list[str] = field(default_factory=list)
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)  # recipe spec -> opened input
    config_updates: dict[str, Any] = field(default_factory=dict)  # written into the output's config.json
    vocab: VocabPlan | None = None  # tokenizer merging (tokenizer_source set)

    @property
    def inputs(self) -> list[Checkpoint]:
        return ([self.base] if self.base is not None else []) + self.models

    @property
    def total_bytes(self) -> int:
        return sum(p.out.nbytes for p in self.tensors.values())

    def close(self) -> None:
        for ck in self.checkpoints.values():
            ck.close()

    def describe(self) -> str:
        """Human-readable plan for --dry-run."""
        lines = [f"method     {self.method.name}: {self.method.summary}"]
        if self.base is not None:
            lines.append(f"base       {self.base.name}")
        entries = self.recipe.models if self.recipe.slices is None else [None] * len(self.models)
        for m, entry in zip(self.models, entries, strict=True):
            params = ", ".join(f"{k}={v}" for k, v in entry.parameters.items()) if entry else ""
            lines.append(f"model      {m.name}" + (f"  ({params})" if params else ""))
        for i, s in enumerate(self.recipe.slices or []):
            srcs = ", ".join(f"{src.model}{list(src.layer_range or ())}" for src in s.sources)
            lines.append(f"slice {i:<4d} {s.length} layer(s) from {srcs}")
        if self.recipe.parameters:
            lines.append("parameters " + ", ".join(f"{k}={v}" for k, v in self.recipe.parameters.items()))
        lines.append(
            f"config     from {self.reference.name}" + (f", set {self.config_updates}" * bool(self.config_updates))
        )
        n_copy = sum(not p.merge for p in self.tensors.values())
        lines.append(
            f"tensors    {len(self.tensors)} ({len(self.tensors) - n_copy} merged, {n_copy} copied), "
            f"{_human(self.total_bytes)} in {len(self.shards)} shard(s)"
        )
        for p in self.tensors.values():
            extra = "" if p.merge else "  [copied]"
            if p.shared_rows is not None:
                extra = f"  [rows {p.shared_rows}: copied from {self.reference.name}]"
            lines.append(f"  {p.name:60s} {list(p.out.shape)!s:>16s} {p.out.dtype}{extra}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def open_inputs(
    recipe: MergeRecipe, *, allow_pickle: bool = False, headers_only: bool = False
) -> dict[str, Checkpoint]:
    """Every model the recipe names, opened once (headers only), base first. `headers_only`: Hub repos are read
    from their safetensors headers over HTTP, without downloading weights (for dry runs)."""
    opener = open_headers if headers_only else Checkpoint.open
    specs = [recipe.base_model] if recipe.base_model and recipe.method.base != "none" else []
    specs += [m.model for m in recipe.models]
    for s in recipe.slices or []:
        specs += [s.base_model] if s.base_model else []
    opened: dict[str, Checkpoint] = {}
    for spec in specs:
        if spec not in opened:
            opened[spec] = opener(spec, allow_pickle=allow_pickle)
    return opened


def build_plan(
    recipe: MergeRecipe,
    *,
    out: Path | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    shard_size: int | str = "5GB",
    headers_only: bool = False,
) -> MergePlan:
    """Open every input (headers only), check them against each other and the output, plan every tensor.

    With `headers_only`, Hub inputs are never downloaded: the plan can be described but not run."""
    method = recipe.method
    checkpoints = open_inputs(recipe, allow_pickle=allow_pickle, headers_only=headers_only)
    base_spec = recipe.base_model if method.base != "none" else None
    base = checkpoints[base_spec] if base_spec else None
    models = [checkpoints[m.model] for m in recipe.models if m.model != base_spec]
    if out is not None:
        check_output_location(out, [ck.folder for ck in checkpoints.values()], overwrite=overwrite)
    reference = _reference(recipe, base, models, checkpoints)
    _check_architectures(list(checkpoints.values()))
    config_updates: dict[str, Any] = {}
    if recipe.slices is None:
        entries = [(m.model, m.parameters) for m in recipe.models]
        sources = layers.whole_model_sources(reference, base_spec, entries)
        _check_same_tensors(reference, [base, *models])
    else:
        base_for = [(s.base_model or base_spec) if method.base != "none" else None for s in recipe.slices]
        sources, origin = layers.sliced_sources(recipe.slices, base_for, checkpoints, reference)
        config_updates = layers.per_layer_config(origin, checkpoints, reference)
    vocab = None
    if recipe.tokenizer_source:
        tok_base = recipe.base_model if recipe.base_model in checkpoints else None
        vocab = plan_vocab(recipe.tokenizer_source, tok_base, list(checkpoints), checkpoints, recipe.pad_to_multiple_of)
        config_updates["vocab_size"] = vocab.size
    warnings: list[str] = []
    plans = {ts.name: _plan_tensor(ts, reference, checkpoints, method, recipe.dtype, warnings, vocab) for ts in sources}
    shards = plan_shards([p.out for p in plans.values()], shard_size)
    return MergePlan(
        recipe, method, base, models, reference, plans, shards, warnings, checkpoints, config_updates, vocab
    )


def _reference(
    recipe: MergeRecipe, base: Checkpoint | None, models: list[Checkpoint], checkpoints: dict[str, Checkpoint]
) -> Checkpoint:
    """The input that gives the config, the tokenizer and any tensor that is copied rather than merged."""
    if recipe.tokenizer_source and recipe.tokenizer_source not in ("base", "union"):
        if recipe.tokenizer_source not in checkpoints:
            raise CheckpointError(f"tokenizer_source {recipe.tokenizer_source!r} is not one of the recipe's models")
        return checkpoints[recipe.tokenizer_source]
    if recipe.method.reference == "base" and base is not None:
        return base
    if recipe.slices is not None:
        return checkpoints[recipe.slices[0].sources[0].model]
    return models[0] if models else next(iter(checkpoints.values()))


def _check_architectures(inputs: list[Checkpoint]) -> None:
    archs = {ck.name: ck.architectures for ck in inputs if ck.architectures}
    if len({tuple(a) for a in archs.values()}) > 1:
        listed = "; ".join(f"{name}: {','.join(a)}" for name, a in archs.items())
        raise CheckpointError(f"config architectures differ ({listed}); only models of one architecture can be merged")


def _check_same_tensors(reference: Checkpoint, inputs: list[Checkpoint | None]) -> None:
    for ck in inputs:
        extra = sorted(set(ck.tensors) - set(reference.tensors)) if ck is not None else []
        if extra:
            raise CheckpointError(
                f"tensor {extra[0]!r} is in {ck.name} but not in {reference.name} "
                f"({len(extra)} such tensor(s)); the checkpoints must hold the same tensors"
            )


def _plan_tensor(
    ts: TensorSources,
    reference: Checkpoint,
    checkpoints: dict[str, Checkpoint],
    method: MergeMethod,
    out_dtype: str | None,
    warnings: list[str],
    vocab: VocabPlan | None = None,
) -> TensorPlan:
    inputs = ([ts.base] if ts.base is not None else []) + list(ts.sources)
    copy_from = _copy_source(ts, reference, checkpoints, method)
    ref_ck, ref = checkpoints[copy_from.model], _info(checkpoints, copy_from)
    if vocab is not None and _all_vocab(inputs, checkpoints):
        return _plan_vocab_tensor(ts, inputs, checkpoints, ref, out_dtype, vocab, copy_from)
    shared_rows = None
    infos: list[tuple[Checkpoint, TensorInfo]] = []
    for src in inputs:
        ck, info = checkpoints[src.model], _info(checkpoints, src)
        infos.append((ck, info))
        if info.shape == ref.shape:
            continue
        rows_only = len(info.shape) == len(ref.shape) == 2 and info.shape[1:] == ref.shape[1:]
        added_rows = rows_only and info.shape[0] < ref.shape[0] and method.vocab_rows_from_reference
        if added_rows and _is_vocab_matrix(src.tensor, info, ck):
            shared_rows = info.shape[0] if shared_rows is None else min(shared_rows, info.shape[0])
            continue
        raise CheckpointError(
            f"shape mismatch for {src.tensor!r}: {list(ref.shape)} in {ref_ck.name} vs {list(info.shape)} in {ck.name}"
        )
    if shared_rows is not None:
        warnings.append(
            f"{ts.name}: {ref_ck.name} has {ref.shape[0]} rows, the other model {shared_rows}; "
            f"rows 0..{shared_rows - 1} are merged, the {ref.shape[0] - shared_rows} extra row(s) copied unchanged"
        )
    merge = all(info.is_float for _, info in infos)
    if not merge and any(info.is_float for _, info in infos):
        kinds = ", ".join(f"{ck.name}: {info.dtype}" for ck, info in infos)
        raise CheckpointError(f"tensor {ts.name!r} is float in some inputs and not in others ({kinds})")
    dtype = (out_dtype or ref.dtype) if merge else ref.dtype
    return TensorPlan(
        ts.name,
        TensorSpec(ts.name, ref.shape, dtype),
        merge,
        shared_rows,
        False,
        ts.t,
        ts.base,
        ts.sources,
        copy_from,
        ts.slice_parameters,
    )


def _all_vocab(inputs: list[SourceTensor], checkpoints: dict[str, Checkpoint]) -> bool:
    for src in inputs:
        info, cfg = _info(checkpoints, src), checkpoints[src.model].config or {}
        if not is_vocab_tensor(src.tensor, info.shape, cfg.get("vocab_size")):
            return False
    return True


def _plan_vocab_tensor(
    ts: TensorSources,
    inputs: list[SourceTensor],
    checkpoints: dict[str, Checkpoint],
    ref: TensorInfo,
    out_dtype: str | None,
    vocab: VocabPlan,
    copy_from: SourceTensor,
) -> TensorPlan:
    """An embedding or head of a tokenizer merge: rows follow the output vocabulary; only widths must agree."""
    for src in inputs:
        info = _info(checkpoints, src)
        if info.shape[1:] != ref.shape[1:] or not info.is_float:
            raise CheckpointError(
                f"cannot merge {src.tensor!r}: {list(info.shape)} {info.dtype} in {checkpoints[src.model].name} vs "
                f"{list(ref.shape)} {ref.dtype}; embedding widths must agree"
            )
    spec = TensorSpec(ts.name, (vocab.size, *ref.shape[1:]), out_dtype or ref.dtype)
    return TensorPlan(ts.name, spec, True, None, True, ts.t, ts.base, ts.sources, copy_from, ts.slice_parameters)


def _copy_source(
    ts: TensorSources, reference: Checkpoint, checkpoints: dict[str, Checkpoint], method: MergeMethod
) -> SourceTensor:
    """The input a copied tensor comes from: the reference when it holds this tensor, else the first source."""
    spec = layers.reference_spec(checkpoints, reference)
    for src in [ts.base, *ts.sources]:
        if src is not None and src.model == spec:
            return src
    if method.reference == "base" and ts.base is not None:
        return ts.base
    return ts.sources[0] if ts.sources else ts.base  # type: ignore[return-value]


def _info(checkpoints: dict[str, Checkpoint], src: SourceTensor) -> TensorInfo:
    ck = checkpoints[src.model]
    info = ck.tensors.get(src.tensor)
    if info is None:
        raise CheckpointError(
            f"tensor {src.tensor!r} is not in {ck.name}; the checkpoints must hold the same tensors "
            "(a tied lm_head stored in one and omitted in the other counts)"
        )
    return info


def _is_vocab_matrix(name: str, info: TensorInfo, ck: Checkpoint) -> bool:
    """An embedding or output head: one row per token (by the config's vocab_size, or by name without config)."""
    vocab = (ck.config or {}).get("vocab_size")
    if vocab is not None:
        return info.shape[0] == vocab
    return any(k in name for k in ("embed", "lm_head", "wte", "output"))
