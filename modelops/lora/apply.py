"""`apply-lora`: merge a PEFT LoRA adapter into its base, streamed: per tensor W + scale·B·A, written as it goes.

The result equals `PeftModel.merge_and_unload()` of the same pair: per-module ranks and alphas resolved with
peft's own pattern matching, rsLoRA scaling, GPT-2 Conv1D (stored transposed), embedding LoRA
(ΔE = (B·A)ᵀ), `lora_bias`, `modules_to_save` (the saved tensor replaces the base's), and a tied output layer
(its delta lands on the one stored embedding tensor).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modelops.checkpoint import (
    Checkpoint,
    CheckpointWriter,
    TensorSpec,
    check_output_location,
    copy_support_files,
    resolve_source,
)
from modelops.checkpoint.resume import ResumableOutput, plan_key
from modelops.errors import CheckpointError, SourceError
from modelops.lora.targets import PEFT_PREFIX, module_map
from modelops.provenance import MethodDescription, fingerprint_sha256, input_record, peak_rss_bytes, write_recipe_file

DESCRIPTION = MethodDescription(
    "apply-lora",
    "LoRA merged into the base",
    "W = W_base + (α/r)·B·A for every adapted layer",
    "Hu et al., LoRA: Low-Rank Adaptation of Large Language Models",
    "https://arxiv.org/abs/2106.09685",
)

logger = logging.getLogger(__name__)

_LORA_SUFFIXES = {
    ".lora_A.weight": "A",
    ".lora_B.weight": "B",
    ".lora_B.bias": "bias",
    ".lora_embedding_A": "emb_A",
    ".lora_embedding_B": "emb_B",
}


@dataclass
class Update:
    """One adapter contribution to a base tensor."""

    kind: str  # lora | embedding | conv1d | bias | replace
    keys: tuple[str, ...]  # adapter tensor names it reads
    scale: float = 1.0


@dataclass
class ApplyPlan:
    base: Checkpoint
    adapter: Checkpoint
    config: Any  # peft LoraConfig
    updates: dict[str, list[Update]]  # base tensor name -> contributions
    dtype: str | None
    warnings: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(self._spec(n).nbytes for n in self.base.tensors)

    def _spec(self, name: str) -> TensorSpec:
        info = self.base.tensors[name]
        dtype = self.dtype if (self.dtype and info.is_float) else info.dtype
        return TensorSpec(name, info.shape, dtype)

    def specs(self) -> list[TensorSpec]:
        return [self._spec(n) for n in self.base.tensors]

    def describe(self) -> str:
        c = self.config
        lines = [
            f"base       {self.base.name}",
            f"adapter    {self.adapter.name} (r={c.r}, lora_alpha={c.lora_alpha}, rslora={c.use_rslora})",
            f"tensors    {len(self.base.tensors)} written, {len(self.updates)} changed by the adapter",
        ]
        for name, ups in self.updates.items():
            what = ", ".join(f"{u.kind}" + (f"×{u.scale:g}" if u.kind != "replace" else "") for u in ups)
            lines.append(f"  {name:60s} {list(self.base.tensors[name].shape)!s:>14s} {what}")
        return "\n".join(lines)


@dataclass
class ApplyResult:
    out: Path
    tensors: int
    changed: int
    bytes_written: int
    seconds: float
    peak_rss: int
    files: list[str]


def plan_apply(
    base_spec: str, adapter_spec: str, *, out: Path | None = None, overwrite: bool = False, dtype: str | None = None
) -> ApplyPlan:
    """Read the adapter's config and headers, map every adapter tensor onto a base tensor, check every shape."""
    from peft import LoraConfig
    from peft.utils.other import get_pattern_key

    folder = resolve_source(adapter_spec).path
    if folder.is_file():
        folder = folder.parent
    if not (folder / "adapter_config.json").is_file():
        raise SourceError(f"{adapter_spec}: no adapter_config.json; pass a PEFT adapter folder (as saved by peft)")
    try:
        config = LoraConfig.from_pretrained(str(folder))
    except Exception as exc:
        raise CheckpointError(f"{folder / 'adapter_config.json'}: not a LoRA adapter config ({exc})") from None
    if getattr(config, "use_dora", False):
        raise CheckpointError(f"{adapter_spec}: DoRA adapters are not supported; merge them with peft")
    base = Checkpoint.open(base_spec)
    adapter = Checkpoint.open(folder)
    if out is not None:
        check_output_location(out, [base.folder, folder], overwrite=overwrite)
    mm = module_map(base)
    by_module: dict[str, dict[str, str]] = {}
    updates: dict[str, list[Update]] = {}
    for key in adapter.tensors:
        if not key.startswith(PEFT_PREFIX):
            raise CheckpointError(
                f"{adapter.name}: key {key!r} lacks the {PEFT_PREFIX!r} prefix (peft would silently ignore it)"
            )
        rest = key.removeprefix(PEFT_PREFIX)
        suffix = next((s for s in _LORA_SUFFIXES if rest.endswith(s)), None)
        if suffix is not None:
            by_module.setdefault(rest.removesuffix(suffix), {})[_LORA_SUFFIXES[suffix]] = key
            continue
        rest = rest.replace(".base_layer.", ".")  # peft's save_embedding_layers: the base weight of a target
        target = _tied_weight(mm, rest) or rest  # a tied output's saved copy lands on the one stored tensor
        if target not in base.tensors:  # a modules_to_save tensor replaces the base tensor of the same name
            raise CheckpointError(f"{adapter.name}: {key!r} matches no tensor of {base.name}; wrong base model?")
        _check_shape(adapter, key, base.tensors[target].shape, base)
        updates.setdefault(target, []).append(Update("replace", (key,)))
    embed_lora = {mm.modules[mod].weight for mod, parts in by_module.items() if "emb_A" in parts and mod in mm.modules}
    for mod, parts in by_module.items():
        m = mm.modules.get(mod)
        if m is None:
            raise CheckpointError(f"{adapter.name}: adapter targets module {mod!r}, which {base.name} does not have")
        if m.tied and config.ensure_weight_tying and m.weight in embed_lora and "emb_A" not in parts:
            continue  # peft ties this output LoRA to the embedding's: one delta, added once
        r_cfg = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), mod), config.r)
        alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), mod), config.lora_alpha)
        scale = alpha / math.sqrt(r_cfg) if config.use_rslora else alpha / r_cfg
        out_f, in_f = m.out_in
        if "emb_A" in parts:  # embedding LoRA: A (r × num_embeddings), B (dim × r)
            keys = (parts["emb_A"], parts["emb_B"])
            shapes = [(r_cfg, m.stored_shape[0]), (m.stored_shape[1], r_cfg)]
            kind = "embedding"
        else:
            if "A" not in parts or "B" not in parts:
                raise CheckpointError(f"{adapter.name}: module {mod!r} has only one of lora_A/lora_B")
            keys = (parts["A"], parts["B"])
            shapes = [(r_cfg, in_f), (out_f, r_cfg)]
            kind = "conv1d" if m.kind == "conv1d" else "lora"
        for k, shape in zip(keys, shapes, strict=True):
            _check_shape(adapter, k, shape, base, module=mod, stored=m.stored_shape)
        updates.setdefault(m.weight, []).append(Update(kind, keys, scale))
        if "bias" in parts:
            bias_name = f"{mod}.bias"
            if bias_name not in base.tensors:
                raise CheckpointError(f"{adapter.name}: lora_bias for {mod!r}, but {base.name} has no {bias_name}")
            _check_shape(adapter, parts["bias"], base.tensors[bias_name].shape, base)
            updates.setdefault(bias_name, []).append(Update("bias", (parts["bias"],), scale))
    if not updates:
        raise CheckpointError(f"{adapter.name}: the adapter holds no LoRA or saved-module tensors")
    return ApplyPlan(base, adapter, config, updates, dtype)


