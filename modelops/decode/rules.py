"""Fusion rules: pure functions over (batch, vocab) float32 logits or log-probs.

Every rule is a linear combination of the models' log-probs, log p̃ = Σ_m c_m ℓ_m (− log Z), so a rule is a
coefficient vector over [large, small base, expert_1, …]. Raw logits may be combined instead of log-probs
when every component spans the same vocabulary: the per-row constants only shift the fused row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LARGE, BASE = 0, 1  # component order: large, small base, experts...


def eft_coefficients(weight: float = 1.0, gamma: float = 1.0) -> list[float]:
    """EFT / up-scaling with both knobs: ℓ_S− + γ(ℓ_L − ℓ_S−) + w(ℓ_S+ − ℓ_S−).

    γ = 1 gives ℓ_L + w(ℓ_S+ − ℓ_S−) (up-scaling; proxy-tuning with w = α); w = 1 gives the "amplified"
    ℓ_S+ + γ(ℓ_L − ℓ_S−). Order: [large, small base, expert].
    """
    return [gamma, 1.0 - gamma - weight, weight]


def fixed_coefficients(weights: list[float]) -> list[float]:
    """ℓ_L + Σ_i w_i (ℓ_i − ℓ_S−): several experts with fixed weights (behaviour interpolation)."""
    return [1.0, -float(sum(weights)), *[float(w) for w in weights]]


def combine(components: list[torch.Tensor], coefficients: torch.Tensor | list[float]) -> torch.Tensor:
    """Σ_m c_m · x_m over (B, V) components; coefficients are (M,) or per-row (B, M).

    A zero coefficient skips its component, so −inf entries of an unused model never turn into NaN.
    """
    if not isinstance(coefficients, torch.Tensor) or coefficients.dim() == 1:
        fused: torch.Tensor | None = None
        for x, c in zip(components, [float(c) for c in coefficients], strict=True):
            if c == 0.0:
                continue
            if fused is None:
                fused = x.clone() if c == 1.0 else x * c
            else:
                fused.add_(x, alpha=c)  # in place, no temporary per component
        return fused if fused is not None else torch.zeros_like(components[0])
    coeffs = coefficients.to(components[0].device, torch.float32)  # (B, M): one weight vector per row
    out = torch.zeros_like(components[0])
    for m, x in enumerate(components):
        c = coeffs[:, m : m + 1]
        if bool(c.ne(0).any()):  # rows whose coefficient is zero must not see −inf · 0
            out += torch.where(c == 0, torch.zeros_like(x), x * c)
    return out


def fuse_components(
    components: list[torch.Tensor], coefficients: list[float] | None, candidates: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[large, small base, experts…] → fused (B, V) logits, with fixed coefficients or DLF's per-row choice.

    Returns the chosen expert weights (B, T) for DLF, else None.
    """
    if candidates is None:
        assert coefficients is not None
        return combine(components, coefficients), None
    weights, _ = dlf_weights(components[0], components[1], components[2:], candidates)
    coeffs = torch.cat([torch.ones_like(weights[:, :1]), -weights.sum(-1, keepdim=True), weights], dim=-1)
    return combine(components, coeffs), weights


def kl_pair(logp: torch.Tensor, logq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(p‖q), KL(q‖p)) over the last dim, natural log; inputs are log-probs."""
    p, q = logp.exp(), logq.exp()
    diff = logp - logq
    return (p * diff).sum(-1), -(q * diff).sum(-1)


def dlf_candidates(grid: list[float], n_experts: int, bounds: list[tuple[float, float]] | None = None) -> torch.Tensor:
    """Candidate weight vectors (C, T): one expert active per candidate, ordered by α then expert.

    The order makes `argmin`'s first-minimum rule pick the smallest α on ties. α = 0 appears once.
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


CACHE_ELEMS = 1 << 16  # rows of DLF's search are processed in blocks of about this many floats per tensor


