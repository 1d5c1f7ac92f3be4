"""Low-rank factorisation of a weight delta: pure tensor functions, no I/O.

ΔW (out×in, float32) ≈ U_r S_r V_rᵀ, returned as LoRA factors B = U_r·S_r (out×r) and A = V_rᵀ (r×in), so that
peft's delta B·A times scaling 1 (lora_alpha = r) reproduces the truncation. When r is small against
min(out, in) a randomised SVD (Halko et al., via `torch.svd_lowrank`) with a few power iterations and some
oversampling gets within a hair of the exact truncation at a fraction of the cost; otherwise the exact SVD is
both cheaper and exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DEFAULT_NITER = 6  # power iterations: noisy fine-tuning spectra decay slowly, 2 (torch's default) is not enough
MIN_OVERSAMPLE = 8  # extra random directions (at least this, or r/4), dropped after the projected SVD
EXACT_FRACTION = 0.25  # rank + oversample above this share of min(out, in): exact SVD is as cheap and exact


@dataclass(frozen=True)
class Factors:
    """LoRA factors of one delta and what they leave out."""

    B: torch.Tensor  # (out, r)
    A: torch.Tensor  # (r, in)
    singular_values: torch.Tensor  # (q,) the leading singular values computed (q ≥ r)
    delta_norm: float  # ‖ΔW‖_F
    method: str  # "exact" | "randomized"

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def energy(self) -> float:
        """Share of ‖ΔW‖²_F kept: Σ_{i≤r} σ_i² / ‖ΔW‖²."""
        if self.delta_norm == 0:
            return 1.0
        kept = float(self.singular_values[: self.rank].double().pow(2).sum())
        return min(1.0, kept / self.delta_norm**2)


def use_exact_svd(shape: tuple[int, int], q: int) -> bool:
    """Exact SVD when the requested subspace is not small against the matrix."""
    return q > EXACT_FRACTION * min(shape)


def top_singular(
    delta: torch.Tensor, q: int, *, niter: int = DEFAULT_NITER, exact: bool | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """The leading q singular triplets of a 2-D float32 matrix: (U (m×q), S (q,), V (n×q), method).

    The randomised SVD draws its test matrix from a generator seeded with `seed` (torch's global one is left as it
    was), so the same matrix always gives the same adapter, whatever ran before in the process."""
    if delta.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(delta.shape)}")
    k = min(delta.shape)
    if not 1 <= q <= k:
        raise ValueError(f"q={q} must be in [1, min(out, in)={k}]")
    if exact if exact is not None else use_exact_svd(tuple(delta.shape), q):
        U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
        return U[:, :q], S[:q], Vh[:q].T, "exact"
    on_gpu = delta.device.type == "cuda"
    with torch.random.fork_rng(devices=[delta.device] if on_gpu else []):  # only the generators seeded here
        torch.random.default_generator.manual_seed(seed)
        if on_gpu:
            with torch.cuda.device(delta.device):
                torch.cuda.manual_seed(seed)
        U, S, V = torch.svd_lowrank(delta, q=q, niter=niter)
    return U, S, V, "randomized"


def rank_for_energy(singular_values: torch.Tensor, total_energy: float, energy: float, max_rank: int) -> int:
    """Smallest r ≤ max_rank with Σ_{i≤r} σ_i² ≥ energy·‖ΔW‖² (max_rank when even that keeps less).

    `singular_values` must hold at least the leading min(max_rank, len) values, sorted descending;
    `total_energy` is ‖ΔW‖²_F computed from the matrix itself (not from the truncated spectrum).
    """
    if not 0 < energy <= 1:
        raise ValueError(f"energy={energy} must be in (0, 1]")
    if max_rank < 1:
        raise ValueError(f"max_rank={max_rank} must be ≥ 1")
    s2 = singular_values[:max_rank].double().pow(2)
    if total_energy <= 0 or s2.numel() == 0:
        return 1
    cum = torch.cumsum(s2, 0) / total_energy
    hit = torch.nonzero(cum >= energy - 1e-12)
    return int(hit[0]) + 1 if hit.numel() else int(s2.numel())


def factorize(
    delta: torch.Tensor,
    rank: int | None = None,
    *,
    energy: float | None = None,
    max_rank: int | None = None,
    niter: int = DEFAULT_NITER,
    oversample: int | None = None,
    exact: bool | None = None,
) -> Factors:
    """Truncated SVD of `delta` (float32) at a fixed `rank`, or at the smallest rank keeping `energy` of ‖ΔW‖²
    (capped at `max_rank`). B carries the singular values; A has orthonormal rows."""
    delta = delta.float()
    k = min(delta.shape)
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank and energy")
    cap = rank if rank is not None else min(max_rank or k, k)
    if cap > k:
        raise ValueError(f"rank {cap} exceeds min(out, in) = {k} for a {tuple(delta.shape)} matrix")
    norm = float(torch.linalg.vector_norm(delta, dtype=torch.float64))
    q = min(cap + (oversample if oversample is not None else max(MIN_OVERSAMPLE, cap // 4)), k)
    U, S, V, method = top_singular(delta, q, niter=niter, exact=exact)
    r = rank if rank is not None else rank_for_energy(S, norm**2, energy, cap)  # type: ignore[arg-type]
    B = U[:, :r] * S[:r]  # (out, r)
    A = V[:, :r].T.contiguous()  # (r, in)
    return Factors(B=B.contiguous(), A=A, singular_values=S, delta_norm=norm, method=method)


def relative_error(delta: torch.Tensor, B: torch.Tensor, A: torch.Tensor) -> float:
    """‖ΔW − B·A‖_F / ‖ΔW‖_F computed from the residual itself (0 when ΔW = 0)."""
    delta = delta.float()
    norm = float(torch.linalg.vector_norm(delta, dtype=torch.float64))
    if norm == 0:
        return 0.0
    resid = torch.addmm(delta, B.float(), A.float(), alpha=-1.0)
    return float(torch.linalg.vector_norm(resid, dtype=torch.float64)) / norm


def overall_relative_error(errors: list[float], norms: list[float]) -> float:
    """√(Σ err_i²‖ΔW_i‖²) / √(Σ ‖ΔW_i‖²): the whole model's relative error from per-module ones."""
    total = sum(n * n for n in norms)
    if total == 0:
        return 0.0
    return math.sqrt(sum((e * n) ** 2 for e, n in zip(errors, norms, strict=True)) / total)
