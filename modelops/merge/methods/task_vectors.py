"""Task-vector merges: θ_base + λ · combine(sparsify(θ_i − θ_base)), as mergekit's generalized task arithmetic.

One pure function (`merge_task_vectors`) covers task arithmetic, TIES, DARE, Model Breadcrumbs and DELLA; the
methods differ only in the sparsifier, whether signs are elected, and their defaults for `normalize`/`rescale`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from modelops.merge.methods import sparsify
from modelops.merge.registry import DENSITY, INT8_MASK, LAMBDA, WEIGHT, Param, TensorJob, register

Sparsifier = Callable[[torch.Tensor, int], torch.Tensor]  # (δ, model index) -> sparsified δ


def task_vectors(base: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """θ_i − θ_base in float32, never aliasing an input."""
    return [t.to(torch.float32, copy=True).sub_(base) for t in tensors]


def sign_agreement(weighted: torch.Tensor) -> torch.Tensor:
    """TIES sign election over (M, ...) weighted deltas: the sign of the summed mass (0 counts as +), and a mask
    of the entries whose own sign equals it (zeros never agree)."""
    elected = torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0)
    return (torch.sign(weighted) == elected).to(weighted.dtype)


def merge_task_vectors(
    base: torch.Tensor,
    deltas: list[torch.Tensor],
    weights: list[float],
    *,
    consensus: bool,
    normalize: bool,
    lambda_: float = 1.0,
) -> torch.Tensor:
    """θ_base + λ · Σ w_i δ_i [/ divisor]: with `consensus`, only sign-agreeing entries count, and the divisor is
    the weight of those entries; without, the divisor is Σ w_i (mergekit's rule: ~0 divisors become 1)."""
    if len(deltas) != len(weights):
        raise ValueError(f"weight has {len(weights)} values for {len(deltas)} models")
    if not deltas:
        return base.to(torch.float32, copy=True)
    stacked = torch.stack(deltas)  # (M, *shape)
    w = torch.tensor(weights, dtype=torch.float32, device=base.device).view(-1, *([1] * base.dim()))
    weighted = stacked * w
    if consensus:
        mask = sign_agreement(weighted)
        merged = (weighted * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        merged = weighted.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        merged = merged / divisor
    if lambda_ != 1:
        merged = merged * lambda_
    return merged.add_(base)


def task_arithmetic(
    base: torch.Tensor,
    tensors: list[torch.Tensor],
    weights: list[float],
    *,
    lambda_: float = 1.0,
    normalize: bool = False,
) -> torch.Tensor:
    """θ_base + λ Σ w_i (θ_i − θ_base) (divided by Σ w_i when `normalize`)."""
    return merge_task_vectors(
        base, task_vectors(base, tensors), weights, consensus=False, normalize=normalize, lambda_=lambda_
    )


def ties(
    base: torch.Tensor,
    tensors: list[torch.Tensor],
    weights: list[float],
    densities: list[float],
    *,
    lambda_: float = 1.0,
    normalize: bool = True,
) -> torch.Tensor:
    """TIES: trim each task vector to its top-density magnitudes, elect signs, disjoint weighted mean, add."""
    deltas = [sparsify.magnitude(d, k) for d, k in zip(task_vectors(base, tensors), densities, strict=True)]
    return merge_task_vectors(base, deltas, weights, consensus=True, normalize=normalize, lambda_=lambda_)


def _gta(job: TensorJob, sparsifier: Sparsifier | None, consensus: bool) -> torch.Tensor:
    assert job.base is not None
    deltas = task_vectors(job.base, job.tensors)
    if sparsifier is not None:
        deltas = [sparsifier(d, i) for i, d in enumerate(deltas)]
    return merge_task_vectors(
        job.base,
        deltas,
        job.per_model["weight"],
        consensus=consensus,
        normalize=job.params["normalize"],
        lambda_=job.params["lambda"],
    )


def _params(normalize: bool, rescale: bool, *extra: Param) -> tuple[Param, ...]:
    return (
        WEIGHT,
        DENSITY,
        *extra,
        LAMBDA,
        INT8_MASK,
        Param("normalize", default=normalize, kind=bool),
        Param("rescale", default=rescale, kind=bool),
    )


TA = ("Ilharco et al., Editing Models with Task Arithmetic", "https://arxiv.org/abs/2212.04089")
TIES = ("Yadav et al., TIES-Merging", "https://arxiv.org/abs/2306.01708")
DARE = ("Yu et al., Language Models are Super Mario (DARE)", "https://arxiv.org/abs/2311.03099")
BREADCRUMBS = ("Davari & Belilovsky, Model Breadcrumbs", "https://arxiv.org/abs/2312.06795")
DELLA = ("Deep et al., DELLA-Merging", "https://arxiv.org/abs/2406.11617")
GAMMA = Param("gamma", default=0.01, per_model=True, low=0.0, high=1.0)
EPSILON = Param("epsilon", default=0.15, per_model=True, low=0.0, high=1.0)


def _magnitude(job: TensorJob) -> Sparsifier:
    return lambda d, i: sparsify.magnitude(d, job.per_model["density"][i], rescale=job.params["rescale"])


def _outliers(job: TensorJob) -> Sparsifier:
    pm = job.per_model
    return lambda d, i: sparsify.magnitude_outliers(d, pm["density"][i], pm["gamma"][i], rescale=job.params["rescale"])


def _bernoulli(job: TensorJob) -> Sparsifier:
    return lambda d, i: sparsify.bernoulli(
        d, job.per_model["density"][i], job.generator(i), rescale=job.params["rescale"]
    )


def _della(job: TensorJob) -> Sparsifier:
    pm = job.per_model
    return lambda d, i: sparsify.della_magprune(
        d, pm["density"][i], pm["epsilon"][i], job.generator(i), rescale=job.params["rescale"]
    )


@register(
    "task_arithmetic",
    elementwise=True,
    base="required",
    params=_params(False, False),
    summary="base + λ Σ w_i (θ_i − base)",
    paper=TA[0],
    paper_url=TA[1],
)
def _task_arithmetic(job: TensorJob) -> torch.Tensor:
    return _gta(job, None, consensus=False)


@register(
    "ties",
    base="required",
    params=_params(True, False),
    summary="trim task vectors to top-density magnitudes, elect signs, disjoint mean",
    paper=TIES[0],
    paper_url=TIES[1],
)
def _ties(job: TensorJob) -> torch.Tensor:
    return _gta(job, _magnitude(job), consensus=True)


@register(
    "dare_linear",
    base="required",
    random=True,
    params=_params(False, True),
    summary="random drop of task-vector entries, L1 rescale, then task arithmetic (seeded)",
    paper=DARE[0],
    paper_url=DARE[1],
)
def _dare_linear(job: TensorJob) -> torch.Tensor:
    return _gta(job, _bernoulli(job), consensus=False)


@register(
    "dare_ties",
    base="required",
    random=True,
    params=_params(False, True),
    summary="random drop of task-vector entries, L1 rescale, then TIES sign election (seeded)",
    paper=DARE[0],
    paper_url=DARE[1],
)
def _dare_ties(job: TensorJob) -> torch.Tensor:
    return _gta(job, _bernoulli(job), consensus=True)


@register(
    "breadcrumbs",
    base="required",
    params=_params(False, False, GAMMA),
    summary="drop the largest (gamma) and smallest task-vector entries, keep density, then task arithmetic",
    paper=BREADCRUMBS[0],
    paper_url=BREADCRUMBS[1],
)
def _breadcrumbs(job: TensorJob) -> torch.Tensor:
    return _gta(job, _outliers(job), consensus=False)


@register(
    "breadcrumbs_ties",
    base="required",
    params=_params(False, False, GAMMA),
    summary="Model Breadcrumbs sparsification with TIES sign election",
    paper=BREADCRUMBS[0],
    paper_url=BREADCRUMBS[1],
)
def _breadcrumbs_ties(job: TensorJob) -> torch.Tensor:
    return _gta(job, _outliers(job), consensus=True)


@register(
    "della",
    base="required",
    random=True,
    params=_params(True, True, EPSILON),
    summary="rank-based random drop (density ± epsilon per row), L1 rescale, TIES sign election (seeded)",
    paper=DELLA[0],
    paper_url=DELLA[1],
)
def _della_ties(job: TensorJob) -> torch.Tensor:
    return _gta(job, _della(job), consensus=True)


@register(
    "della_linear",
    base="required",
    random=True,
    params=_params(False, True, EPSILON),
    summary="rank-based random drop (density ± epsilon per row), L1 rescale, then task arithmetic (seeded)",
    paper=DELLA[0],
    paper_url=DELLA[1],
)
def _della_linear(job: TensorJob) -> torch.Tensor:
    return _gta(job, _della(job), consensus=False)