def dlf_weights(
    large: torch.Tensor,
    base: torch.Tensor,
    experts: list[torch.Tensor],
    candidates: torch.Tensor,
    support_margin: float = 30.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_dlf_block` over blocks of rows small enough that its dozen (rows, V) buffers stay in CPU cache
    (measured 1.7× faster at batch 16, vocab 32000, than one block)."""
    rows = max(1, CACHE_ELEMS // large.shape[-1])
    if large.shape[0] <= rows:
        return _dlf_block(large, base, experts, candidates, support_margin)
    parts = [
        _dlf_block(
            large[i : i + rows], base[i : i + rows], [e[i : i + rows] for e in experts], candidates, support_margin
        )
        for i in range(0, large.shape[0], rows)
    ]
    return torch.cat([w for w, _ in parts]), torch.cat([o for _, o in parts])


def _dlf_block(
    large: torch.Tensor,
    base: torch.Tensor,
    experts: list[torch.Tensor],
    candidates: torch.Tensor,
    support_margin: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic logit fusion: per row, the candidate weight vector minimising the DLF objective.

    For candidate α·e_t: P̃ = softmax(z_L + α(z_t − z_S−)), and the objective is
    Σ_t' [KL(P̃‖P) − KL(Q_t'‖Q)]² + [KL(P‖P̃) − KL(Q‖Q_t')]² (METHODS.md §2.3). With d = ℓ_t − ℓ_S− and
    A(α) = log Σ_v P_v e^{α d_v}: KL(P̃‖P) = α E_P̃[d] − A(α) and KL(P‖P̃) = A(α) − α E_P[d], so the curve
    A(α), E_P̃[d] over the grid gives every candidate's KLs (`_tilt_curve`). Tokens whose term ℓ_L + α d stays
    `support_margin` nats below the row's best for every α in range cannot move a float32 sum and are left
    out. Returns (weights (B, T), objective (B, C)); ties go to the first candidate (smallest α).
    """
    logp = torch.log_softmax(large.float(), -1)  # (B, V)
    logq = torch.log_softmax(base.float(), -1)
    deltas, kl_fwd, kl_bwd = [], [], []
    for expert in experts:
        logq_t = torch.log_softmax(expert.float(), -1)
        fwd, bwd = kl_pair(logq_t, logq)  # KL(Q_t‖Q), KL(Q‖Q_t)
        kl_fwd.append(fwd)
        kl_bwd.append(bwd)
        deltas.append(torch.nan_to_num(logq_t - logq, nan=0.0, posinf=0.0, neginf=0.0))
    d = torch.stack(deltas)  # (T, B, V)
    target_fwd, target_bwd = torch.stack(kl_fwd, -1), torch.stack(kl_bwd, -1)  # (B, T)
    cand = candidates.to(large.device)  # (C, T)
    expert_of = cand.abs().argmax(-1)  # (C,)
    alpha = cand.gather(1, expert_of[:, None])[:, 0]  # (C,)

    d, logp = _restrict_support(logp, d, alpha, support_margin)
    logp = torch.nan_to_num(logp, neginf=-1e30)
    mean_p = (logp.exp()[None] * d).sum(-1)  # (T, B): E_P[d_t]
    a = torch.zeros(len(cand), logp.shape[0], device=logp.device)  # (C, B): A(α)
    mean_tilde = torch.zeros_like(a)  # (C, B): E_P̃[d]
    # Σ_t' (f − a_t')² = T(f − ā)² + const, and f = KL(P̃‖P), g = KL(P‖P̃) only grow as |α| grows, so once
    # f ≥ ā and g ≥ b̄ a row's objective cannot fall any more along that direction: the walk may stop there.
    fwd_bar, bwd_bar = target_fwd.mean(-1), target_bwd.mean(-1)  # (B,)
    for t in range(d.shape[0]):
        rows = torch.nonzero(expert_of == t)[:, 0]
        if not rows.numel():
            continue

        def past_minimum(alpha: float, a_row: torch.Tensor, m_row: torch.Tensor, t: int = t) -> torch.Tensor:
            if alpha == 0:
                return torch.zeros_like(a_row, dtype=torch.bool)
            f, g = alpha * m_row - a_row, a_row - alpha * mean_p[t]
            return (f >= fwd_bar) & (g >= bwd_bar)

        a[rows], mean_tilde[rows] = _tilt_curve(logp, d[t], alpha[rows].tolist(), past_minimum)
    kl_tilde_p = alpha[:, None] * mean_tilde - a  # KL(P̃‖P); −inf where the walk stopped early
    kl_p_tilde = a - alpha[:, None] * mean_p[expert_of]  # KL(P‖P̃); +inf there
    objective = ((kl_tilde_p[..., None] - target_fwd[None]) ** 2).sum(-1)
    objective += ((kl_p_tilde[..., None] - target_bwd[None]) ** 2).sum(-1)  # (C, B)
    best = objective.argmin(0)  # (B,) first minimum = smallest α on ties
    return cand[best], objective.T


def _tilt_curve(
    logp: torch.Tensor,
    d: torch.Tensor,
    alphas: list[float],
    past_minimum: Callable[[float, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    anchor_every: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A(α) = log Σ P e^{αd} and E_P̃(α)[d] for the given α, each (len(alphas), B).

    Walks outward from 0 (up through the positive α, down through the negative ones). Exact exp only at anchors;
    between them the weights are multiplied by u = e^{h(d − ref)} ≤ 1, one multiply and two reductions per α
    instead of a log-softmax. `past_minimum(α, A, E)` marks rows whose objective can only grow further out; once
    every row is marked the walk stops and the remaining α get A = +inf (an infinite objective).
    """
    flushed = torch.set_flush_denormal(True)  # decayed weights would otherwise crawl through denormal arithmetic
    try:
        a_out = torch.full((len(alphas), logp.shape[0]), float("inf"), device=logp.device)
        m_out = torch.zeros_like(a_out)
        up = sorted((i for i, a in enumerate(alphas) if a >= 0), key=lambda i: alphas[i])
        down = sorted((i for i, a in enumerate(alphas) if a < 0), key=lambda i: -alphas[i])
        for order in (up, down):
            if order:
                _tilt_walk(logp, d, alphas, order, anchor_every, a_out, m_out, past_minimum)
        return a_out, m_out
    finally:
        if flushed:
            torch.set_flush_denormal(False)


def _tilt_walk(
    logp: torch.Tensor,
    d: torch.Tensor,
    alphas: list[float],
    order: list[int],
    anchor_every: int,
    a_out: torch.Tensor,
    m_out: torch.Tensor,
    past_minimum: Callable[[float, torch.Tensor, torch.Tensor], torch.Tensor] | None,
) -> None:
    """One monotone walk (every step h has the same sign); fills a_out / m_out rows of `order`.

    Per α: one multiply and two reductions into preallocated rows (few small ops: at batch 1 their dispatch
    cost is what matters). The stop test runs once per anchor segment, on its last α: past the minimum there
    means past it at every later α too.
    """
    n, rows = len(order), d.shape[0]
    increasing = alphas[order[-1]] >= alphas[order[0]]
    ref = d.amax(-1) if increasing else d.amin(-1)  # (B,): makes every u = e^{h(d − ref)} ≤ 1
    scratch = torch.empty_like(d)  # reused: no allocation per α
    total = torch.empty(n, rows, device=d.device)  # Σ w
    weighted = torch.empty_like(total)  # Σ w·d
    offset = torch.empty_like(total)  # log of what w was scaled by
    w = shift = anchor = None
    u_cache: dict[float, torch.Tensor] = {}
    walked = n
    for k, i in enumerate(order):
        alpha = alphas[i]
        if w is None or k % anchor_every == 0:
            x = torch.add(logp, d, alpha=alpha) if alpha else logp.clone()
            shift = x.amax(-1)
            w = x.sub_(shift[:, None]).exp_()
            anchor = alpha
        else:
            h = round(alpha - alphas[order[k - 1]], 9)
            if h not in u_cache:
                u_cache[h] = torch.exp(h * (d - ref[:, None]))
            w.mul_(u_cache[h])
        torch.sum(w, -1, out=total[k])
        torch.sum(torch.mul(w, d, out=scratch), -1, out=weighted[k])
        torch.add(shift, ref, alpha=alpha - anchor, out=offset[k])
        segment_end = k % anchor_every == anchor_every - 1 or k == n - 1
        if past_minimum is not None and segment_end:
            a_k = total[k].log() + offset[k]
            if bool(past_minimum(alpha, a_k, weighted[k] / total[k]).all()):
                walked = k + 1
                break
    idx = torch.tensor(order[:walked], device=d.device)
    a_out[idx] = total[:walked].log() + offset[:walked]
    m_out[idx] = weighted[:walked] / total[:walked]


def _restrict_support(
    logp: torch.Tensor, d: torch.Tensor, alpha: torch.Tensor, margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop vocabulary columns that no candidate can weigh above e^-margin of the row's largest term.

    ℓ + αd is linear in α, so over [lo, hi] a token peaks at an end; every α has some token at least as high as
    the best of the tokens' lower ends.
    """
    if margin == float("inf"):
        return d, logp
    lo, hi = float(min(alpha.min(), 0.0)), float(max(alpha.max(), 0.0))
    # no token can fall `margin` below another when logp and α·d cannot spread that far: skip the work
    reach = max(abs(lo), abs(hi)) * (d.amax(-1) - d.amin(-1)).amax(0)  # (B,)
    if bool((logp.amax(-1) - logp.amin(-1) + reach < margin).all()):
        return d, logp
    at_lo = logp[None] + lo * d if lo else logp[None].expand_as(d)  # (T, B, V)
    at_hi = logp[None] + hi * d
    upper = torch.maximum(at_lo, at_hi)
    lower = torch.minimum(at_lo, at_hi).amax(-1, keepdim=True)
    keep = (upper >= lower - margin).flatten(0, 1).any(0)  # (V,) union over experts and rows
    if int(keep.sum()) > 0.7 * keep.numel():  # gathering would cost more than it saves
        return d, logp
    cols = torch.nonzero(keep)[:, 0]
    return d[..., cols], logp[:, cols]
