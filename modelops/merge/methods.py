"""The merge math: pure tensor functions, no I/O.

Inputs may be stored in any float dtype (bf16 straight from disk); every function computes and returns float32,
upcasting inside fused in-place ops so no float32 copy of an input is made unless the math needs one. Arguments
follow one convention: `base` is the reference tensor (the SFT model for ExPO), `tensors` the other models'
tensors in recipe order, `weights`/`densities` one value per entry of `tensors`. Inputs are never modified.
"""

from __future__ import annotations

import math

import torch

DOT_THRESHOLD = 0.9995  # SLERP falls back to linear interpolation when directions are this parallel


def _delta(t: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """θ − θ_base in float32, never aliasing the input."""
    return t.to(torch.float32, copy=True).sub_(base)


def _check_lengths(tensors: list[torch.Tensor], **per_model: list[float]) -> None:
    if not tensors:
        raise ValueError("at least one model tensor is required")
    for key, values in per_model.items():
        if len(values) != len(tensors):
            raise ValueError(f"{key} has {len(values)} values for {len(tensors)} models")


def linear(tensors: list[torch.Tensor], weights: list[float], *, normalize: bool = True) -> torch.Tensor:
    """Σ w_i θ_i, divided by Σ w_i when `normalize` (a weighted average)."""
    _check_lengths(tensors, weights=weights)
    out = torch.zeros(tensors[0].shape, dtype=torch.float32, device=tensors[0].device)
    for t, w in zip(tensors, weights, strict=True):
        out.add_(t, alpha=w)
    if normalize:
        total = sum(weights)
        if abs(total) < 1e-12:
            raise ValueError(f"linear merge with normalize needs weights that do not sum to 0 (got {weights})")
        out.div_(total)
    return out


def expo(sft: torch.Tensor, dpo: torch.Tensor, alpha: float) -> torch.Tensor:
    """ExPO: θ_dpo + α(θ_dpo − θ_sft) = (1+α)θ_dpo − αθ_sft; α < 0 interpolates back toward the SFT."""
    out = dpo.to(torch.float32, copy=True)
    return out.mul_(1.0 + alpha).add_(sft, alpha=-alpha)


def task_arithmetic(
    base: torch.Tensor,
    tensors: list[torch.Tensor],
    weights: list[float],
    *,
    lambda_: float = 1.0,
    normalize: bool = False,
) -> torch.Tensor:
    """θ_base + λ Σ w_i (θ_i − θ_base) (divided by Σ w_i when `normalize`)."""
    _check_lengths(tensors, weights=weights)
    merged = torch.zeros(base.shape, dtype=torch.float32, device=base.device)
    for t, w in zip(tensors, weights, strict=True):
        merged.add_(t, alpha=w).sub_(base, alpha=w)
    if normalize:
        total = sum(weights)
        if abs(total) < 1e-12:
            raise ValueError(f"normalize needs weights that do not sum to 0 (got {weights})")
        merged.div_(total)
    return merged.mul_(lambda_).add_(base)


def magnitude_prune(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the `density` fraction of entries with the largest |value| (TIES trim); zero the rest."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    k = round(density * delta.numel())
    if k >= delta.numel():
        return delta
    if k == 0:
        return torch.zeros_like(delta)
    mags = delta.abs().reshape(-1)
    threshold = mags.kthvalue(mags.numel() - k + 1).values
    return delta * (delta.abs() >= threshold)


def random_drop(
    delta: torch.Tensor, density: float, generator: torch.Generator, *, rescale: bool = True
) -> torch.Tensor:
    """DARE: keep each entry with probability `density`, rescaled by 1/density so the expectation is unchanged."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"DARE density must be in (0, 1], got {density}")
    if density == 1.0:
        return delta
    keep = torch.rand(delta.shape, generator=generator, device=delta.device) < density
    out = delta * keep
    return out.div_(density) if rescale else out


def sign_consensus(deltas: torch.Tensor) -> torch.Tensor:
    """TIES sign election: per entry, the sign carrying more total mass; mask of entries that agree with it."""
    elected = torch.sign(deltas.sum(dim=0))
    return (torch.sign(deltas) == elected) & (deltas != 0)


def combine_deltas(
    base: torch.Tensor,
    deltas: list[torch.Tensor],
    weights: list[float],
    *,
    consensus: bool,
    lambda_: float = 1.0,
    normalize: bool = True,
) -> torch.Tensor:
    """The shared tail of TIES/DARE: weight the (sparsified) deltas, optionally keep sign-agreeing entries, add."""
    _check_lengths(deltas, weights=weights)
    w = torch.tensor(weights, dtype=torch.float32, device=base.device).view(-1, *([1] * base.dim()))
    stacked = torch.stack(deltas) * w  # (M, *shape)
    if consensus:
        mask = sign_consensus(stacked)
        stacked = stacked * mask
    merged = stacked.sum(dim=0)
    if normalize:
        present = mask if consensus else (torch.stack(deltas) != 0)
        divisor = (w * present).sum(dim=0)
        divisor = torch.where(divisor.abs() < 1e-8, torch.ones_like(divisor), divisor)
        merged = merged / divisor
    return merged.mul_(lambda_).add_(base)


def ties(
    base: torch.Tensor,
    tensors: list[torch.Tensor],
    weights: list[float],
    densities: list[float],
    *,
    lambda_: float = 1.0,
    normalize: bool = True,
) -> torch.Tensor:
    """TIES: trim each task vector to its top-density magnitudes, elect signs, disjoint (weighted) mean, add."""
    _check_lengths(tensors, weights=weights, densities=densities)
    deltas = [magnitude_prune(_delta(t, base), d) for t, d in zip(tensors, densities, strict=True)]
    return combine_deltas(base, deltas, weights, consensus=True, lambda_=lambda_, normalize=normalize)


def dare(
    base: torch.Tensor,
    tensors: list[torch.Tensor],
    weights: list[float],
    densities: list[float],
    generators: list[torch.Generator],
    *,
    consensus: bool,
    rescale: bool = True,
    lambda_: float = 1.0,
    normalize: bool = False,
) -> torch.Tensor:
    """DARE: random drop + rescale of each task vector, then task arithmetic (or TIES' sign election)."""
    _check_lengths(tensors, weights=weights, densities=densities)
    deltas = [
        random_drop(_delta(t, base), d, g, rescale=rescale)
        for t, d, g in zip(tensors, densities, generators, strict=True)
    ]
    return combine_deltas(base, deltas, weights, consensus=consensus, lambda_=lambda_, normalize=normalize)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, *, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of the whole tensor from `a` (t=0) to `b` (t=1); linear when nearly parallel."""
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"slerp t must be in [0, 1], got {t}")
    a, b = a.float(), b.float()
    na, nb = a.norm(), b.norm()
    if na < eps or nb < eps:
        return torch.lerp(a, b, t)
    dot = float(torch.dot((a / na).reshape(-1), (b / nb).reshape(-1)).clamp(-1.0, 1.0))
    if abs(dot) > DOT_THRESHOLD:
        return torch.lerp(a, b, t)
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    s0 = math.sin((1.0 - t) * theta) / sin_theta
    s1 = math.sin(t * theta) / sin_theta
    return a.mul(s0).add_(b, alpha=s1)
