"""Sparsifiers for task vectors (δ = θ − θ_base): which entries of δ a merge keeps, and by how much to rescale.

Each `*_keep` function looks at a whole float32 δ and returns a bool mask (None: keep everything); `l1_scale`
gives the factor that keeps δ's L1 norm (mergekit's rescale for DARE and DELLA). Masks are one byte per entry, so
a merge can decide what to keep for every model first and then combine the models in row blocks. Counts follow
mergekit 0.1.5 (`k = int(density · n)`), so the same config keeps the same entries. The `magnitude`,
`magnitude_outliers`, `bernoulli` and `della_magprune` functions return the sparsified δ itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

RESCALE_EPS = 1e-7


def l1_scale(delta: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """‖δ‖₁ / ‖δ·keep‖₁ as a float32 scalar tensor; 1 when either norm is ~0 (nothing to rescale)."""
    before = delta.abs().sum()
    after = before if keep is None else delta.abs().masked_fill_(~keep, 0.0).sum()
    if float(before) < RESCALE_EPS or float(after) < RESCALE_EPS:
        return torch.ones((), dtype=torch.float32, device=delta.device)
    return before / after


def apply_keep(delta: torch.Tensor, keep: torch.Tensor | None, scale: torch.Tensor | None = None) -> torch.Tensor:
    """δ where `keep`, zero elsewhere, times `scale` (a new tensor; δ is untouched)."""
    out = delta.clone() if keep is None else delta.masked_fill(~keep, 0.0)
    return out if scale is None else out.mul_(scale)


def magnitude_keep(delta: torch.Tensor, density: float) -> torch.Tensor | None:
    """TIES trim: the int(density·n) entries of largest |δ| (Yadav et al., arXiv 2306.01708), the first ones
    among equal values at the cut."""
    mags = delta.abs()
    return magnitude_keep_blocks(lambda: iter([mags]), tuple(delta.shape), density)


def outliers_keep(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor | None:
    """Model Breadcrumbs: drop the top `gamma` fraction of |δ| (outliers) and the smallest, keeping `density`.

    Davari & Belilovsky, arXiv 2312.06795. When density + gamma > 1 fewer outliers are dropped, so `density` is
    always what is kept. (mergekit 0.1.5 keeps nothing when int(gamma·n) is 0, e.g. 1-D tensors under 100 entries
    at gamma 0.01; here that case drops no outliers.)
    """
    if not 0.0 <= density <= 1.0 or not 0.0 <= gamma <= 1.0:
        raise ValueError(f"density and gamma must be in [0, 1], got density={density}, gamma={gamma}")
    if density >= 1.0:
        return None
    n = delta.numel()
    keep = int(density * n)
    n_top = int(gamma * n)
    n_bottom = n - keep - n_top
    if n_bottom < 0:
        n_top, n_bottom = n_top + n_bottom, 0
    order = torch.argsort(delta.abs().reshape(-1))  # ascending
    mask = torch.zeros(n, dtype=torch.bool, device=delta.device)
    mask[order[n_bottom : n - n_top]] = True
    return mask.view(delta.shape)


def bernoulli_keep(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor | None:
    """DARE: keep each entry with probability `density` (Yu et al., arXiv 2311.03099), seeded per tensor."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"DARE density must be in [0, 1], got {density}")
    if density >= 1.0:
        return None
    return torch.bernoulli(torch.full_like(delta, density), generator=generator).bool()


def della_keep(delta: torch.Tensor, density: float, epsilon: float, generator: torch.Generator) -> torch.Tensor | None:
    """DELLA's MagPrune: keep probabilities run linearly from density − ε to density + ε by rank of |δ| in each row.

    Deep et al., arXiv 2406.11617. Larger entries are more likely kept; a 1-D tensor is one row, and a tensor of
    three or more dimensions is ranked along dimension 1 (mergekit's convention).
    """
    if density >= 1.0:
        return None
    if density <= 0.0:
        return torch.zeros_like(delta, dtype=torch.bool)
    if density + epsilon >= 1.0 or density - epsilon <= 0.0:
        raise ValueError(f"DELLA needs density ± epsilon inside (0, 1); got density={density}, epsilon={epsilon}")
    work = delta.unsqueeze(0) if delta.dim() < 2 else delta  # ranks run along dimension 1, as in mergekit
    ranks = torch.argsort(torch.argsort(work.abs(), dim=1), dim=1).to(delta.dtype) + 1  # 1 = smallest
    lo, hi = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    rank01 = ((ranks - lo) / (hi - lo)).clamp(0, 1).nan_to_num(0.0)  # a one-entry row: no rank
    probs = (density - epsilon) + rank01 * (2 * epsilon)
    return torch.bernoulli(probs, generator=generator).bool().reshape(delta.shape)


def _value(delta: torch.Tensor, keep: torch.Tensor | None, rescale: bool) -> torch.Tensor:
    return apply_keep(delta, keep, l1_scale(delta, keep) if rescale and keep is not None else None)


def magnitude(delta: torch.Tensor, density: float, *, rescale: bool = False) -> torch.Tensor:
    """δ trimmed to its int(density·n) largest-magnitude entries."""
    return _value(delta, magnitude_keep(delta, density), rescale)


