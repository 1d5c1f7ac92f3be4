"""`extract-lora`: a PEFT LoRA adapter from a full fine-tune, one base+tuned tensor pair at a time.

Pass 1 reads each pair, factorises ΔW in float32 (on `device`) and keeps only the small factors; pass 2 writes
the adapter through `CheckpointWriter`, reading whole tensors saved as `modules_to_save` again from the tuned
checkpoint. Peak memory is one pair of tensors plus the adapter itself, whatever the model size.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modelops.checkpoint import Checkpoint, CheckpointWriter, TensorSpec, check_output_location
from modelops.checkpoint.resume import ResumableOutput, plan_key
from modelops.errors import CheckpointError
from modelops.lora.modules import _EXACT, Collected, load_outcome, module_outcome, save_outcome
from modelops.lora.modules import delta as module_delta
from modelops.lora.report import REPORT_FILE, ModuleRow, render_table, summarize
from modelops.lora.targets import EMBED_KINDS, PEFT_PREFIX, Module, ModuleMap, module_map, select_modules
from modelops.provenance import (
    MethodDescription,
    fingerprint_sha256,
    input_record,
    peak_rss_bytes,
    public_spec,
    write_recipe_file,
)  # fmt: skip

DESCRIPTION = MethodDescription(
    "extract-lora",
    "LoRA extraction",
    "truncated SVD of ΔW = W_tuned − W_base per linear layer, saved as a PEFT LoRA adapter",
    "Hu et al., LoRA: Low-Rank Adaptation of Large Language Models",
    "https://arxiv.org/abs/2106.09685",
)

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
EMBEDDING_MODES = ("full", "lora", "skip")
OTHER_MODES = ("report", "full")


@dataclass
class ExtractOptions:
    rank: int | None = 16
    energy: float | None = None  # with max_rank: smallest rank per module keeping this share of ‖ΔW‖²
    max_rank: int = 128
    modules: str = "all-linear"
    embeddings: str = "full"  # full (modules_to_save when changed) | lora | skip
    other: str = "report"  # changed norms/biases/unselected weights: report, or save whole ("full")
    dtype: str | None = None  # adapter dtype; default: the tuned model's
    device: str = "cpu"
    niter: int = 6
    svd: str = "auto"  # auto (randomised when the rank is small against the matrix) | exact | randomized


@dataclass
class ExtractPlan:
    base: Checkpoint
    tuned: Checkpoint
    options: ExtractOptions
    modules: ModuleMap
    lora: list[Module]  # linear/conv1d modules to factorise
    embeds: list[Module]  # embedding / untied output modules, handled by --embeddings
    others: list[str]  # every other tensor: compared, reported, saved whole with --other full
    dtype: str

    @property
    def total_bytes(self) -> int:
        """Bytes of base weights the extraction reads per side (what the progress bar counts)."""
        return sum(self.base.tensors[m.weight].nbytes for m in self.lora + self.embeds)

    def describe(self) -> str:
        o = self.options
        how = f"rank {o.rank}" if o.rank is not None else f"energy {o.energy} (max rank {o.max_rank})"
        lines = [
            f"base       {self.base.name}",
            f"tuned      {self.tuned.name}",
            f"method     truncated SVD of ΔW per module, {how}, adapter dtype {self.dtype}",
            f"modules    {len(self.lora)} LoRA targets ({o.modules}; classified by {self.modules.source})",
            f"embeddings {o.embeddings}{' (tied input/output embedding)' if self.modules.tied else ''}",
            f"other      {len(self.others)} tensors (norms, biases, unselected weights): {o.other} if changed",
        ]
        for m in self.lora + self.embeds:
            out_f, in_f = m.out_in
            r = "" if o.rank is None else f"  r={min(o.rank, out_f, in_f) if m.kind in EMBED_KINDS else o.rank}"
            mode = "lora" if m in self.lora else o.embeddings
            lines.append(f"  {m.name:56s} {m.kind:9s} {out_f:>6d}×{in_f:<6d} {mode}{r}")
        return "\n".join(lines)


@dataclass
class ExtractResult:
    out: Path
    rows: list[ModuleRow]
    summary: dict[str, Any]
    files: list[str]
    warnings: list[str] = field(default_factory=list)

    def table(self) -> Any:
        """The per-module error table (a rich Table) that the CLI prints on stderr."""
        return render_table(self.rows, self.summary)


def plan_extraction(
    base_spec: str, tuned_spec: str, options: ExtractOptions, *, out: Path | None = None, overwrite: bool = False
) -> ExtractPlan:
    """Open both checkpoints and refuse every bad input before anything is computed or written."""
    o = options
    if o.embeddings not in EMBEDDING_MODES:
        raise CheckpointError(f"--embeddings {o.embeddings!r}: use one of {', '.join(EMBEDDING_MODES)}")
    if o.other not in OTHER_MODES:
        raise CheckpointError(f"--other {o.other!r}: use one of {', '.join(OTHER_MODES)}")
    if o.svd not in _EXACT:
        raise CheckpointError(f"--svd {o.svd!r}: use one of {', '.join(_EXACT)}")
    if (o.rank is None) == (o.energy is None):
        raise CheckpointError("give either --rank R or --energy F (with --max-rank), not both")
    if o.rank is not None and o.rank < 1:
        raise CheckpointError(f"--rank {o.rank}: must be ≥ 1")
    if o.energy is not None and not 0 < o.energy <= 1:
        raise CheckpointError(f"--energy {o.energy}: must be in (0, 1]")
    base, tuned = Checkpoint.open(base_spec), Checkpoint.open(tuned_spec)
    _check_same_layout(base, tuned)
    if out is not None:
        check_output_location(out, [base.folder, tuned.folder], overwrite=overwrite)
    mm = module_map(base)
    lora = select_modules(mm, o.modules)
    embeds = [m for m in mm.modules.values() if m.kind in EMBED_KINDS and not m.tied]
    if o.rank is not None:
        for m in lora:
            if o.rank > min(m.out_in):
                raise CheckpointError(
                    f"--rank {o.rank} exceeds the maximum rank {min(m.out_in)} of {m.name} {list(m.out_in)}; "
                    f"use --rank ≤ {min(m.out_in)} or --energy"
                )
    covered = {m.weight for m in lora + embeds}
    others = [n for n in base.tensors if n not in covered]
    dtype = o.dtype or _dominant_float_dtype(tuned)
    return ExtractPlan(base, tuned, o, mm, lora, embeds, others, dtype)


def run_extraction(
    plan: ExtractPlan,
    out: Path,
    *,
    overwrite: bool = False,
    progress: Callable[[str, int], None] | None = None,
    finish: Callable[[Path], None] | None = None,
    resume: bool = False,
) -> ExtractResult:
    """Factorise every target, then write the adapter, its config, report and recipe atomically; `finish` gets the
    complete folder just before it is published (the API writes the model card there). Each module's factors
    are saved as it finishes; `resume` keeps those of an interrupted run of the same inputs and options."""
    start = time.perf_counter()
    o, dev = plan.options, torch.device(plan.options.device)
    out_dtype = getattr(torch, plan.dtype)
    output = ResumableOutput(out, plan_key=extract_key(plan), resume=resume, overwrite=overwrite, unit="module")
    with output as tmp:
        parts = Collected()
        for i, m in enumerate(plan.lora + plan.embeds):
            name = f"module-{i:05d}.safetensors"
            if name in output.done:
                outcome = load_outcome(tmp / name)
            else:
                outcome = module_outcome(plan.base, plan.tuned, m, o, embedding=m in plan.embeds, dev=dev,
                                         tied=_tied_output(plan, m), dtype=out_dtype)  # fmt: skip
                save_outcome(tmp / name, outcome)
                output.record(name)
            parts.add(m.name, outcome)
            if progress is not None:
                progress(m.name, plan.base.tensors[m.weight].nbytes)
        for name in list(output.done):  # they made the resume possible; the adapter replaces them
            (tmp / name).unlink(missing_ok=True)
        result = _finish_adapter(plan, tmp, out, parts, start=start, finish=finish)
    plan.base.close()
    plan.tuned.close()
    for w in result.warnings:
        logger.warning("warning: %s", w)
    return result


def extract_key(plan: ExtractPlan) -> str:
    """What a resumed extraction must share with the interrupted one: both inputs' contents and every option."""
    o = plan.options
    opts = {k: getattr(o, k) for k in ("rank", "energy", "max_rank", "modules", "embeddings", "other", "niter", "svd")}
    parts = {"extract-lora": [fingerprint_sha256(plan.base), fingerprint_sha256(plan.tuned)], "options": opts,
             "dtype": plan.dtype, "device": torch.device(o.device).type}  # fmt: skip
    return plan_key(parts, [], 1 << 62)


