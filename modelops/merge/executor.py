"""Walk a `MergePlan` tensor by tensor, shard by shard: read a few tensors, compute in float32, cast, append.

Peak memory is the handful of tensors of one step plus the runtime, whatever the model size.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modelops.checkpoint import CheckpointWriter, copy_support_files
from modelops.checkpoint.resume import ResumableOutput, plan_key
from modelops.errors import NumericsError, RecipeError
from modelops.merge.layers import SourceTensor
from modelops.merge.methods.blocks import as_rows
from modelops.merge.params import resolve
from modelops.merge.plan import MergePlan, TensorPlan
from modelops.merge.registry import Param, TensorJob
from modelops.merge.vocab import save_tokenizer
from modelops.provenance import fingerprint_sha256, input_record, peak_rss_bytes, write_recipe_file

logger = logging.getLogger(__name__)

LOW_PRECISION = {"bfloat16", "float16"}
SURVIVAL_WARN_BELOW = 0.90


@dataclass
class UpdateSurvival:
    """How much of the intended update (output − reference) is still there after casting to the output dtype.

    ⟨realised, intended⟩ / ‖intended‖² over an evenly strided sample of every tensor (≤ 2^16 entries per block):
    1.0 means nothing was lost; an update below half an ULP of the stored weight rounds away and counts 0.
    """

    dot: float = 0.0
    norm2: float = 0.0
    sample: int = 1 << 16

    def add(self, value: torch.Tensor, stored: torch.Tensor, ref: torch.Tensor) -> None:
        step = max(1, value.numel() // self.sample)
        v, s, r = (t.reshape(-1)[::step].double() for t in (value, stored, ref))
        intended, realised = v - r, s - r
        self.dot += float(intended @ realised)
        self.norm2 += float(intended @ intended)

    @property
    def fraction(self) -> float | None:
        return self.dot / self.norm2 if self.norm2 > 0 else None


@dataclass
class MergeResult:
    out: Path
    tensors: int
    bytes_written: int
    seconds: float
    peak_rss: int
    files: list[str]
    survival: float | None = None
    warnings: list[str] = field(default_factory=list)
    resumed_shards: int = 0  # shards kept from an interrupted run (--resume)
    metrics: dict[str, Any] = field(default_factory=dict)  # what the recipe file records (ExPO survival, α search)


def row_blocks(shape: tuple[int, ...], block_elems: int, split_at: int | None = None) -> list[tuple[int, int] | None]:
    """Row ranges of at most `block_elems` entries each (never straddling `split_at`); [None] = whole tensor."""
    if not shape or shape[0] == 0:
        return [None]
    row = 1
    for d in shape[1:]:
        row *= d
    per = max(1, block_elems // max(row, 1))
    cuts = sorted({0, shape[0], *range(0, shape[0], per), *([split_at] if split_at else [])})
    return list(itertools.pairwise(cuts))


def compute_block(
    plan: MergePlan, tp: TensorPlan, rows: tuple[int, int] | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The float32 merged value of one tensor (or block of rows), and the reference's stored values there."""
    assert tp.copy_from is not None
    if not tp.merge or (tp.shared_rows is not None and rows is not None and rows[0] >= tp.shared_rows):
        return _load(plan, tp.copy_from, rows), None  # copied as stored (non-float tensors, added-token rows)
    if rows is None and tp.shared_rows is not None:
        rows = (0, tp.shared_rows)
    job, ref = tensor_job(plan, tp, rows, device)
    return plan.method.fn(job), ref


def streams_blocks(plan: MergePlan, tp: TensorPlan, numel: int) -> bool:
    """Whether this tensor's merged value is written block by block as the method yields it (whole inputs, but
    never the whole float32 result and its cast copy): a merged tensor of the method's own rows, not empty."""
    return plan.method.blocks is not None and tp.merge and not tp.vocab and tp.shared_rows is None and numel > 0


