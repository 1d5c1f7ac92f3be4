"""Dynamic logit fusion's per-step weight search (docs/methods.md §2.3): the grid's exact argmin in a few passes.

For candidate α·e_t the fused distribution is a tilt of P by d_t = z_t − z_S−: P̃_α ∝ P·e^{α d_t}. With μ = E_P[d]
and A(α) = log E_P[e^{α(d − μ)}], both KLs of the objective come from that one curve:

    g(α) = KL(P‖P̃_α) = A(α),    f(α) = KL(P̃_α‖P) = α A'(α) − A(α),

both 0 at α = 0 and non-decreasing in |α| (f' = α·Var_α(d), g' = ∫₀^α Var_s(d) ds). Along one direction (an
expert and a sign of α) the objective Σ_t' (f − a_t')² + (g − b_t')² = T[(f − ā)² + (g − b̄)²] + const therefore
cannot fall further out once f ≥ ā and g ≥ b̄ ("above"), nor further in once f ≤ ā and g ≤ b̄ ("below"). The
search evaluates the two grid points around the second-order guess |α̂| = √((ā + b̄) / Var_P(d)) and widens only
where those certificates fail; every grid point between the last "below" and the first "above" is evaluated.
Two evaluations per row and direction usually replace the whole grid, and the argmin is the grid's own.

Cost: every normaliser, mean and second moment comes from one batched matmul of the shifted exponentials
[P, Q, Q_1…] against [1, d_1…, d_1²…], and each evaluation from one matmul of e^{log P + α d} against [1, d…];
rows go in blocks small enough that a block's buffers stay in CPU cache. That is this module's eager torch search,
the default. With MODELOPS_NATIVE=1 on CPU the same search runs row by row in the C kernel of `native`: it pays
on small models, where the search is a large share of a step, and not at real shapes (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from modelops.decode.native import NativePlan, enabled, usable
from modelops.decode.native import search as native_search

BLOCK_ELEMS = 1 << 16  # about this many floats per (rows, V) buffer of a CPU block (off the CPU: one block)
CHUNK_ELEMS = 1 << 24  # at most this many floats in the buffers kept between calls (64 MB); more rows go in turns
TINY = 1e-30  # a tilted row sum below this has lost its terms to underflow
SAFE_TOP = 40.0  # larger logits are shifted before the tilts are exponentiated
TINY_NORM = 1e-20  # Σ e^{z} below this: the unshifted exponentials lost the row's mass to underflow
# objectives this close to a row's minimum tie (the smallest α wins): float32 sums round exact ties apart (up to
# 3e-12 on 152k-wide rows, and by how a BLAS rounds identical rows). Equal to TIE_* in dlf_kernel.c.
TIE_RTOL, TIE_ATOL = 1e-6, 1e-10
# moments passes tried in turn: unshifted; shifted by each row's max; shifted with non-finite deltas counted as 0
ATTEMPTS = ((False, False), (True, False), (True, True))


def dlf_candidates(grid: list[float], n_experts: int, bounds: list[tuple[float, float]] | None = None) -> torch.Tensor:
    """Candidate weight vectors (C, T): one expert active per candidate, ordered by α then expert.

    The order makes the first-minimum rule (`first_near_minimum`) pick the smallest α on ties. α = 0 appears once.
    """
    rows: list[list[float]] = []
    for alpha in sorted(set(float(a) for a in grid)):
        if alpha == 0.0:
            rows.append([0.0] * n_experts)
            continue
        for t in range(n_experts):
            lo, hi = bounds[t] if bounds else (-float("inf"), float("inf"))
            if lo <= alpha <= hi:
                row = [0.0] * n_experts
                row[t] = alpha
                rows.append(row)
    return torch.tensor(rows, dtype=torch.float32)


@dataclass
class _Direction:
    """The candidates of one expert and one sign of α, ordered by |α|."""

    expert: int
    sign: float
    magnitudes: list[float]
    columns: list[int]  # candidate index of each magnitude

    def __post_init__(self) -> None:  # as tensors once, not on every step
        self.magnitudes_t = torch.tensor(self.magnitudes, dtype=torch.float64)
        self.columns_t = torch.tensor(self.columns)


def _directions(candidates: torch.Tensor) -> list[_Direction]:
    found: dict[tuple[int, float], list[tuple[float, int]]] = {}
    for c, row in enumerate(candidates.tolist()):
        for t, value in enumerate(row):
            if value != 0.0:
                found.setdefault((t, math.copysign(1.0, value)), []).append((abs(value), c))
    out = []
    for (t, sign), pairs in sorted(found.items()):
        pairs.sort()
        out.append(_Direction(t, sign, [m for m, _ in pairs], [c for _, c in pairs]))
    return out


class _Workspace:
    """Buffers kept between steps: fresh multi-MB allocations would page-fault on every step."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor, ones_row: bool = False) -> torch.Tensor:
        """A (rows, …) buffer, reused while it is large enough; `ones_row`: [:, 0] holds ones."""
        buf = self.buffers.get(name)
        if buf is None or buf.shape[0] < shape[0] or buf.shape[1:] != shape[1:] or buf.device != like.device:
            buf = torch.empty(shape, dtype=torch.float32, device=like.device)
            if ones_row:
                buf[:, 0].fill_(1.0)
            self.buffers[name] = buf
        return buf[: shape[0]]


