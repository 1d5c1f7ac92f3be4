"""Two-model merges that take the other model's value only where it matters: NearSwap and Arcee Fusion."""

from __future__ import annotations

import torch

from modelops.merge.registry import Param, TensorJob, register

QUANTILE_SAMPLE = 1_000_000  # Arcee Fusion estimates quantiles from at most this many entries


def nearswap(base: torch.Tensor, other: torch.Tensor, t: float) -> torch.Tensor:
    """Interpolate toward `other` by w = clamp(t / |base − other|, 0, 1): entries that are already close swap in
    fully, distant ones barely move."""
    a, b = base.float(), other.float()
    w = (t / (a - b).abs().clamp(min=1e-6)).clamp(min=0, max=1)
    return w * b + (1 - w) * a


def _quantiles(values: torch.Tensor, qs: list[float], generator: torch.Generator | None) -> list[torch.Tensor]:
    """Quantiles by the lower index into the sorted values (a seeded sample of 1M entries for larger tensors)."""
    flat = values.reshape(-1)
    if flat.numel() > QUANTILE_SAMPLE:
        perm = torch.randperm(flat.numel(), generator=generator, device=flat.device)
        flat = flat[perm[:QUANTILE_SAMPLE]]
    ordered = torch.sort(flat).values
    return [ordered[int(q * (ordered.numel() - 1))] for q in qs]


def arcee_fusion(base: torch.Tensor, other: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add the other model's delta only where its importance |δ|·KL(softmax(other) ‖ softmax(base)) (per row of the
    last dimension) reaches median + 1.5·IQR of all importances."""
    a, b = base.float(), other.float()
    delta = b - a
    p = torch.softmax(b, dim=-1) + 1e-8
    q = torch.softmax(a, dim=-1) + 1e-8
    kl = (p * torch.log(p / q)).sum(dim=-1)
    importance = delta.abs() * kl.unsqueeze(-1)
    median, q1, q3 = _quantiles(importance, [0.5, 0.25, 0.75], generator)
    mask = (importance >= median + 1.5 * (q3 - q1)).to(delta.dtype)
    return a + delta * mask


@register(
    "nearswap",
    base="required",
    elementwise=True,
    params=(Param("t", required=True, low=0.0),),
    max_models=1,
    summary="take the other model's value where it is within ~t of the base: w = clamp(t/|base − other|, 0, 1)",
    paper="NearSwap (alchemonaut, QuartetAnemoi)",
    paper_url="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
)
def _nearswap(job: TensorJob) -> torch.Tensor:
    assert job.base is not None
    return nearswap(job.base, job.tensors[0], job.params["t"])


@register(
    "arcee_fusion",
    base="required",
    random=True,  # quantiles of tensors over 1M entries come from a seeded sample
    params=(),
    max_models=1,
    summary="keep the other model's changes only where their KL-weighted importance passes a dynamic threshold",
    paper="Arcee Fusion (mergekit)",
    paper_url="https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md",
)
def _arcee_fusion(job: TensorJob) -> torch.Tensor:
    assert job.base is not None
    return arcee_fusion(job.base, job.tensors[0], job.generator(0))
