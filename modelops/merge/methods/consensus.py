"""Task-vector merges that weigh entries by agreement across models: SCE (FuseChat) and RAM / RAM+."""

from __future__ import annotations

import torch

from modelops.merge.methods.task_vectors import sign_agreement, task_vectors
from modelops.merge.registry import INT8_MASK, Param, TensorJob, register

RAM = ("Reinforced Agent Merging (arXiv 2601.13572)", "https://arxiv.org/abs/2601.13572")


def sce(base: torch.Tensor, tensors: list[torch.Tensor], *, select_topk: float = 1.0) -> torch.Tensor:
    """SCE: Select the top `select_topk` entries by variance across models, Calculate per-model weights from the
    mean squared task vector, Erase entries against the elected sign, then the weighted mean (arXiv 2408.07990)."""
    if not tensors:
        return base.float()
    tvs = torch.stack(task_vectors(base, tensors))  # (M, *shape)
    if select_topk < 1:
        tvs = tvs * _top_variance_mask(tvs, select_topk).unsqueeze(0)
    erase = sign_agreement(tvs)
    energy = (tvs**2).mean(dim=list(range(1, tvs.dim())))
    total = float(energy.sum())
    weights = torch.full_like(energy, 1.0 / energy.numel()) if abs(total) < 1e-6 else energy / total
    weights = weights.view(-1, *([1] * (tvs.dim() - 1))) * erase
    merged = (tvs * weights).sum(dim=0) / weights.sum(dim=0).clamp(min=1e-6)
    return merged.add_(base)


def _top_variance_mask(tvs: torch.Tensor, fraction: float) -> torch.Tensor:
    """1 on the int(fraction · #nonzero-variance) entries whose variance across models is largest."""
    if fraction <= 0:
        return torch.zeros(tvs.shape[1:], dtype=tvs.dtype, device=tvs.device)
    var = torch.var(tvs, dim=0, unbiased=False)
    k = int(int(torch.count_nonzero(var)) * fraction)
    mask = torch.zeros(var.numel(), dtype=tvs.dtype, device=tvs.device)
    if k > 0:
        mask[torch.topk(var.abs().reshape(-1), k=k).indices] = 1
    return mask.view(var.shape)


def ram(
    base: torch.Tensor,
    tensors: list[torch.Tensor],
    *,
    epsilon: float = 1e-5,
    r: float | None = None,
    alpha: float = 0.2,
) -> torch.Tensor:
    """RAM: an entry changed (|δ| > ε) by one model keeps that model's δ; one changed by several gets their mean.

    RAM+ (`r` given, tensor-local): each model's unique entries are scaled by 1 + r·clamp(shared/unique, 0, α),
    where shared/unique count that model's changed entries that others also / do not change.
    """
    if not tensors:
        return base.float()
    tv = torch.stack(task_vectors(base, tensors)).reshape(len(tensors), -1)  # (M, n)
    changed = tv.abs() > epsilon
    counts = changed.sum(dim=0, keepdim=True)
    overlap, unique = counts > 1, counts == 1
    tv = tv * changed
    gain = torch.ones(len(tensors), 1, dtype=tv.dtype, device=tv.device)
    if r is not None:
        shared_n = (changed & overlap).sum(dim=1)
        unique_n = (changed & unique).sum(dim=1)
        gain = (1 + r * (shared_n / unique_n.clamp(min=epsilon)).clamp(min=0, max=alpha)).unsqueeze(-1)
    merged = (tv * unique * gain + tv * overlap / counts.clamp(min=1)).sum(dim=0)
    return merged.reshape(base.shape).add_(base)


@register(
    "sce",
    base="required",
    params=(Param("select_topk", default=1.0, low=0.0, high=1.0), INT8_MASK),
    summary="select high-variance entries, weight models by task-vector energy, erase sign conflicts",
    paper="Wan et al., FuseChat (SCE)",
    paper_url="https://arxiv.org/abs/2408.07990",
)
def _sce(job: TensorJob) -> torch.Tensor:
    assert job.base is not None
    return sce(job.base, job.tensors, select_topk=job.params["select_topk"])


@register(
    "ram",
    base="required",
    elementwise=True,
    params=(Param("epsilon", default=1e-5, low=0.0),),
    summary="entries changed by one model keep its delta; entries changed by several take the mean",
    paper=RAM[0],
    paper_url=RAM[1],
)
def _ram(job: TensorJob) -> torch.Tensor:
    assert job.base is not None
    return ram(job.base, job.tensors, epsilon=job.params["epsilon"])


@register(
    "ramplus_tl",
    base="required",
    params=(Param("r", default=0.1), Param("alpha", default=0.2), Param("epsilon", default=1e-5, low=0.0)),
    summary="RAM with each model's unique entries scaled up by its share of overlapping entries (per tensor)",
    paper=RAM[0],
    paper_url=RAM[1],
)
def _ramplus_tl(job: TensorJob) -> torch.Tensor:
    assert job.base is not None
    p = job.params
    return ram(job.base, job.tensors, epsilon=p["epsilon"], r=p["r"], alpha=p["alpha"])
