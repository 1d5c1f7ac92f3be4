"""Sparsifiers for task vectors (δ = θ − θ_base): which entries of δ a merge keeps.

Each takes a float32 δ and returns a new tensor; none modifies its input. Counts follow mergekit 0.1.5
(`k = int(density · n)`, entries ranked by a sort of |δ|), so the same config keeps the same entries. With
`rescale`, the kept entries are scaled so the L1 norm of δ is unchanged (mergekit's rescale for DARE and DELLA).
"""

from __future__ import annotations

import torch

RESCALE_EPS = 1e-7


def rescale_l1(delta: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Scale `kept` (a masked copy of `delta`) so that its L1 norm equals delta's; unchanged if either is ~0."""
    before, after = float(delta.abs().sum()), float(kept.abs().sum())
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return kept
    return kept.mul_(before / after)


def _finish(delta: torch.Tensor, mask: torch.Tensor, rescale: bool) -> torch.Tensor:
    kept = delta * mask
    return rescale_l1(delta, kept) if rescale else kept


def magnitude(delta: torch.Tensor, density: float, *, rescale: bool = False) -> torch.Tensor:
    """TIES trim: keep the int(density·n) entries of largest |δ| (Yadav et al., arXiv 2306.01708)."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    if density >= 1.0:
        return delta.clone()
    k = int(density * delta.numel())
    mask = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    mask[torch.argsort(delta.abs().reshape(-1), descending=True)[:k]] = 1
    return _finish(delta, mask.view(delta.shape), rescale)


def magnitude_outliers(delta: torch.Tensor, density: float, gamma: float, *, rescale: bool = False) -> torch.Tensor:
    """Model Breadcrumbs: drop the top `gamma` fraction of |δ| (outliers) and the smallest, keeping `density`.

    Davari & Belilovsky, arXiv 2312.06795. When density + gamma > 1 fewer outliers are dropped, so `density` is
    always what is kept. (mergekit 0.1.5 keeps nothing when int(gamma·n) is 0, e.g. 1-D tensors under 100 entries
    at gamma 0.01; here that case drops no outliers.)
    """
    if not 0.0 <= density <= 1.0 or not 0.0 <= gamma <= 1.0:
        raise ValueError(f"density and gamma must be in [0, 1], got density={density}, gamma={gamma}")
    if density >= 1.0:
        return delta.clone()
    n = delta.numel()
    keep = int(density * n)
    n_top = int(gamma * n)
    n_bottom = n - keep - n_top
    if n_bottom < 0:
        n_top, n_bottom = n_top + n_bottom, 0
    order = torch.argsort(delta.abs().reshape(-1))  # ascending
    mask = torch.zeros(n, dtype=delta.dtype, device=delta.device)
    mask[order[n_bottom : n - n_top]] = 1
    return _finish(delta, mask.view(delta.shape), rescale)


def bernoulli(delta: torch.Tensor, density: float, generator: torch.Generator, *, rescale: bool = True) -> torch.Tensor:
    """DARE: keep each entry with probability `density` (Yu et al., arXiv 2311.03099), seeded per tensor."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"DARE density must be in [0, 1], got {density}")
    if density >= 1.0:
        return delta.clone()
    probs = torch.full_like(delta, density)
    return _finish(delta, torch.bernoulli(probs, generator=generator), rescale)


def della_magprune(
    delta: torch.Tensor, density: float, epsilon: float, generator: torch.Generator, *, rescale: bool = True
) -> torch.Tensor:
    """DELLA's MagPrune: keep probabilities run linearly from density − ε to density + ε by rank of |δ| in each row.

    Deep et al., arXiv 2406.11617. Larger entries are more likely kept; a 1-D tensor is one row.
    """
    if density >= 1.0:
        return delta.clone()
    if density <= 0.0:
        return torch.zeros_like(delta)
    if density + epsilon >= 1.0 or density - epsilon <= 0.0:
        raise ValueError(f"DELLA needs density ± epsilon inside (0, 1); got density={density}, epsilon={epsilon}")
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=1), dim=1).to(delta.dtype) + 1  # 1 = smallest
    lo, hi = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    rank01 = ((ranks - lo) / (hi - lo)).clamp(0, 1).nan_to_num(0.0)  # a one-entry row: no rank
    probs = (density - epsilon) + rank01 * (2 * epsilon)
    mask = torch.bernoulli(probs, generator=generator).reshape(delta.shape)
    return _finish(delta, mask, rescale)
