"""One module's part of a LoRA extraction: its factors (or why it has none) and its report row, computed on its own
and saved as soon as it is done, so an interrupted extraction keeps every module it finished."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from modelops.checkpoint import Checkpoint
from modelops.lora.report import ModuleRow
from modelops.lora.svd import factorize, relative_error
from modelops.lora.targets import PEFT_PREFIX, Module

_EXACT = {"auto": None, "exact": True, "randomized": False}


@dataclass
class ModuleOutcome:
    """What the adapter gets from one module: factors under their PEFT keys, and how it is carried."""

    row: ModuleRow
    factors: dict[str, torch.Tensor] = field(default_factory=dict)
    rank: int | None = None  # a LoRA module's rank
    embedding_lora: bool = False  # factored as peft's lora_embedding_A/B
    full: bool = False  # saved whole (modules_to_save)
    warning: str | None = None


@dataclass
class Collected:
    """Every module's outcome so far, sorted into what the adapter and its config need."""

    factors: dict[str, torch.Tensor] = field(default_factory=dict)  # adapter key -> tensor (small)
    rows: list[ModuleRow] = field(default_factory=list)
    lora_ranks: dict[str, int] = field(default_factory=dict)
    embed_lora: list[str] = field(default_factory=list)
    full_modules: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, name: str, outcome: ModuleOutcome) -> None:
        self.rows.append(outcome.row)
        self.factors.update(outcome.factors)
        if outcome.rank is not None:
            self.lora_ranks[name] = outcome.rank
        if outcome.embedding_lora:
            self.embed_lora.append(name)
        if outcome.full:
            self.full_modules.append(name)
        if outcome.warning:
            self.warnings.append(outcome.warning)


def delta(base: Checkpoint, tuned: Checkpoint, name: str, dev: torch.device) -> torch.Tensor:
    """ΔW in float32 on the compute device, computed in place (one extra buffer, not two)."""
    out = tuned.get(name).to(dev).float()  # copy, then upcast on the device: half the bytes moved from bf16
    return out.sub_(base.get(name).to(dev).float())


def full_row(m: Module, change: torch.Tensor, status: str = "full") -> ModuleRow:
    return ModuleRow(m.name, m.kind, m.out_in, status, delta_norm=float(change.norm()))


def module_outcome(
    base: Checkpoint, tuned: Checkpoint, m: Module, options: Any, *, embedding: bool, tied: str | None,
    dev: torch.device, dtype: torch.dtype,
) -> ModuleOutcome:  # fmt: skip
    """Factorise module `m` (an embedding/output module when `embedding`), or say why it is not factorised."""
    o = options
    change = delta(base, tuned, m.weight, dev)
    if m.kind == "conv1d":
        change = change.T  # Conv1D stores (in, out); peft's fan_in_fan_out delta is (B·A)ᵀ
    if not bool(change.any()):
        return ModuleOutcome(ModuleRow(m.name, m.kind, m.out_in, "unchanged"))
    if embedding and o.embeddings == "full":
        return ModuleOutcome(full_row(m, change), full=True)
    if embedding and o.embeddings == "skip":
        warning = f"{m.name} changed (‖Δ‖={float(change.norm()):.3g}) and is NOT in the adapter (--embeddings skip)"
        return ModuleOutcome(full_row(m, change, status="skipped"), warning=warning)
    k = min(change.shape)
    f = factorize(change, min(o.rank, k) if o.rank is not None else None, energy=o.energy,
                  max_rank=o.max_rank, niter=o.niter, exact=_EXACT[o.svd])  # fmt: skip
    err = relative_error(change, f.B, f.A)
    row = ModuleRow(m.name, m.kind, m.out_in, "lora", f.rank, f.energy, err, f.delta_norm, f.method)
    B, A = f.B.to("cpu", dtype), f.A.to("cpu", dtype)
    key = PEFT_PREFIX + m.name
    out = ModuleOutcome(row, rank=f.rank)
    if m.kind == "embedding":  # peft: ΔE = (lora_embedding_B @ lora_embedding_A)ᵀ, A (r×num), B (dim×r)
        out.factors[key + ".lora_embedding_A"], out.factors[key + ".lora_embedding_B"] = (
            B.T.contiguous(),
            A.T.contiguous(),
        )
        out.embedding_lora = True
        if tied is not None:  # peft ties the output LoRA to it (A = B_eᵀ, B = A_eᵀ) and expects its keys too
            out.factors[PEFT_PREFIX + tied + ".lora_A.weight"] = A
            out.factors[PEFT_PREFIX + tied + ".lora_B.weight"] = B
    else:
        out.factors[key + ".lora_A.weight"], out.factors[key + ".lora_B.weight"] = A, B
    return out


def save_outcome(path: Path, outcome: ModuleOutcome) -> None:
    """The outcome as one small safetensors file: the factors, and the rest as JSON metadata."""
    meta = {k: v for k, v in asdict(outcome).items() if k not in ("factors", "row")}
    meta["row"] = outcome.row.to_dict()
    tensors = {k: v.contiguous() for k, v in outcome.factors.items()}
    save_file(tensors, str(path), metadata={"outcome": json.dumps(meta)})


def load_outcome(path: Path) -> ModuleOutcome:
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {})["outcome"])
        factors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    row = meta.pop("row")
    row["shape"] = tuple(row["shape"])
    return ModuleOutcome(ModuleRow(**row), factors, **meta)
