"""Independent float64 references for merge tests, written from the methods' definitions (not from modelops):
TIES with mergekit's counting, whole-tensor SLERP, Arcee Fusion, gradients over depth."""

from __future__ import annotations

import torch


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[1] == "layers" else None


def gradient(values: list[float], t: float) -> float:
    """A mergekit gradient at depth t, written out: linear between neighbouring entries."""
    x = t * (len(values) - 1)
    i = int(x)
    j = min(i + 1, len(values) - 1)
    return values[i] * (1 - (x - i)) + values[j] * (x - i)


def ties_by_hand(base: torch.Tensor, tensors: list, weights: list, densities: list, normalize: bool = True):
    """TIES in float64: keep int(density·n) largest |δ|, elect the sign of the weighted sum (+ on 0), mean."""
    b = base.double()
    deltas = []
    for t, d in zip(tensors, densities, strict=True):
        delta = (t.double() - b).reshape(-1)
        keep = torch.zeros_like(delta)
        if d >= 1:
            keep[:] = 1
        else:
            keep[torch.argsort(delta.abs(), descending=True)[: int(d * delta.numel())]] = 1
        deltas.append(delta * keep)
    w = torch.tensor(weights, dtype=torch.float64).view(-1, 1)
    stacked = torch.stack(deltas) * w
    sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0).double()
    agree = (torch.sign(stacked) == sign).double()
    merged = (stacked * agree).sum(0)
    if normalize:
        div = (w * agree).sum(0)
        div[div == 0] = 1
        merged = merged / div
    return b + merged.reshape(base.shape)


def slerp_by_hand(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    x, y = a.double(), b.double()
    cos = float((x / x.norm() * y / y.norm()).sum())
    if abs(cos) > 0.9995:
        return (1 - t) * x + t * y
    theta = torch.acos(torch.tensor(cos, dtype=torch.float64))
    return (torch.sin((1 - t) * theta) * x + torch.sin(t * theta) * y) / torch.sin(theta)


def arcee_by_hand(base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """In float32 like the method: its keep/drop decision compares an importance with a threshold made from the
    same values, and float64 moves entries that sit exactly on the threshold."""
    a, b = base.float(), other.float()
    p, q = torch.softmax(b, dim=-1) + 1e-8, torch.softmax(a, dim=-1) + 1e-8
    importance = (b - a).abs() * (p * (p / q).log()).sum(dim=-1, keepdim=True)
    ordered = importance.reshape(-1).sort().values
    at = lambda q_: ordered[int(q_ * (ordered.numel() - 1))]  # noqa: E731
    keep = importance >= at(0.5) + 1.5 * (at(0.75) - at(0.25))
    return (a + (b - a) * keep).double()