def _tied_weight(mm: Any, rest: str) -> str | None:
    """`lm_head.weight` of a tied output layer -> the stored embedding tensor's name."""
    mod, _, param = rest.rpartition(".")
    m = mm.modules.get(mod)
    return m.weight if m is not None and m.tied and param == "weight" else None


def _check_shape(
    adapter: Checkpoint,
    key: str,
    want: tuple[int, ...],
    base: Checkpoint,
    *,
    module: str | None = None,
    stored: tuple[int, ...] | None = None,
) -> None:
    have = adapter.tensors[key].shape
    if tuple(have) != tuple(want):
        where = f" (base {module} is {list(stored)})" if module and stored else ""
        raise CheckpointError(
            f"{adapter.name}: {key} is {list(have)} but {base.name} needs {list(want)}{where}; "
            "the adapter was made for a different base model or rank"
        )


def merged_tensor(plan: ApplyPlan, name: str, device: torch.device) -> torch.Tensor:
    """The base tensor with every adapter contribution added, in float32 (or as stored when unchanged)."""
    ups = plan.updates.get(name)
    if not ups:
        return plan.base.get(name)
    w: torch.Tensor | None = None
    for u in ups:
        if u.kind == "replace":
            w = plan.adapter.get(u.keys[0]).to(device).float()  # copy, then upcast there: half the bytes moved
    if w is None:
        w = plan.base.get(name).to(device).float()
    for u in ups:
        if u.kind == "replace":
            continue
        parts = [plan.adapter.get(k).to(device).float() for k in u.keys]
        if u.kind == "bias":
            w.add_(parts[0], alpha=u.scale)
        elif u.kind == "lora":  # W (out, in) += s·B·A
            w.addmm_(parts[1], parts[0], alpha=u.scale)
        elif u.kind == "conv1d":  # W stored (in, out) += s·(B·A)ᵀ = s·Aᵀ·Bᵀ
            w.addmm_(parts[0].T, parts[1].T, alpha=u.scale)
        else:  # embedding: E (num, dim) += s·(B_e·A_e)ᵀ = s·A_eᵀ·B_eᵀ
            w.addmm_(parts[0].T, parts[1].T, alpha=u.scale)
    return w