class _Moments:
    """Per-row scalars of the search, in float64, from the matmul of the exponentials with [1, d…, d²…]."""

    def __init__(self, sums: torch.Tensor, tops: torch.Tensor, n_exp: int) -> None:
        sums, tops = sums.double(), tops.double()  # (B, 2 + T, 1 + 2T), (B, 2 + T)
        norm = sums[:, :, 0]  # Σ e^{z − max z} of [large, base, experts…]
        lse = norm.log() + tops
        cols = torch.arange(1, 1 + n_exp)
        shift = lse[:, 2:] - lse[:, 1:2]  # (B, T): log Q_t − log Q = d_t − shift_t
        self.target_fwd = sums[:, 1 + cols, cols] / norm[:, 2:] - shift  # KL(Q_t‖Q)
        self.target_bwd = shift - sums[:, 1, cols] / norm[:, 1:2]  # KL(Q‖Q_t)
        self.mean = sums[:, 0, cols] / norm[:, :1]  # (B, T): E_P[d_t]
        self.var = (sums[:, 0, cols + n_exp] / norm[:, :1] - self.mean**2).clamp_min(0.0)
        self.lse_large = lse[:, 0]  # log Σ e^{z_L}
        self.fwd_bar, self.bwd_bar = self.target_fwd.mean(-1), self.target_bwd.mean(-1)  # (B,)

    def kls(self, t: int, rows: torch.Tensor | slice, alpha: torch.Tensor, sums: torch.Tensor, shift: torch.Tensor):
        """(f, g) along expert t from Σw and Σw·d_t (last axis of `sums`) of w = e^{z_L + α d_t − shift}.

        `rows` picks each point's row: one index per point, or a slice when `alpha` is (rows, points)."""
        sums, alpha = sums.double(), alpha.double()
        lse, mean = self.lse_large[rows], self.mean[rows, t]
        if alpha.dim() == 2:
            lse, mean = lse[:, None], mean[:, None]
        log_ratio = sums[..., 0].log() + shift.double() - lse  # log E_P[e^{α d}]
        g = log_ratio - alpha * mean  # A(α)
        f = alpha * (sums[..., 1] / sums[..., 0]) - log_ratio
        return f, g

    def objective(self, rows: torch.Tensor | slice, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Σ_t' (f − a_t')² + (g − b_t')² per evaluated point (any leading shape of f, g, as in `kls`)."""
        fwd, bwd = self.target_fwd[rows], self.target_bwd[rows]
        if f.dim() == 2:
            fwd, bwd = fwd[:, None], bwd[:, None]
        return ((f[..., None] - fwd) ** 2 + (g[..., None] - bwd) ** 2).sum(-1)


class DlfSearch:
    """DLF's per-step search over one candidate set (`dlf_candidates`); keep one per decode and call it each step.

    `use_native`: use the C kernel (`modelops.decode.native`) where it can run (True), never (False), or as
    MODELOPS_NATIVE says (None: off unless it is 1)."""

    def __init__(self, candidates: torch.Tensor, block_rows: int | None = None, use_native: bool | None = None) -> None:
        self.candidates = candidates
        self.directions = _directions(candidates)
        zero = [c for c, row in enumerate(candidates.tolist()) if not any(row)]
        self.zero_column = zero[0] if zero else None
        self.block_rows = block_rows
        self.workspace = _Workspace()
        self.native = enabled() if use_native is None else use_native
        self.plan = NativePlan(candidates, self.directions, self.zero_column) if self.native else None

    def __call__(
        self, large: torch.Tensor, base: torch.Tensor, experts: list[torch.Tensor], fuse: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(weights (B, T), objective (B, C), fused logits z_L + α(z_t − z_S−) (B, V) if `fuse`, else None).

        Candidates the certificates rule out without evaluating them get objective +inf; ties go to the first
        candidate (the smallest α).
        """
        comps = [large.float(), base.float(), *[e.float() for e in experts]]
        if self.native and usable(comps):
            found = native_search(comps, self.plan, fuse)
            if found is not None:  # else NaN or +inf logits: the eager passes give their answer
                objective, choice, fused = found  # choice: the first near-minimum = the smallest α on ties
                return self.candidates[choice], objective.float(), fused
        return self._eager(comps, fuse)

    def _eager(self, comps: list[torch.Tensor], fuse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The search in torch ops, on float32 [large, base, experts…]."""
        n_rows, width, n_exp = comps[0].shape[0], comps[0].shape[-1], len(comps) - 2
        chunk = max(1, CHUNK_ELEMS // ((1 + 2 * n_exp) * width))
        if n_rows > chunk:  # many rows (scoring): bound the buffers kept between calls
            parts = [self._eager([c[i : i + chunk] for c in comps], fuse) for i in range(0, n_rows, chunk)]
            fused = torch.cat([p[2] for p in parts]) if fuse else None  # type: ignore[misc]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), fused
        step = self.block_rows or (max(1, BLOCK_ELEMS // width) if comps[0].device.type == "cpu" else n_rows)
        values = self.workspace.get("values", (n_rows, 1 + 2 * n_exp, width), comps[0], ones_row=True)
        sums = comps[0].new_empty(n_rows, 2 + n_exp, 1 + 2 * n_exp)
        tops = comps[0].new_empty(n_rows, 2 + n_exp, 1)
        for shifted, clean in ATTEMPTS:
            blocks = zip(*(x.split(step) for x in (*comps, values, sums, tops)), strict=True)
            for *block, vals, out, top in blocks:  # split: every block's views in one call per tensor
                self._moments_block(block, vals, out, top, shifted, clean)
            if bool(torch.isfinite(sums).all() & (sums[:, :, 0] > TINY_NORM).all()):
                break
        stats = _Moments(sums, tops[..., 0], n_exp)
        large = comps[0]
        top = stats.lse_large.float()
        if not bool((top.abs() <= SAFE_TOP).all()):  # keep e^{z_L + α d} inside float32's range
            large = large - top[:, None]
            stats.lse_large = stats.lse_large - top.double()

        cand = self.candidates = self.candidates.to(comps[0].device)
        objective = torch.full((n_rows, len(cand)), float("inf"), dtype=torch.float64, device=cand.device)
        if self.zero_column is not None:  # α = 0: P̃ = P, both KLs 0
            objective[:, self.zero_column] = (stats.target_fwd**2 + stats.target_bwd**2).sum(-1)
        for direction in self.directions:
            _search_direction(large, values, stats, direction, objective, step, self.workspace)
        weights = cand[first_near_minimum(objective)]  # smallest α on ties
        fused = None
        if fuse:
            # d_t is finite (cleaned), so a row whose weight is 0 gets exactly 0 added; a fresh output, not a copy
            active = [t for t in range(n_exp) if bool(weights[:, t].ne(0).any())]
            if not active:
                fused = comps[0].clone()
            else:
                fused = torch.addcmul(comps[0], weights[:, active[0], None], values[:, 1 + active[0]])
                for t in active[1:]:
                    fused.addcmul_(weights[:, t : t + 1], values[:, 1 + t])
        return weights, objective.float(), fused

    def _moments_block(
        self,
        comps: list[torch.Tensor],
        values: torch.Tensor,
        out: torch.Tensor,
        tops: torch.Tensor,
        shifted: bool,
        clean: bool,
    ) -> None:
        """One block: [1, d…, d²…] into `values`, the exponentials' matmul with it into `out`, shifts into `tops`.

        `shifted`: exponentiate z − max z (else z itself, which is exact unless a sum overflows or underflows);
        `clean`: non-finite deltas become 0. The buffers are small and reused, so later passes stay in cache.
        """
        n_exp = len(comps) - 2
        expo = self.workspace.get("exp", (comps[0].shape[0], len(comps), comps[0].shape[-1]), comps[0])
        _, *rows = values.unbind(1)  # [d_1…, d_1²…]
        for t in range(n_exp):  # d_t = z_t − z_S−
            torch.sub(comps[2 + t], comps[1], out=rows[t])
        deltas = values[:, 1 : 1 + n_exp]
        if clean:
            deltas.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        torch.mul(deltas, deltas, out=values[:, 1 + n_exp :])
        if shifted:
            torch.stack(comps, 1, out=expo)  # (b, 2 + T, V)
            torch.amax(expo, -1, keepdim=True, out=tops)
            expo.sub_(tops).exp_()
        else:
            tops.zero_()
            for z, e in zip(comps, expo.unbind(1), strict=True):
                torch.exp(z, out=e)
        torch.bmm(expo, values.transpose(1, 2), out=out)


def _search_direction(
    large: torch.Tensor,
    values: torch.Tensor,
    stats: _Moments,
    direction: _Direction,
    objective: torch.Tensor,
    step: int,
    workspace: _Workspace,
) -> None:
    """Fill `objective` at every grid point of this direction that could be a row's minimum (see the module doc)."""
    t, n = direction.expert, len(direction.magnitudes)
    device, n_rows, n_exp = large.device, large.shape[0], (values.shape[1] - 1) // 2
    mags_t = direction.magnitudes_t.to(device)
    guess = ((stats.fwd_bar + stats.bwd_bar).clamp_min(0.0) / stats.var[:, t]).sqrt().nan_to_num_(0.0)
    lo = torch.searchsorted(mags_t, guess, right=True) - 1  # (B,), −1 stands for α = 0, always "below"
    hi = lo + 1  # n: past the end, always "above"
    pair = torch.stack([lo.clamp(0, n - 1), hi.clamp(0, n - 1)], -1)  # (B, 2) grid indices evaluated first
    alpha = (mags_t[pair] * direction.sign).float()  # (B, 2)
    vals = values[:, : 1 + n_exp]  # [1, d_1…]: Σw and Σw·d_t in one matmul
    sums = large.new_empty(n_rows, 2, 1 + n_exp)
    x_buf = workspace.get("tilted", (min(step, n_rows), 2, large.shape[-1]), large)
    pieces = (large[:, None], alpha[:, :, None], values[:, 1 + t : 2 + t], vals.transpose(1, 2), sums)
    for z, a, d, v, out in zip(*(x.split(step) for x in pieces), strict=True):  # e^{z_L + α d_t}, block by block
        x = torch.addcmul(z, a, d, out=x_buf[: z.shape[0]])
        torch.bmm(x.exp_(), v, out=out)
    sums = sums[:, :, [0, 1 + t]]  # (B, 2, 2): Σw and Σw·d_t of both points
    shift = torch.zeros_like(alpha)
    bad = ~_usable(sums)
    if bool(bad.any()):  # an exponent overflowed or every term underflowed: redo those with the exact shift
        idx = torch.nonzero(bad)
        sums[idx[:, 0], idx[:, 1]], shift[idx[:, 0], idx[:, 1]] = _evaluate_points(
            large, values, t, idx[:, 0], alpha[idx[:, 0], idx[:, 1]], unshifted_first=False
        )
    f, g = stats.kls(t, slice(None), alpha, sums, shift)  # (B, 2) each
    objective.scatter_(1, direction.columns_t.to(device)[pair], stats.objective(slice(None), f, g))
    fb, gb = stats.fwd_bar, stats.bwd_bar
    below = (lo < 0) | ((f[:, 0] <= fb) & (g[:, 0] <= gb))
    above = (hi >= n) | ((f[:, 1] >= fb) & (g[:, 1] >= gb))
    unsure = torch.nonzero(~(below & above))[:, 0].tolist()
    if unsure:
        _widen(large, values, stats, direction, objective, unsure, lo, hi, pair, f, g)


def first_near_minimum(objective: torch.Tensor) -> torch.Tensor:
    """Per row, the first column within rounding (TIE_RTOL, TIE_ATOL) of the row's minimum; a row holding a NaN
    gets its first NaN, as `argmin` gives. Candidates are ordered by α, so ties go to the smallest α."""
    best = objective.min(-1, keepdim=True).values
    near = objective <= best + TIE_RTOL * best.abs() + TIE_ATOL
    return torch.where(best[:, 0].isnan(), objective.argmin(-1), near.int().argmax(-1))


def _store(
    stats: _Moments,
    direction: _Direction,
    objective: torch.Tensor,
    rows: torch.Tensor,
    grid: torch.Tensor,
    alpha: torch.Tensor,
    sums: torch.Tensor,
    shift: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(f, g) of evaluated points (row, grid index); their objective goes into `objective`."""
    f, g = stats.kls(direction.expert, rows, alpha, sums, shift)
    cols = direction.columns_t.to(objective.device)[grid]
    objective[rows, cols] = stats.objective(rows, f, g)
    return f, g


def _usable(sums: torch.Tensor) -> torch.Tensor:
    """Per point, whether its (Σw, Σw·d) are exact: finite, and Σw has not lost its terms to underflow."""
    return torch.isfinite(sums).all(-1) & (sums[..., 0] > TINY)


def _evaluate_points(
    large: torch.Tensor,
    values: torch.Tensor,
    t: int,
    rows: torch.Tensor,
    alpha: torch.Tensor,
    unshifted_first: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σw, Σw·d_t) and the shift, for one point per row, with w = e^{z_L + α d_t − shift}.

    The shift is 0 where that is exact (`_usable`), else the row's max of z_L + α d_t; `unshifted_first=False`
    (the points' unshifted sums already failed) goes straight to the shift."""
    delta = values[:, 1 + t].index_select(0, rows)  # (k, V); index_select, not [rows]: a fast row copy
    x = torch.addcmul(large.index_select(0, rows), alpha[:, None], delta)
    shift = torch.zeros_like(alpha)
    if unshifted_first:
        sums = _tilt_sums(x.exp(), delta)
        redo = torch.nonzero(~_usable(sums))[:, 0]
    else:
        sums, redo = x.new_empty(len(rows), 2), torch.arange(len(rows), device=x.device)
    if redo.numel():
        shift[redo] = x[redo].amax(-1)
        sums[redo] = _tilt_sums((x[redo] - shift[redo, None]).exp_(), delta[redo])
    return sums, shift


def _tilt_sums(w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(k, 2): Σw and Σw·d per row; `vecdot`, as a (k, 1, V) bmm is much slower here."""
    return torch.stack([w.sum(-1), torch.linalg.vecdot(w, delta)], -1)


def _widen(large, values, stats, direction, objective, unsure, lo, hi, pair, f, g) -> None:
    """Rows whose first bracket is not certified: move each bracket outward one grid point at a time."""
    t, mags, n = direction.expert, direction.magnitudes, len(direction.magnitudes)
    fb, gb = stats.fwd_bar.tolist(), stats.bwd_bar.tolist()
    lo_l, hi_l, pair_l, f_l, g_l = lo.tolist(), hi.tolist(), pair.tolist(), f.tolist(), g.tolist()
    f_at = {r: {pair_l[r][k]: f_l[r][k] for k in range(2)} for r in unsure}
    g_at = {r: {pair_l[r][k]: g_l[r][k] for k in range(2)} for r in unsure}
    while True:
        want = [(r, j) for r in unsure for j in _wanted(r, lo_l, hi_l, f_at[r], g_at[r], fb[r], gb[r], n)]
        if not want:
            return
        rows = torch.tensor([r for r, _ in want], device=large.device)
        alpha = torch.tensor([direction.sign * mags[j] for _, j in want], device=large.device)
        sums, shift = _evaluate_points(large, values, t, rows, alpha)
        grid = torch.tensor([j for _, j in want], device=large.device)
        fv, gv = _store(stats, direction, objective, rows, grid, alpha, sums, shift)
        for (r, j), fr, gr in zip(want, fv.tolist(), gv.tolist(), strict=True):
            f_at[r][j], g_at[r][j] = fr, gr


def _wanted(
    r: int, lo: list[int], hi: list[int], f: dict[int, float], g: dict[int, float], fb: float, gb: float, n: int
) -> list[int]:
    """The grid indices row r still needs; moves its bracket [lo, hi] outward while a certificate fails."""
    while True:
        need = [j for j in (lo[r], hi[r]) if 0 <= j < n and j not in f]
        if need:
            return need
        if lo[r] >= 0 and not (f[lo[r]] <= fb and g[lo[r]] <= gb):
            lo[r] -= 1  # not yet below both targets: a smaller |α| may be better
            continue
        if hi[r] < n and not (f[hi[r]] >= fb and g[hi[r]] >= gb):
            hi[r] += 1  # not yet above both targets: a larger |α| may be better
            continue
        return [j for j in range(lo[r] + 1, hi[r]) if j not in f]


def dlf_weights(
    large: torch.Tensor,
    base: torch.Tensor,
    experts: list[torch.Tensor],
    candidates: torch.Tensor,
    use_native: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the candidate weight vector minimising DLF's objective: (weights (B, T), objective (B, C))."""
    weights, objective, _ = DlfSearch(candidates, use_native=use_native)(large, base, experts)
    return weights, objective
