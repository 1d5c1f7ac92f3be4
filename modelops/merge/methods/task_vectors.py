"""Task-vector merges: θ_base + λ · combine(sparsify(θ_i − θ_base)), as mergekit's generalized task arithmetic.

One pure function (`merge_task_vectors`) covers task arithmetic, TIES, DARE, Model Breadcrumbs and DELLA; the
methods differ only in the sparsifier, whether signs are elected, and their defaults for `normalize`/`rescale`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from modelops.merge.methods import sparsify
from modelops.merge.methods.blocks import as_rows, gather_rows, row_slices
from modelops.merge.registry import DENSITY, INT8_MASK, LAMBDA, WEIGHT, Param, TensorJob, register

# (what to keep: a mask, a magnitude cut applied block by block, or None for all; L1 scale or None)
Decision = tuple["torch.Tensor | sparsify.MagnitudeCut | None", "torch.Tensor | None"]
Keeper = Callable[["TaskVector", int], Decision]  # decides what one model's task vector keeps


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
    """θ_base + λ · Σ w_i δ_i [/ divisor]: with `consensus`, only entries whose w_i·δ_i has the elected sign count,
    and the divisor is the weight of those entries; without, the divisor is Σ w_i (mergekit's rule: ~0 → 1).

    Sums run model by model into three float32 buffers instead of stacking M weighted copies.
    """
    if len(deltas) != len(weights):
        raise ValueError(f"weight has {len(weights)} values for {len(deltas)} models")
    if not deltas:
        return base.to(torch.float32, copy=True)
    merged = deltas[0].to(torch.float32).mul(weights[0])
    for d, w in zip(deltas[1:], weights[1:], strict=True):
        merged.add_(d, alpha=w)
    if consensus:
        elected = torch.where(merged >= 0, 1.0, -1.0)  # the elected sign: + on an exact tie
        merged.zero_()
        divisor = torch.zeros_like(merged)
        aligned = torch.empty_like(merged)
        for d, w in zip(deltas, weights, strict=True):
            torch.mul(d, elected, out=aligned)  # w·δ·sign: > 0 exactly where w·δ agrees (zeros never do)
            if w != 1:
                aligned.mul_(w)
            divisor.add_(aligned > 0, alpha=w)
            merged.add_(aligned.clamp_(min=0))  # |w·δ| where it agrees: the same sums, up to the sign, bit for bit
        merged.mul_(elected)
        divisor.masked_fill_(divisor == 0, 1)
    else:
        total = float(sum(weights))
        divisor = torch.tensor(1.0 if abs(total) < 1e-8 else total)
    if normalize:
        merged.div_(divisor)
    if lambda_ != 1:
        merged.mul_(lambda_)
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


@dataclass(frozen=True)
class TaskVector:
    """One model's δ = θ − θ_base, computed on demand from the stored tensors: whole, or |δ| by row blocks."""

    model: torch.Tensor
    base: torch.Tensor

    def full(self) -> torch.Tensor:
        return self.model.to(torch.float32, copy=True).sub_(self.base)

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(model, base) as (rows, cols) views: 0-D and 1-D tensors are one row."""
        return as_rows(self.model), as_rows(self.base)

    def abs_blocks(self) -> Iterator[torch.Tensor]:
        model, base = self.rows()
        for sl in row_slices(base.shape[0], base.shape[1]):
            yield model[sl].to(torch.float32, copy=True).sub_(base[sl]).abs_()


def _kept(
    model: torch.Tensor,
    base: torch.Tensor,
    keep: torch.Tensor | sparsify.MagnitudeCut | None,
    scale: torch.Tensor | None,
) -> torch.Tensor:
    """(θ − θ_base)·keep·scale for one block, built in one fresh float32 buffer."""
    delta = model.to(torch.float32, copy=True).sub_(base)
    if isinstance(keep, sparsify.MagnitudeCut):
        keep = keep.keep(delta.abs())
    if keep is not None:
        delta.mul_(keep)
    return delta if scale is None else delta.mul_(scale)


def sparse_task_vector_blocks(
    base: torch.Tensor,
    tensors: list[torch.Tensor],
    keeper: Keeper | None,
    weights: list[float],
    *,
    consensus: bool,
    normalize: bool,
    lambda_: float = 1.0,
) -> Iterator[torch.Tensor]:
    """`merge_task_vectors` over sparsified task vectors, in bounded memory, as float32 row blocks of the result's
    (rows, cols) view, in order.

    What each model keeps (a magnitude cut, or a mask of one byte per entry, and an L1 scale) is decided first, one
    model at a time; then the task vectors are rebuilt and combined block of rows by block. No float32 copy of all
    M task vectors is ever held, and a caller that writes each block as it comes never holds the whole result.
    Every step is elementwise once the keeps are known, so the result equals the whole-tensor computation.
    """
    vectors = [TaskVector(t, base) for t in tensors]
    decided = [keeper(tv, i) if keeper is not None else (None, None) for i, tv in enumerate(vectors)]
    views = [tv.rows()[0] for tv in vectors]
    base_rows = as_rows(base)
    keeps = [m.reshape(base_rows.shape) if isinstance(m, torch.Tensor) else m for m, _ in decided]
    for sl in row_slices(base_rows.shape[0], base_rows.shape[1]):
        b = base_rows[sl].float()
        deltas = [
            _kept(t[sl], b, m[sl] if isinstance(m, torch.Tensor) else m, sc)
            for t, m, (_, sc) in zip(views, keeps, decided, strict=True)
        ]
        yield merge_task_vectors(b, deltas, weights, consensus=consensus, normalize=normalize, lambda_=lambda_)


def _gta_blocks(job: TensorJob, keeper: Keeper | None, consensus: bool) -> Iterator[torch.Tensor]:
    assert job.base is not None
    return sparse_task_vector_blocks(
        job.base,
        job.tensors,
        keeper,
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


def _whole(job: TensorJob, rule: Callable[[torch.Tensor, int], torch.Tensor | None]) -> Keeper:
    """A keeper that needs δ whole (ranks, random draws), with mergekit's L1 rescale when asked."""

    def keep(tv: TaskVector, i: int) -> Decision:
        delta = tv.full()
        mask = rule(delta, i)
        rescale = job.params["rescale"] and mask is not None
        return mask, sparsify.l1_scale(delta, mask) if rescale else None

    return keep


def _magnitude(job: TensorJob) -> Keeper:
    """TIES' top-k, found by a streamed selection over |δ| blocks: no whole float32 task vector is made, and
    without rescale no mask either (the cut is applied as the merge rebuilds each block)."""

    def keep(tv: TaskVector, i: int) -> Decision:
        shape, density = tuple(tv.rows()[1].shape), job.per_model["density"][i]
        if not job.params["rescale"]:
            return sparsify.magnitude_cut(tv.abs_blocks, tv.base.numel(), density), None
        mask = sparsify.magnitude_keep_blocks(tv.abs_blocks, shape, density)
        return mask, None if mask is None else sparsify.l1_scale(tv.full(), mask)

    return keep


def _outliers(job: TensorJob) -> Keeper:
    pm = job.per_model
    return _whole(job, lambda d, i: sparsify.outliers_keep(d, pm["density"][i], pm["gamma"][i]))


def _bernoulli(job: TensorJob) -> Keeper:
    return _whole(job, lambda d, i: sparsify.bernoulli_keep(d, job.per_model["density"][i], job.generator(i)))


def _della(job: TensorJob) -> Keeper:
    pm = job.per_model
    return _whole(job, lambda d, i: sparsify.della_keep(d, pm["density"][i], pm["epsilon"][i], job.generator(i)))


@dataclass(frozen=True)
class Variant:
    """One task-vector method: its sparsifier, whether signs are elected, and mergekit's defaults."""

    name: str
    sparsifier: Callable[[TensorJob], Keeper] | None
    consensus: bool
    normalize: bool
    rescale: bool
    paper: tuple[str, str]
    summary: str
    extra: tuple[Param, ...] = ()


VARIANTS = (
    Variant("task_arithmetic", None, False, False, False, TA, "base + λ Σ w_i (θ_i − base)"),
    Variant("ties", _magnitude, True, True, False, TIES, "trim task vectors to top-density magnitudes, elect signs, disjoint mean"),
    Variant("dare_linear", _bernoulli, False, False, True, DARE, "random drop of task-vector entries, L1 rescale, then task arithmetic (seeded)"),
    Variant("dare_ties", _bernoulli, True, False, True, DARE, "random drop of task-vector entries, L1 rescale, then TIES sign election (seeded)"),
    Variant("breadcrumbs", _outliers, False, False, False, BREADCRUMBS, "drop the largest (gamma) and smallest task-vector entries, keep density, then task arithmetic", (GAMMA,)),
    Variant("breadcrumbs_ties", _outliers, True, False, False, BREADCRUMBS, "Model Breadcrumbs sparsification with TIES sign election", (GAMMA,)),
    Variant("della", _della, True, True, True, DELLA, "rank-based random drop (density ± epsilon per row), L1 rescale, TIES sign election (seeded)", (EPSILON,)),
    Variant("della_linear", _della, False, False, True, DELLA, "rank-based random drop (density ± epsilon per row), L1 rescale, then task arithmetic (seeded)", (EPSILON,)),
)  # fmt: skip


def _method_blocks(v: Variant) -> Callable[[TensorJob], Iterator[torch.Tensor]]:
    return lambda job: _gta_blocks(job, v.sparsifier(job) if v.sparsifier else None, consensus=v.consensus)


def _method(v: Variant) -> Callable[[TensorJob], torch.Tensor]:
    blocks = _method_blocks(v)
    return lambda job: gather_rows(blocks(job), job.base.shape, job.base.device)


for _v in VARIANTS:
    register(
        _v.name,
        base="required",
        elementwise=_v.sparsifier is None,
        random=_v.sparsifier in (_bernoulli, _della),
        params=_params(_v.normalize, _v.rescale, *_v.extra),
        summary=_v.summary,
        paper=_v.paper[0],
        paper_url=_v.paper[1],
        blocks=_method_blocks(_v),
    )(_method(_v))
