"""Fusion rules: pure functions over (batch, vocab) float32 logits or log-probs.

Every rule is a linear combination of the models' log-probs, log p̃ = Σ_m c_m ℓ_m (− log Z), so a rule is a
coefficient vector over [large, small base, expert_1, …]. Raw logits may be combined instead of log-probs
when every component spans the same vocabulary: the per-row constants only shift the fused row. DLF's per-step
choice of that vector is its own module, `dlf.py`.
"""

from __future__ import annotations

import torch

from modelops.decode.dlf import DlfSearch

LARGE, BASE = 0, 1  # component order: large, small base, experts...


def eft_coefficients(weight: float = 1.0, gamma: float = 1.0) -> list[float]:
    """EFT / up-scaling with both knobs: ℓ_S− + γ(ℓ_L − ℓ_S−) + w(ℓ_S+ − ℓ_S−).

    γ = 1 gives ℓ_L + w(ℓ_S+ − ℓ_S−) (up-scaling; proxy-tuning with w = α); w = 1 gives the "amplified"
    ℓ_S+ + γ(ℓ_L − ℓ_S−). Order: [large, small base, expert].
    """
    return [gamma, 1.0 - gamma - weight, weight]


def fixed_coefficients(weights: list[float]) -> list[float]:
    """ℓ_L + Σ_i w_i (ℓ_i − ℓ_S−): several experts with fixed weights (behaviour interpolation)."""
    return [1.0, -float(sum(weights)), *[float(w) for w in weights]]


def combine(components: list[torch.Tensor], coefficients: torch.Tensor | list[float]) -> torch.Tensor:
    """Σ_m c_m · x_m over (B, V) components; coefficients are (M,) or per-row (B, M).

    A zero coefficient skips its component, so −inf entries of an unused model never turn into NaN.
    """
    if not isinstance(coefficients, torch.Tensor) or coefficients.dim() == 1:
        terms = [(x, float(c)) for x, c in zip(components, coefficients, strict=True) if float(c) != 0.0]
        if not terms:
            return torch.zeros_like(components[0])
        (first, c0), rest = terms[0], terms[1:]
        if c0 == 1.0 and rest:  # x_0 + c_1 x_1 in one pass that also makes the output
            (second, c1), rest = rest[0], rest[1:]
            fused = torch.add(first, second, alpha=c1)
        else:
            fused = first.clone() if c0 == 1.0 else first * c0
        for x, c in rest:
            fused.add_(x, alpha=c)  # in place, no temporary per component
        return fused
    coeffs = coefficients.to(components[0].device, torch.float32)  # (B, M): one weight vector per row
    out = torch.zeros_like(components[0])
    for m, x in enumerate(components):
        c = coeffs[:, m : m + 1]
        if bool(c.ne(0).any()):  # rows whose coefficient is zero must not see −inf · 0
            out += torch.where(c == 0, torch.zeros_like(x), x * c)
    return out


def fuse_components(
    components: list[torch.Tensor], coefficients: list[float] | None, dlf: DlfSearch | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[large, small base, experts…] → fused (B, V) logits, with fixed coefficients or DLF's per-row choice.

    Returns the chosen expert weights (B, T) for DLF, else None.
    """
    if dlf is None:
        assert coefficients is not None
        return combine(components, coefficients), None
    weights, _, fused = dlf(components[0], components[1], components[2:], fuse=True)
    assert fused is not None
    return fused, weights