def stream_blocks(plan: MergePlan, tp: TensorPlan, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(float32 block of the merged value, the reference's stored values there), in row order."""
    assert plan.method.blocks is not None
    job, ref = tensor_job(plan, tp, None, device)
    ref_rows, start = as_rows(ref), 0
    for block in plan.method.blocks(job):
        yield block, ref_rows[start : start + block.shape[0]]
        start += block.shape[0]


def tensor_job(
    plan: MergePlan, tp: TensorPlan, rows: tuple[int, int] | None, device: torch.device
) -> tuple[TensorJob, torch.Tensor]:
    """The method's inputs for one tensor (or block of rows), loaded once each, and the reference's values."""
    assert tp.copy_from is not None
    cache: dict[tuple[str, str], torch.Tensor] = {}
    if tp.vocab:  # every input's rows put in the merged tokenizer's order first (whole tensors)
        assert plan.vocab is not None
        stored = {src.model: _load(plan, src, None).to(device) for src in _inputs(tp)}
        for src in _inputs(tp):
            cache[(src.model, src.tensor)] = plan.vocab.rows_for(src.model, stored[src.model], stored)

    def load(src: SourceTensor) -> torch.Tensor:
        key = (src.model, src.tensor)
        if key not in cache:
            cache[key] = _load(plan, src, rows).to(device)
        return cache[key]

    job = TensorJob(
        name=tp.name,
        base=load(tp.base) if tp.base is not None else None,
        tensors=[load(src) for src in tp.sources],
        per_model=per_model_values(plan, tp),
        params=global_values(plan, tp),
        seed=plan.recipe.seed,
    )
    return job, load(tp.copy_from)


def _inputs(tp: TensorPlan) -> list[SourceTensor]:
    return [src for src in (tp.base, *tp.sources) if src is not None]


def _load(plan: MergePlan, src: SourceTensor, rows: tuple[int, int] | None) -> torch.Tensor:
    return plan.checkpoints[src.model].get(src.tensor, rows)


def per_model_values(plan: MergePlan, tp: TensorPlan) -> dict[str, list[Any]]:
    """Each per-model parameter for each source, by mergekit's lookup order (see `modelops.merge.params`)."""
    values: dict[str, list[Any]] = {}
    for p in plan.method.params:
        if p.per_model:
            values[p.name] = [
                _value(p, src.tensor, tp.t, [src.parameters, tp.slice_parameters, plan.recipe.parameters], src.model)
                for src in tp.sources
            ]
    return values


def global_values(plan: MergePlan, tp: TensorPlan) -> dict[str, Any]:
    levels = [tp.slice_parameters, plan.recipe.parameters]
    return {p.name: _value(p, tp.name, tp.t, levels, None) for p in plan.method.params if not p.per_model}


def _value(p: Param, tensor: str, t: float, levels: list[dict[str, Any]], model: str | None) -> Any:
    value = resolve(p.name, tensor, t, levels)
    if value is None:
        if p.required:
            who = f" of {model}" if model else ""
            raise RecipeError(f"parameter {p.name}{who} has no value for tensor {tensor!r} (no filter matches it)")
        return p.default
    if p.kind is bool:
        return bool(value)  # a gradient of switches: on where its value is non-zero
    return p.kind(value) if p.kind in (int, float) and not isinstance(value, bool) else value


def _check_finite(plan: MergePlan, tp: TensorPlan, tensor: torch.Tensor) -> None:
    """A NaN or inf anywhere makes the sum non-finite; only then look for where it came from."""
    if tensor.is_floating_point() and not math.isfinite(float(tensor.sum())) and not bool(torch.isfinite(tensor).all()):
        culprits = [
            f"{src.model} ({src.tensor})"
            for src in [tp.base, *tp.sources]
            if src is not None and not bool(torch.isfinite(_load(plan, src, None).float()).all())
        ]
        where = f" (already non-finite in {', '.join(culprits)})" if culprits else " (produced by the merge)"
        raise NumericsError(f"NaN/inf in output tensor {tp.name!r}{where}; nothing was written")


def run_merge(
    plan: MergePlan,
    out: Path,
    *,
    overwrite: bool = False,
    device: str = "cpu",
    progress: Callable[[str, int], None] | None = None,
    shard_size: int | str = "5GB",
    provenance: dict[str, Any] | None = None,
    block_elems: int = 1 << 22,
    metrics: dict[str, Any] | None = None,
    resume: bool = False,
    finish: Callable[[Path], None] | None = None,
) -> MergeResult:
    """Execute the plan into `out` atomically; returns what was written and what it cost.

    Elementwise methods stream large tensors in blocks of `block_elems` entries (16 MB of float32), so peak
    memory does not depend on the size of the largest tensor either. Finished shards are recorded as they close;
    with `resume`, an interrupted run of the same plan keeps them and computes only the rest (same bytes).
    `finish` gets the complete folder just before it is published (the API writes the model card there).
    """
    start = time.perf_counter()
    dev = torch.device(device)
    survival = UpdateSurvival() if plan.method.small_update else None
    specs = [tp.out for tp in plan.tensors.values()]
    out_dtypes = {s.dtype: getattr(torch, s.dtype) for s in specs}
    output = ResumableOutput(out, plan_key=merge_key(plan, shard_size), resume=resume, overwrite=overwrite)
    with output as tmp:
        resumed = len(output.done)
        if survival is not None and "survival" in output.extra:
            survival.dot, survival.norm2 = output.extra["survival"]

        def shard_closed(name: str) -> None:
            output.record(name, {"survival": [survival.dot, survival.norm2]} if survival is not None else None)

        writer = CheckpointWriter(tmp, specs, max_shard_size=shard_size, done=set(output.done), on_shard=shard_closed)
        todo = {s.name for s in writer.order}
        if progress is not None:
            for spec in specs:
                if spec.name not in todo:
                    progress(spec.name, spec.nbytes)  # kept from the interrupted run
        try:
            for spec in writer.order:
                tp = plan.tensors[spec.name]
                chunked = tp.merge and plan.method.elementwise and not tp.vocab
                if streams_blocks(plan, tp, math.prod(spec.shape)) and not chunked:
                    parts: Iterable[tuple[torch.Tensor, torch.Tensor | None, bool]] = (
                        (value, ref, True) for value, ref in stream_blocks(plan, tp, dev)
                    )
                else:
                    blocks = row_blocks(spec.shape, block_elems, tp.shared_rows) if chunked else [None]
                    parts = ((*compute_block(plan, tp, rows, dev), rows is not None) for rows in blocks)
                for value, ref, part in parts:
                    _check_finite(plan, tp, value)
                    stored = value.to(out_dtypes[spec.dtype])
                    # written first: a shard this write closes is recorded with the survival of its own tensors
                    writer.write(spec.name, stored, part=part)
                    if survival is not None and ref is not None and spec.dtype in LOW_PRECISION:
                        survival.add(value, stored, ref)
                    del value, ref, stored
                if progress is not None:
                    progress(spec.name, spec.nbytes)
            files = writer.finish()
        except BaseException:
            writer.abort()
            raise
        dtypes = {s.dtype for s in specs if s.dtype.startswith(("float", "bfloat"))}
        copy_support_files(
            plan.reference.folder, tmp, dtype=dtypes.pop() if len(dtypes) == 1 else None, config=plan.config_updates
        )
        if plan.vocab is not None:
            save_tokenizer(plan.vocab, tmp)
        fraction = survival.fraction if survival is not None else None
        warnings = list(plan.warnings)
        if fraction is not None and fraction < SURVIVAL_WARN_BELOW:
            dtype = next(iter({s.dtype for s in specs} & LOW_PRECISION))
            warnings.append(
                f"only {fraction:.1%} of the {plan.method.title or plan.method.name} update survives {dtype} rounding; "
                "pass --dtype float32 to keep all of it"
            )
        metrics = {**({"update_survival": round(fraction, 4)} if fraction is not None else {}), **(metrics or {})}
        base_role, model_role = plan.method.roles
        record_inputs = [input_record(plan.base, base_role)] if plan.base is not None else []
        record_inputs += [input_record(ck, model_role) for ck in plan.models]
        write_recipe_file(tmp, plan.recipe.to_dict(), record_inputs, metrics=metrics, extra=provenance)
        if finish is not None:
            finish(tmp)
    plan.close()
    for w in warnings:
        logger.warning("warning: %s", w)
    return MergeResult(
        out=Path(out).expanduser().resolve(),
        tensors=len(specs),
        bytes_written=sum(s.nbytes for s in specs),
        seconds=time.perf_counter() - start,
        peak_rss=peak_rss_bytes(),
        files=files,
        survival=fraction,
        warnings=warnings,
        resumed_shards=resumed,
        metrics=metrics,
    )


def merge_key(plan: MergePlan, shard_size: int | str) -> str:
    """What a resumed merge must share with the interrupted one: the recipe and the inputs' contents."""
    inputs = {spec: fingerprint_sha256(ck) for spec, ck in plan.checkpoints.items()}
    specs = [tp.out for tp in plan.tensors.values()]
    return plan_key({"recipe": plan.recipe.to_dict(), "inputs": inputs}, specs, shard_size)