def run_apply(
    plan: ApplyPlan,
    out: Path,
    *,
    overwrite: bool = False,
    device: str = "cpu",
    shard_size: int | str = "5GB",
    progress: Callable[[str, int], None] | None = None,
    resume: bool = False,
    finish: Callable[[Path], None] | None = None,
) -> ApplyResult:
    """Write base + adapter into `out` atomically, tensor by tensor, with config, tokenizer and recipe; `finish`
    gets the complete folder just before it is published (the API writes the model card there).

    Finished shards are recorded as they close; `resume` keeps those of an interrupted run of the same inputs."""
    start = time.perf_counter()
    dev = torch.device(device)
    specs = plan.specs()
    parts = {
        "apply-lora": [fingerprint_sha256(plan.base), fingerprint_sha256(plan.adapter)],
        "dtype": plan.dtype,
    }
    output = ResumableOutput(out, plan_key=plan_key(parts, specs, shard_size), resume=resume, overwrite=overwrite)
    with output as tmp:
        writer = CheckpointWriter(tmp, specs, max_shard_size=shard_size, done=set(output.done), on_shard=output.record)
        try:
            for spec in writer.order:
                t = merged_tensor(plan, spec.name, dev)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise CheckpointError(f"NaN/inf in merged tensor {spec.name!r}; nothing was written")
                writer.write(spec.name, t.to("cpu", getattr(torch, spec.dtype)))
                del t
                if progress is not None:
                    progress(spec.name, spec.nbytes)
            files = writer.finish()
        except BaseException:
            writer.abort()
            raise
        floats = {s.dtype for s in specs if s.dtype.startswith(("float", "bfloat"))}
        copy_support_files(plan.base.folder, tmp, dtype=floats.pop() if len(floats) == 1 else None)
        _write_provenance(plan, tmp)
        if finish is not None:
            finish(tmp)
    plan.base.close()
    plan.adapter.close()
    return ApplyResult(
        out=Path(out).expanduser().resolve(),
        tensors=len(specs),
        changed=len(plan.updates),
        bytes_written=sum(s.nbytes for s in specs),
        seconds=time.perf_counter() - start,
        peak_rss=peak_rss_bytes(),
        files=files,
    )


def _write_provenance(plan: ApplyPlan, folder: Path) -> None:
    c = plan.config
    recipe: dict[str, Any] = {
        "base_model": plan.base.source.spec,
        "models": [{"model": plan.adapter.source.spec}],
        "parameters": {"r": c.r, "lora_alpha": c.lora_alpha, "use_rslora": bool(c.use_rslora)},
    }
    if plan.dtype:
        recipe["dtype"] = plan.dtype
    inputs = [input_record(plan.base, "base"), input_record(plan.adapter, "adapter")]
    metrics = {"tensors_changed": len(plan.updates), "tensors": len(plan.base.tensors)}
    write_recipe_file(folder, recipe, inputs, operation="apply-lora", metrics=metrics)