def _finish_adapter(
    plan: ExtractPlan, tmp: Path, out: Path, parts: Collected, *, start: float, finish: Callable[[Path], None] | None
) -> ExtractResult:
    """The loose tensors, then the adapter, its config, report and recipe, into the (complete) temp folder."""
    from peft import LoraConfig

    factors, rows, warnings, full_modules = parts.factors, parts.rows, parts.warnings, parts.full_modules
    lora_ranks, embed_lora = parts.lora_ranks, parts.embed_lora
    o, dev = plan.options, torch.device(plan.options.device)
    out_dtype = getattr(torch, plan.dtype)
    lora_bias: dict[str, torch.Tensor] = {}
    lora_names = set(lora_ranks)
    for name in plan.others:
        if not plan.base.tensors[name].is_float:
            if not torch.equal(plan.base.get(name), plan.tuned.get(name)):
                warnings.append(f"non-float tensor {name} differs between base and tuned; not in the adapter")
            continue
        delta = module_delta(plan.base, plan.tuned, name, dev)
        if not bool(delta.any()):
            continue
        owner, _, param = name.rpartition(".")
        saved = o.other == "full"
        if saved and owner in lora_names and param == "bias":
            lora_bias[owner] = delta.to("cpu", out_dtype)
        elif saved:
            full_modules.append(owner)
        shape = tuple(delta.shape) if delta.ndim == 2 else (delta.numel(), 1)
        rows.append(ModuleRow(name, "tensor", shape, "full" if saved else "reported", delta_norm=float(delta.norm())))
        del delta
    if not lora_ranks:
        raise CheckpointError(
            f"{plan.tuned.name}: no selected module differs from {plan.base.name}; nothing to extract as LoRA"
        )
    changed_reported = [r.module for r in rows if r.status == "reported"]
    if changed_reported:
        warnings.append(
            f"{len(changed_reported)} changed tensor(s) outside the LoRA targets are not in the adapter "
            f"(e.g. {', '.join(changed_reported[:3])}); pass --other full to save their modules whole"
        )
    if lora_bias:
        _add_lora_biases(plan, lora_ranks, lora_bias, factors, embed_lora)

    full_modules = list(dict.fromkeys(full_modules))
    config = _lora_config(plan, lora_ranks, embed_lora, full_modules, bool(lora_bias))
    full_tensors = _full_tensors(plan, full_modules)
    specs = [TensorSpec(k, tuple(v.shape), plan.dtype) for k, v in factors.items()]
    specs += [TensorSpec(k, plan.tuned.tensors[n].shape, plan.dtype) for k, n in full_tensors.items()]
    summary = summarize(rows)
    writer = CheckpointWriter(tmp, specs, max_shard_size=1 << 62)
    try:
        for spec in writer.order:
            t = factors.pop(spec.name, None)
            if t is None:
                t = plan.tuned.get(full_tensors[spec.name]).to(out_dtype)
            writer.write(spec.name, t)
        files = writer.finish()
    except BaseException:
        writer.abort()
        raise
    os.replace(tmp / files[0], tmp / ADAPTER_WEIGHTS)
    LoraConfig(**config).save_pretrained(str(tmp))
    summary.update(
        adapter_bytes=(tmp / ADAPTER_WEIGHTS).stat().st_size,
        seconds=round(time.perf_counter() - start, 3),
        peak_rss_bytes=peak_rss_bytes(),
    )
    report = {"summary": summary, "modules": [r.to_dict() for r in rows], "warnings": warnings}
    (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    _write_provenance(plan, tmp, summary)
    if finish is not None:
        finish(tmp)
    return ExtractResult(
        Path(out).expanduser().resolve(), rows, summary, [ADAPTER_WEIGHTS, "adapter_config.json"], warnings
    )


def _add_lora_biases(
    plan: ExtractPlan, ranks: dict[str, int], biases: dict[str, torch.Tensor], factors: dict, embed_lora: list[str]
) -> None:
    """peft's `lora_bias` puts Δb on lora_B of every target: all targets then need a bias (and none an embedding)."""
    if embed_lora:
        raise CheckpointError("peft cannot combine lora_bias (changed biases, --other full) with --embeddings lora")
    lacking = [m for m in ranks if f"{m}.bias" not in plan.base.tensors]
    if lacking:
        raise CheckpointError(
            f"changed biases of LoRA targets need peft's lora_bias, but {lacking[0]} has no bias; "
            "use --other report, or --modules without the bias-free modules"
        )
    for m in ranks:
        bias = biases.get(m)
        if bias is None:
            bias = torch.zeros(plan.base.tensors[f"{m}.bias"].shape, dtype=getattr(torch, plan.dtype))
        factors[PEFT_PREFIX + m + ".lora_B.bias"] = bias


def _lora_config(
    plan: ExtractPlan, ranks: dict[str, int], embed_lora: list[str], full_modules: list[str], lora_bias: bool
) -> dict[str, Any]:
    """LoraConfig kwargs: scaling 1 everywhere (alpha = r), the usual rank as `r`, others in the patterns."""
    from modelops.lora.targets import peft_target_names

    values = list(ranks.values())
    r = max(set(values), key=lambda v: (values.count(v), v))
    pattern = {name: k for name, k in ranks.items() if k != r}
    conv = any(plan.modules.modules[n].kind == "conv1d" for n in ranks)
    archs = plan.base.architectures or []
    targets = peft_target_names(plan.modules, list(ranks))
    to_save = list(full_modules)
    # A tied output layer is named beside its embedding (peft matches tied layers by these names) and
    # ensure_weight_tying makes peft tie its LoRA / saved copy to the embedding's instead of the base weight.
    tied_targets = [t for n in embed_lora if (t := _tied_output(plan, plan.modules.modules[n]))]
    tied_saved = [t for n in full_modules if (t := _tied_output(plan, plan.modules.modules.get(n)))]
    targets += tied_targets
    to_save += tied_saved
    return {
        "r": r,
        "lora_alpha": r,
        "target_modules": targets,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "modules_to_save": to_save or None,
        "fan_in_fan_out": conv,
        "lora_bias": lora_bias,
        "lora_dropout": 0.0,
        "bias": "none",
        "inference_mode": True,
        "ensure_weight_tying": bool(tied_targets or tied_saved),
        "task_type": "CAUSAL_LM" if any(a.endswith("ForCausalLM") for a in archs) else None,
        "base_model_name_or_path": public_spec(plan.base.source.spec),
    }


def _full_tensors(plan: ExtractPlan, modules: list[str]) -> dict[str, str]:
    """Adapter key -> tuned tensor, for every tensor directly owned by a `modules_to_save` module (peft saves the
    module's whole state); a tied output layer gets its own copy of the embedding, as peft saves it."""
    keys: dict[str, str] = {}
    for mod in modules:
        for n in plan.tuned.tensors:
            if n.rpartition(".")[0] == mod:
                keys[PEFT_PREFIX + n] = n
        tied = _tied_output(plan, plan.modules.modules.get(mod))
        if tied is not None:
            keys[PEFT_PREFIX + tied + ".weight"] = f"{mod}.weight"
    return keys


def _tied_output(plan: ExtractPlan, m: Module | None) -> str | None:
    """The output module sharing `m`'s weight tensor, if the checkpoint ties them."""
    if m is None or m.kind != "embedding":
        return None
    return next((o.name for o in plan.modules.modules.values() if o.tied and o.weight == m.weight), None)


def _dominant_float_dtype(ck: Checkpoint) -> str:
    sizes: dict[str, int] = {}
    for t in ck.tensors.values():
        if t.is_float:
            sizes[t.dtype] = sizes.get(t.dtype, 0) + t.nbytes
    return max(sizes, key=sizes.__getitem__) if sizes else "float32"


def _check_same_layout(base: Checkpoint, tuned: Checkpoint) -> None:
    ab, at = base.architectures, tuned.architectures
    if ab and at and ab != at:
        raise CheckpointError(
            f"architectures differ: {base.name} is {ab}, {tuned.name} is {at}; use the tuned model's own base"
        )
    only_b, only_t = sorted(set(base.tensors) - set(tuned.tensors)), sorted(set(tuned.tensors) - set(base.tensors))
    if only_b or only_t:
        which = f"{only_b[0]!r} only in {base.name}" if only_b else f"{only_t[0]!r} only in {tuned.name}"
        raise CheckpointError(f"tensor names differ ({which}); base and tuned must be the same architecture")
    for name, info in base.tensors.items():
        other = tuned.tensors[name]
        if info.shape != other.shape:
            raise CheckpointError(
                f"{name}: shape {list(info.shape)} in {base.name} but {list(other.shape)} in {tuned.name}; "
                "the tuned model must be a fine-tune of this base (same shapes, vocabulary not resized)"
            )


def _write_provenance(plan: ExtractPlan, folder: Path, summary: dict[str, Any]) -> None:
    o = plan.options
    params: dict[str, Any] = {"modules": o.modules, "embeddings": o.embeddings, "other": o.other}
    params.update({"rank": o.rank} if o.rank is not None else {"energy": o.energy, "max_rank": o.max_rank})
    recipe = {
        "base_model": plan.base.source.spec,
        "models": [{"model": plan.tuned.source.spec}],
        "parameters": params,
        "dtype": plan.dtype,
    }
    inputs = [input_record(plan.base, "base"), input_record(plan.tuned, "tuned")]
    metrics = {k: summary[k] for k in ("modules", "mean_rel_error", "overall_rel_error", "energy_kept") if k in summary}
    write_recipe_file(folder, recipe, inputs, operation="extract-lora", metrics=metrics)