def magnitude_outliers(delta: torch.Tensor, density: float, gamma: float, *, rescale: bool = False) -> torch.Tensor:
    """δ without its top-gamma outliers and its smallest entries (Breadcrumbs)."""
    return _value(delta, outliers_keep(delta, density, gamma), rescale)


def bernoulli(delta: torch.Tensor, density: float, generator: torch.Generator, *, rescale: bool = True) -> torch.Tensor:
    """δ with entries dropped at random (DARE), L1-rescaled by default."""
    return _value(delta, bernoulli_keep(delta, density, generator), rescale)


def della_magprune(
    delta: torch.Tensor, density: float, epsilon: float, generator: torch.Generator, *, rescale: bool = True
) -> torch.Tensor:
    """δ with entries dropped at rank-dependent rates (DELLA), L1-rescaled by default."""
    return _value(delta, della_keep(delta, density, epsilon, generator), rescale)


def kth_largest(blocks: Callable[[], Iterator[torch.Tensor]], k: int) -> tuple[torch.Tensor, int]:
    """The k-th largest of non-negative float32 values streamed in blocks, and how many values exceed it.

    An exact radix selection on the float bits (for x ≥ 0 the int32 view orders like the float): one histogram
    of the high 16 bits, then one of the low 16 bits inside the chosen bucket. Two passes, two 64K-bin
    histograms and no copy of the values, where `kthvalue` needs a whole float32 copy of |δ|.
    """
    high = torch.zeros(1 << 16, dtype=torch.int64)
    for blk in blocks():
        if blk.dtype != torch.float32:
            raise TypeError(f"kth_largest reads float32 bits; got {blk.dtype}")
        high += torch.bincount((blk.reshape(-1).view(torch.int32) >> 16).cpu(), minlength=1 << 16)
    above_bucket = high.flip(0).cumsum(0)  # values in buckets ≥ b, b counted from the top
    top = int(torch.searchsorted(above_bucket, k))  # first bucket (from the top) that reaches k
    bucket = (1 << 16) - 1 - top
    greater = int(above_bucket[top - 1]) if top > 0 else 0
    # low 16 bits inside the bucket, as bins 1..65536 of one bincount: values below the bucket clamp to bin 0 and
    # values above it to bin 65537 (three elementwise ops; selecting the bucket's entries first costs twice that)
    low = torch.zeros((1 << 16) + 2, dtype=torch.int64)
    for blk in blocks():
        offset = (blk.reshape(-1).view(torch.int32) - (bucket << 16)).clamp_(-1, 1 << 16).add_(1)
        low += torch.bincount(offset.cpu(), minlength=(1 << 16) + 2)
    above_low = low[1:-1].flip(0).cumsum(0)
    pos = int(torch.searchsorted(above_low, k - greater))
    greater += int(above_low[pos - 1]) if pos > 0 else 0
    value = torch.tensor([(bucket << 16) | ((1 << 16) - 1 - pos)], dtype=torch.int32).view(torch.float32)[0]
    return value, greater


@dataclass
class MagnitudeCut:
    """TIES' top-k as a rule for blocks of |δ| taken in index order: keep what is above `value`, and the first
    `ties` entries equal to it. It holds two numbers where a mask holds a byte per entry, so a merge can apply
    it while it rebuilds δ block by block. Stateful: one pass over the blocks, in order."""

    value: torch.Tensor  # float32 scalar
    ties: int

    def keep(self, magnitudes: torch.Tensor) -> torch.Tensor:
        keep = magnitudes > self.value
        if self.ties > 0:
            at_cut = magnitudes == self.value
            count = int(at_cut.sum())
            if count <= self.ties:  # every tie here is kept: no index list (bf16 deltas tie by the million)
                keep |= at_cut
                self.ties -= count
            else:
                first = at_cut.reshape(-1).nonzero().flatten()[: self.ties]
                keep.view(-1)[first] = True
                self.ties = 0
        return keep


def magnitude_cut(magnitudes: Callable[[], Iterator[torch.Tensor]], n: int, density: float) -> MagnitudeCut | None:
    """The cut that keeps the int(density·n) largest of n magnitudes seen in blocks (None: keep all), ties at the
    cut kept in index order, found by the two-pass radix selection."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    if density >= 1.0:
        return None
    k = int(density * n)
    if k == 0:
        return MagnitudeCut(torch.tensor(math.inf), 0)
    cut, greater = kth_largest(magnitudes, k)
    return MagnitudeCut(cut, k - greater)


def magnitude_keep_blocks(
    magnitudes: Callable[[], Iterator[torch.Tensor]], shape: tuple[int, ...], density: float
) -> torch.Tensor | None:
    """`magnitude_keep` for a δ seen block by block (|δ| row blocks of a (rows, cols) view, in order; one block for
    a whole tensor): ties at the cut kept in index order, and no whole float32 copy of |δ| is made."""
    cut = magnitude_cut(magnitudes, math.prod(shape), density)
    if cut is None:
        return None
    parts = [cut.keep(blk) for blk in magnitudes()]
    return torch.cat(parts).view(shape) if parts else torch.zeros(shape, dtype=torch.bool)
