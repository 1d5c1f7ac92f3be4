"""Fusion rules: pure functions over (batch, vocab) float32 logits or log-probs.

Every rule is a linear combination of the models' log-probs, log p̃ = Σ_m c_m ℓ_m (− log Z), so a rule is a
coefficient vector over [large, small base, expert_1, …]. Raw logits may be combined instead of log-probs
when every component spans the same vocabulary: the per-row constants only shift the fused row.
"""

from __future__ import annotations

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
    coeffs = torch.as_tensor(coefficients, dtype=torch.float32, device=components[0].device)
    per_row = coeffs.dim() == 2
    fused: torch.Tensor | None = None
    for m, x in enumerate(components):
        c = coeffs[:, m : m + 1] if per_row else coeffs[m]
        if not per_row and float(c) == 0.0:
            continue
        if per_row and not bool(c.ne(0).any()):
            continue
        term = x if (not per_row and float(c) == 1.0) else x * c
        if per_row:  # rows whose coefficient is zero must not see −inf · 0
            term = torch.where(c == 0, torch.zeros_like(x), term)
        fused = term.clone() if fused is None else fused.add_(term)
    if fused is None:
        return torch.zeros_like(components[0])
    return fused


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


def dlf_weights(
    large: torch.Tensor,
    base: torch.Tensor,
    experts: list[torch.Tensor],
    candidates: torch.Tensor,
    support_margin: float = 30.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic logit fusion: per row, the candidate weight vector minimising the DLF objective.

    For candidate α·e_t: P̃ = softmax(z_L + α(z_t − z_S−)), and the objective is
    Σ_t' [KL(P̃‖P) − KL(Q_t'‖Q)]² + [KL(P‖P̃) − KL(Q‖Q_t')]² (METHODS.md §2.3). With d = ℓ_t − ℓ_S− and
    A(α) = log Σ_v P_v e^{α d_v}: KL(P̃‖P) = α E_P̃[d] − A(α) and KL(P‖P̃) = A(α) − α E_P[d], so one
    log-sum-exp per candidate gives both KLs, for all candidates in one batched op. Tokens whose term
    ℓ_L + α d stays `support_margin` nats below the row's best for every α in range cannot move a float32 sum
    and are left out (exact to float32 rounding). Returns (weights (B, T), objective (B, C)).
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

    d, logp_s = _restrict_support(logp, d, alpha, support_margin)
    safe_logp = torch.nan_to_num(logp_s, neginf=-1e30)
    p = logp_s.exp()
    mean_p = (p[None] * d).sum(-1)  # (T, B): E_P[d_t]
    # (C, B, V): every candidate's fused log-probs, one op
    x = safe_logp[None] + alpha[:, None, None] * d[expert_of]
    a = torch.logsumexp(x, -1)  # (C, B)
    p_tilde = torch.exp(x - a[..., None])
    mean_tilde = (p_tilde * d[expert_of]).sum(-1)  # (C, B)
    kl_tilde_p = alpha[:, None] * mean_tilde - a  # KL(P̃‖P)
    kl_p_tilde = a - alpha[:, None] * mean_p[expert_of]  # KL(P‖P̃)
    objective = ((kl_tilde_p[..., None] - target_fwd[None]) ** 2 + (kl_p_tilde[..., None] - target_bwd[None]) ** 2).sum(
        -1
    )  # (C, B)
    best = objective.argmin(0)  # (B,) first minimum = smallest α on ties
    return cand[best], objective.T


def _restrict_support(
    logp: torch.Tensor, d: torch.Tensor, alpha: torch.Tensor, margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop vocabulary columns that no candidate can weigh above e^-margin of the row's largest term."""
    lo, hi = float(min(alpha.min(), 0.0)), float(max(alpha.max(), 0.0))
    ends = torch.stack([logp[None] + lo * d, logp[None] + hi * d])  # (2, T, B, V); linear in α
    upper = ends.amax(0)  # best a token can reach over the α range
    lower = ends.amin(0).amax(-1, keepdim=True)  # every α has some token at least this high
    keep = (upper >= lower - margin).any(0).any(0)  # (V,) union over experts and rows
    if bool(keep.all()):
        return d, logp
    cols = torch.nonzero(keep)[:, 0]
    return d[..., cols], logp[:, cols]
