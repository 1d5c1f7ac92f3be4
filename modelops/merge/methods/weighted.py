"""Weighted sums of whole models: linear (model soups), passthrough (one model, optionally scaled), and ExPO."""

from __future__ import annotations

import torch

from modelops.merge.registry import WEIGHT, Param, TensorJob, register

EXPO_PAPER = ("Zheng et al., Weak-to-Strong Extrapolation Expedites Alignment", "https://arxiv.org/abs/2404.16792")


def linear(tensors: list[torch.Tensor], weights: list[float], *, normalize: bool = True) -> torch.Tensor:
    """Σ w_i θ_i, divided by Σ w_i when `normalize` (a weighted average)."""
    if not tensors or len(weights) != len(tensors):
        raise ValueError(f"weight has {len(weights)} values for {len(tensors)} models")
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


def scaled(tensor: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Passthrough: the tensor as it is, times `scale` when one is given (e.g. to damp a duplicated layer)."""
    out = tensor.to(torch.float32, copy=True)
    return out if scale is None else out.mul_(scale)


@register(
    "linear",
    elementwise=True,
    base="none",
    params=(WEIGHT, Param("normalize", default=True, kind=bool)),
    reference="first",
    summary="weighted average of the models",
    paper="Wortsman et al., Model soups",
    paper_url="https://arxiv.org/abs/2203.05482",
)
def _linear(job: TensorJob) -> torch.Tensor:
    return linear(job.tensors, job.per_model["weight"], normalize=job.params["normalize"])


@register(
    "passthrough",
    elementwise=True,
    base="none",
    params=(Param("scale", default=None, per_model=True),),
    max_models=1,
    reference="first",
    summary="one model's tensors unchanged (optionally scaled); with slices, layer stacking",
    paper="mergekit passthrough (frankenmerges)",
    paper_url="https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md",
)
def _passthrough(job: TensorJob) -> torch.Tensor:
    return scaled(job.tensors[0], job.per_model["scale"][0])


@register(
    "expo",
    elementwise=True,
    base="required",
    params=(Param("alpha", required=True, low=-1.0),),
    max_models=1,
    reference="first",
    vocab_rows_from_reference=True,
    title="ExPO (model extrapolation)",
    roles=("sft", "dpo"),
    small_update=True,
    summary="θ_dpo + α(θ_dpo − θ_sft): extrapolate an aligned model away from its SFT starting point",
    paper=EXPO_PAPER[0],
    paper_url=EXPO_PAPER[1],
)
def _expo(job: TensorJob) -> torch.Tensor:
    assert job.base is not None
    return expo(job.base, job.tensors[0], job.params["alpha"])
