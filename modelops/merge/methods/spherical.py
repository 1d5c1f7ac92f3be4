"""Interpolation on the sphere: SLERP, NuSLERP (row/column-wise, over task vectors), Multi-SLERP, Karcher mean."""

from __future__ import annotations

import math

import torch

from modelops.merge.registry import WEIGHT, Param, TensorJob, register

DOT_THRESHOLD = 0.9995  # SLERP falls back to linear interpolation when directions are this parallel
MERGEKIT_DOCS = "https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md"


def _unit(v: torch.Tensor, eps: float) -> torch.Tensor:
    n = v.norm()
    return v / n if n > eps else v


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, *, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of the whole tensor from `a` (t=0) to `b` (t=1); linear when nearly parallel."""
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"slerp t must be in [0, 1], got {t}")
    a, b = a.float(), b.float()
    dot = float((_unit(a, eps) * _unit(b, eps)).sum())
    if abs(dot) > DOT_THRESHOLD:
        return torch.lerp(a, b, t)
    theta = math.acos(max(-1.0, min(1.0, dot)))
    s0 = math.sin(theta - theta * t) / math.sin(theta)
    s1 = math.sin(theta * t) / math.sin(theta)
    return a.mul(s0).add_(b, alpha=s1)


def nuslerp(
    a: torch.Tensor, b: torch.Tensor, t: float, *, row_wise: bool = False, flatten: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """SLERP over the whole tensor (`flatten`, the default), or independently per vector along the last dimension,
    or along the first dimension with `row_wise` (mergekit's names and conventions)."""
    shape = a.shape
    a, b = a.float(), b.float()
    if flatten:
        a, b = a.reshape(-1), b.reshape(-1)
    elif row_wise:
        a, b = a.transpose(0, -1), b.transpose(0, -1)
    cos = ((a / a.norm(dim=-1, keepdim=True).clamp(min=1e-7)) * (b / b.norm(dim=-1, keepdim=True).clamp(min=1e-7))).sum(
        dim=-1, keepdim=True
    )
    theta = torch.acos(cos.clamp(-1, 1))
    sin = torch.sin(theta)
    out = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / sin
    out = torch.where(sin.abs() < eps, (1 - t) * a + t * b, out)
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


def multislerp(
    tensors: list[torch.Tensor],
    weights: list[float],
    base: torch.Tensor | None = None,
    *,
    normalize_weights: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Barycentric interpolation on the hypersphere: map to the tangent space at the weighted mean direction,
    average there, map back, and scale by the weighted mean norm (over task vectors when a base is given)."""
    if len(tensors) == 1:
        return tensors[0].float()
    x = torch.stack([t.float() for t in tensors])
    if base is not None:
        x = x - base.float()
    flat = x.reshape(x.shape[0], -1)
    w = torch.tensor(weights, dtype=torch.float32, device=x.device)
    if normalize_weights:
        w = w / w.sum()
    norms = flat.norm(dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = mean.norm()
    if mean_norm < eps:
        if x.shape[0] != 2:
            raise ValueError("multislerp: the weighted directions cancel out (antipodal inputs); change the weights")
        out = x[0] * w[0] + x[1] * w[1]
        return out + base.float() if base is not None else out
    mean = mean / mean_norm
    tangent = units - (units * mean).sum(-1, keepdim=True) * mean
    step = (tangent * w.view(-1, 1)).sum(0)
    step_norm = step.norm() + eps
    out = (mean * torch.cos(step_norm) + step * (torch.sin(step_norm) / step_norm)) * (norms.squeeze(-1) * w).sum()
    out = out.reshape(x.shape[1:])
    return out + base.float() if base is not None else out


def karcher(tensors: list[torch.Tensor], *, max_iter: int = 10, tol: float = 1e-5) -> torch.Tensor:
    """Equal-weight Riemannian (Karcher) mean of the directions, scaled by the mean norm (arXiv 2603.04972)."""
    xs = [t.float() for t in tensors]
    if len(xs) == 1:
        return xs[0]
    alphas = [1.0 / len(xs)] * len(xs)
    norms = [float(x.norm()) for x in xs]
    units = [x / n if n != 0.0 else torch.zeros_like(x) for x, n in zip(xs, norms, strict=True)]
    valid = [i for i, n in enumerate(norms) if n > tol]
    if not valid:
        return torch.zeros_like(xs[0])
    total = sum(alphas[i] for i in valid)
    weights = [alphas[i] / total for i in valid]
    vunits = [units[i] for i in valid]
    u = sum((a * v for a, v in zip(weights, vunits, strict=True)), torch.zeros_like(vunits[0]))
    norm_u = float(u.norm())
    u = vunits[0].clone() if norm_u < tol else u / norm_u
    for _ in range(max_iter):
        step = torch.zeros_like(u)
        for a, v in zip(weights, vunits, strict=True):
            dot = torch.clamp(torch.dot(u.reshape(-1), v.reshape(-1)), -1.0, 1.0)
            theta = torch.arccos(dot)
            if float(theta) < tol:
                continue
            step += a * (theta / torch.sin(theta)) * (v - dot * u)
        norm_step = step.norm()
        if float(norm_step) < tol:
            break
        u = torch.cos(norm_step) * u + torch.sin(norm_step) * (step / norm_step)
        norm_u = u.norm()
        if float(norm_u) > tol:
            u = u / norm_u
    return sum(a * n for a, n in zip(alphas, norms, strict=True)) * u


@register(
    "slerp",
    base="required",
    params=(Param("t", required=True, low=0.0, high=1.0),),
    max_models=1,
    summary="spherical interpolation from the base (t=0) to the other model (t=1)",
    paper="Shoemake, Animating rotation with quaternion curves (SLERP)",
    paper_url="https://en.wikipedia.org/wiki/Slerp",
)
def _slerp(job: TensorJob) -> torch.Tensor:
    assert job.base is not None
    return slerp(job.base, job.tensors[0], job.params["t"])


@register(
    "nuslerp",
    base="optional",
    params=(
        WEIGHT,
        Param("nuslerp_row_wise", default=False, kind=bool),
        Param("nuslerp_flatten", default=True, kind=bool),
    ),
    min_models=2,
    max_models=2,
    summary="SLERP of two models (or their task vectors from a base) with t = w2/(w1+w2), whole or per row/column",
    paper="mergekit NuSLERP",
    paper_url=MERGEKIT_DOCS,
)
def _nuslerp(job: TensorJob) -> torch.Tensor:
    w = job.per_model["weight"]
    t = 0.5 if abs(sum(w)) < 1e-6 else w[1] / sum(w)
    kw = {"row_wise": job.params["nuslerp_row_wise"], "flatten": job.params["nuslerp_flatten"]}
    a, b = job.tensors
    if job.base is None:
        return nuslerp(a, b, t, **kw)
    base = job.base.float()
    return nuslerp(a.float() - base, b.float() - base, t, **kw).add_(base)


@register(
    "multislerp",
    base="optional",
    params=(WEIGHT, Param("normalize_weights", default=True, kind=bool), Param("eps", default=1e-8, low=0.0)),
    summary="barycentric SLERP of any number of models (over task vectors when a base is given)",
    paper="Goddard, Multi-SLERP",
    paper_url="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
)
def _multislerp(job: TensorJob) -> torch.Tensor:
    return multislerp(
        job.tensors,
        job.per_model["weight"],
        job.base,
        normalize_weights=job.params["normalize_weights"],
        eps=job.params["eps"],
    )


@register(
    "karcher",
    base="optional",
    params=(Param("max_iter", default=10, kind=int, low=1), Param("tol", default=1e-5, low=0.0)),
    summary="equal-weight Riemannian (Karcher) mean of all inputs, the base included when given",
    paper="Karcher mean merging (arXiv 2603.04972)",
    paper_url="https://arxiv.org/abs/2603.04972",
)
def _karcher(job: TensorJob) -> torch.Tensor:
    inputs = [*job.tensors, *([job.base] if job.base is not None else [])]
    return karcher(inputs, max_iter=job.params["max_iter"], tol=job.params["tol"])
