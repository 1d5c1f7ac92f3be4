"""Model Stock (Jang et al., arXiv 2403.19522): move from the base toward the models' average by a ratio t that
comes from how aligned the task vectors are."""

from __future__ import annotations

import math

import torch

from modelops.merge.methods.blocks import row_slices
from modelops.merge.registry import Param, TensorJob, register


def _interpolation(cos: torch.Tensor, n: int) -> torch.Tensor:
    """Model Stock's ratio t = N·cosθ / (1 + (N−1)·cosθ)."""
    return (n * cos) / (1 + (n - 1) * cos)


def _stock_rows(w0: torch.Tensor, ws: list[torch.Tensor]) -> torch.Tensor:
    """Per-row Model Stock on a (rows, cols) block: each row gets its own t."""
    w0 = w0.float()
    offsets = [w.float() - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            denom = (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-6)
            cosines.append(((a * b).sum(dim=-1) / denom).clamp(-1, 1))
    t = _interpolation(torch.stack(cosines).mean(dim=0).unsqueeze(-1), len(ws))
    mean = sum(w.float() for w in ws) / len(ws)
    return t * mean + (1 - t) * w0


def model_stock(base: torch.Tensor, tensors: list[torch.Tensor], *, filter_wise: bool = False) -> torch.Tensor:
    """t = N·cosθ / (1 + (N−1)·cosθ) with cosθ the mean pairwise cosine of the task vectors (whole tensor, or per
    row with `filter_wise`); result t·mean(θ_i) + (1−t)·θ_base. Needs at least two models besides the base.

    Works in row blocks: one pass accumulates the whole-tensor cosines and writes the models' mean into the output
    buffer, a second finishes each block with t; no float32 copy of a whole task vector is ever held.
    """
    n = len(tensors)
    if n < 2:
        raise ValueError(f"model_stock needs at least 2 models besides the base, got {n}")
    shape = base.shape
    rows = base.reshape(1, -1) if base.dim() <= 1 else base.reshape(base.shape[0], -1)
    ts = [t.reshape(rows.shape) for t in tensors]
    out = torch.empty(rows.shape, dtype=torch.float32, device=base.device)
    if filter_wise:
        for sl in row_slices(rows.shape[0], rows.shape[1]):
            out[sl] = _stock_rows(rows[sl], [t[sl] for t in ts])
        return out.reshape(shape)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    squares, dots = [0.0] * n, dict.fromkeys(pairs, 0.0)
    for sl in row_slices(rows.shape[0], rows.shape[1]):  # pass 1: cosine sums, and the models' mean into `out`
        b = rows[sl].float()
        xs = [t[sl].to(torch.float32, copy=True) for t in ts]  # each input block converted once
        mean = out[sl]
        mean.copy_(xs[0])
        for x in xs[1:]:
            mean.add_(x)
        mean.div_(n)
        offsets = [x.sub_(b).reshape(-1) for x in xs]
        for i, a in enumerate(offsets):
            squares[i] += float(torch.dot(a, a))  # float32 block sums, added up in float64
        for i, j in pairs:
            dots[(i, j)] += float(torch.dot(offsets[i], offsets[j]))
    cos = sum(
        max(-1.0, min(1.0, dots[(i, j)] / max(math.sqrt(squares[i] * squares[j]), 1e-6))) for i, j in pairs
    ) / len(pairs)
    t = _interpolation(torch.tensor(cos, dtype=torch.float32), n)
    for sl in row_slices(rows.shape[0], rows.shape[1]):  # pass 2: t·mean + (1 − t)·base
        out[sl].mul_(t).add_(rows[sl].to(torch.float32, copy=True).mul_(1 - t))
    return out.reshape(shape)


@register(
    "model_stock",
    base="required",
    params=(Param("filter_wise", default=False, kind=bool),),
    min_models=2,
    summary="base + t·(average − base), t from the mean pairwise cosine of the task vectors",
    paper="Jang et al., Model Stock",
    paper_url="https://arxiv.org/abs/2403.19522",
)
def _model_stock(job: TensorJob) -> torch.Tensor:
    assert job.base is not None
    return model_stock(job.base, job.tensors, filter_wise=job.params["filter_wise"])
