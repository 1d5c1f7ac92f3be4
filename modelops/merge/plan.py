"""Plan a merge from safetensors headers alone and refuse bad input before a single byte is written."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from modelops.checkpoint import Checkpoint, TensorInfo, TensorSpec, check_output_location, plan_shards
from modelops.errors import CheckpointError
from modelops.merge.recipe import MergeRecipe
from modelops.merge.registry import MergeMethod

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorPlan:
    """How one output tensor is produced."""

    name: str
    out: TensorSpec
    merge: bool  # False: copied unchanged from the reference (non-float tensors)
    shared_rows: int | None = None  # set when the reference has extra vocabulary rows, copied as they are


@dataclass
class MergePlan:
    recipe: MergeRecipe
    method: MergeMethod
    base: Checkpoint | None
    models: list[Checkpoint]
    reference: Checkpoint
    tensors: dict[str, TensorPlan]
    shards: dict[str, list[TensorSpec]]
    num_layers: int | None
    warnings: list[str] = field(default_factory=list)

    @property
    def inputs(self) -> list[Checkpoint]:
        return ([self.base] if self.base is not None else []) + self.models

    @property
    def total_bytes(self) -> int:
        return sum(p.out.nbytes for p in self.tensors.values())

    def close(self) -> None:
        for ck in self.inputs:
            ck.close()

    def describe(self) -> str:
        """Human-readable plan for --dry-run."""
        lines = [f"method     {self.method.name}: {self.method.summary}"]
        if self.base is not None:
            lines.append(f"base       {self.base.name}")
        for m, entry in zip(self.models, self.recipe.models, strict=True):
            params = ", ".join(f"{k}={v}" for k, v in entry.parameters.items())
            lines.append(f"model      {m.name}" + (f"  ({params})" if params else ""))
        if self.recipe.parameters:
            lines.append("parameters " + ", ".join(f"{k}={v}" for k, v in self.recipe.parameters.items()))
        lines.append(f"config     from {self.reference.name}")
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


def open_inputs(recipe: MergeRecipe, *, allow_pickle: bool = False) -> tuple[Checkpoint | None, list[Checkpoint]]:
    base = Checkpoint.open(recipe.base_model, allow_pickle=allow_pickle) if recipe.method.needs_base else None
    models = [Checkpoint.open(m.model, allow_pickle=allow_pickle) for m in recipe.models]
    return base, models


def build_plan(
    recipe: MergeRecipe,
    *,
    out: Path | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    shard_size: int | str = "5GB",
) -> MergePlan:
    """Open every input (headers only), check them against each other and the output, plan every tensor."""
    method = recipe.method
    base, models = open_inputs(recipe, allow_pickle=allow_pickle)
    inputs = ([base] if base is not None else []) + models
    if out is not None:
        check_output_location(out, [ck.folder for ck in inputs], overwrite=overwrite)
    reference = _reference(recipe, base, models)
    _check_architectures(inputs)
    warnings: list[str] = []
    plans: dict[str, TensorPlan] = {}
    for name, ref_info in reference.tensors.items():
        plans[name] = _plan_tensor(name, ref_info, reference, inputs, method, recipe.dtype, warnings)
    for ck in inputs:
        extra = sorted(set(ck.tensors) - set(reference.tensors))
        if extra:
            raise CheckpointError(
                f"tensor {extra[0]!r} is in {ck.name} but not in {reference.name} "
                f"({len(extra)} such tensor(s)); the checkpoints must hold the same tensors"
            )
    specs = [p.out for p in plans.values()]
    shards = plan_shards(specs, shard_size)
    cfg = reference.config or {}
    num_layers = cfg.get("num_hidden_layers") or cfg.get("n_layer")
    return MergePlan(recipe, method, base, models, reference, plans, shards, num_layers, warnings)


def _reference(recipe: MergeRecipe, base: Checkpoint | None, models: list[Checkpoint]) -> Checkpoint:
    if recipe.tokenizer_source and recipe.tokenizer_source != "base":
        for entry, ck in zip(recipe.models, models, strict=True):
            if entry.model == recipe.tokenizer_source:
                return ck
        raise CheckpointError(f"tokenizer_source {recipe.tokenizer_source!r} is not one of the recipe's models")
    if recipe.method.reference == "base" and base is not None:
        return base
    return models[0]


def _check_architectures(inputs: list[Checkpoint]) -> None:
    archs = {ck.name: ck.architectures for ck in inputs if ck.architectures}
    if len({tuple(a) for a in archs.values()}) > 1:
        listed = "; ".join(f"{name}: {','.join(a)}" for name, a in archs.items())
        raise CheckpointError(f"config architectures differ ({listed}); only models of one architecture can be merged")


def _plan_tensor(
    name: str,
    ref: TensorInfo,
    reference: Checkpoint,
    inputs: list[Checkpoint],
    method: MergeMethod,
    out_dtype: str | None,
    warnings: list[str],
) -> TensorPlan:
    shared_rows = None
    infos = []
    for ck in inputs:
        info = ck.tensors.get(name)
        if info is None:
            raise CheckpointError(
                f"tensor {name!r} is in {reference.name} but not in {ck.name}; the checkpoints must hold the same "
                "tensors (a tied lm_head stored in one and omitted in the other counts)"
            )
        infos.append((ck, info))
        if info.shape == ref.shape:
            continue
        rows_only = len(info.shape) == len(ref.shape) == 2 and info.shape[1:] == ref.shape[1:]
        if (
            rows_only
            and method.vocab_rows_from_reference
            and _is_vocab_matrix(name, info, ck)
            and info.shape[0] < ref.shape[0]
        ):
            rows = info.shape[0] if shared_rows is None else min(shared_rows, info.shape[0])
            shared_rows = rows
            continue
        raise CheckpointError(
            f"shape mismatch for {name!r}: {list(ref.shape)} in {reference.name} vs {list(info.shape)} in {ck.name}"
        )
    if shared_rows is not None:
        warnings.append(
            f"{name}: {reference.name} has {ref.shape[0]} rows, the other model {shared_rows}; "
            f"rows 0..{shared_rows - 1} are merged, the {ref.shape[0] - shared_rows} extra row(s) copied unchanged"
        )
    merge = all(info.is_float for _, info in infos)
    if not merge and any(info.is_float for _, info in infos):
        kinds = ", ".join(f"{ck.name}: {info.dtype}" for ck, info in infos)
        raise CheckpointError(f"tensor {name!r} is float in some inputs and not in others ({kinds})")
    dtype = (out_dtype or ref.dtype) if merge else ref.dtype
    return TensorPlan(name, TensorSpec(name, ref.shape, dtype), merge, shared_rows)


def _is_vocab_matrix(name: str, info: TensorInfo, ck: Checkpoint) -> bool:
    """An embedding or output head: one row per token (by the config's vocab_size, or by name without config)."""
    vocab = (ck.config or {}).get("vocab_size")
    if vocab is not None:
        return info.shape[0] == vocab
    return any(k in name for k in ("embed", "lm_head", "wte", "output"))
