"""Model Stock (Jang et al., arXiv 2403.19522): move from the base toward the models' average by a ratio t that
comes from how aligned the task vectors are."""

from __future__ import annotations

import torch

from modelops.merge.registry import Param, TensorJob, register


def model_stock(base: torch.Tensor, tensors: list[torch.Tensor], *, filter_wise: bool = False) -> torch.Tensor:
    """t = N·cosθ / (1 + (N−1)·cosθ) with cosθ the mean pairwise cosine of the task vectors (whole tensor, or per
    row with `filter_wise`); result t·mean(θ_i) + (1−t)·θ_base. Needs at least two models besides the base."""
    if len(tensors) < 2:
        raise ValueError(f"model_stock needs at least 2 models besides the base, got {len(tensors)}")
    shape = base.shape
    w0 = base.float()
    ws = [t.float() for t in tensors]
    if filter_wise:
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            denom = (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-6)
            cosines.append(((a * b).sum(dim=-1) / denom).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    t = (n * cos) / (1 + (n - 1) * cos)
    mean = sum(ws) / n
    return (t * mean + (1 - t) * w0).reshape(shape)


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
