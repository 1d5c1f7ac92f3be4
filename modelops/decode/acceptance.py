"""The acceptance rule of speculative decoding as pure tensor functions (docs/methods.md §2.2).

Each rule is split in two: the accepted prefix needs only the k draft positions; the token after it needs the
bonus position (k+1) only in rows that accepted all k, so a round computes the bonus target only when some row
needs it. `accept_greedy` / `accept_sampled` are the whole rule on (B, k+1, V) targets.
"""

from __future__ import annotations

import torch

from modelops.decode.sampling import first_argmax, sample_rows


def greedy_prefix(target: torch.Tensor, drafts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """target: (B, k, V) fused logits at the draft positions; drafts (B, k). Returns (n_accepted (B,), the
    argmax at each draft position (B, k)): drafts are kept while they equal argmax p."""
    best = first_argmax(target) if target.shape[1] else drafts.new_zeros(drafts.shape)
    return (best == drafts).long().cumprod(1).sum(1), best


def greedy_next(best: torch.Tensor, n: torch.Tensor, bonus: torch.Tensor | None) -> torch.Tensor:
    """The emitted token: argmax p at the first mismatch, or at the bonus position (B, V) where all k matched."""
    k = best.shape[1]
    at_mismatch = best.gather(1, n.clamp(max=max(k - 1, 0))[:, None])[:, 0] if k else n
    if bonus is None:
        return at_mismatch
    return torch.where(n < k, at_mismatch, first_argmax(bonus))


def accept_greedy(target: torch.Tensor, drafts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy verification.

    target: (B, k+1, V) fused logits at the k draft positions and the bonus position; drafts: (B, k).
    Returns (n_accepted (B,), next token (B,)): drafts are kept while they equal argmax p, then argmax p at
    the first mismatch (or at the bonus position) is emitted.
    """
    k = drafts.shape[1]
    n, best = greedy_prefix(target[:, :k], drafts)
    return n, greedy_next(best, n, target[:, k])


def sampled_prefix(
    p: torch.Tensor,
    q: torch.Tensor,
    drafts: torch.Tensor,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """p, q: (B, k, V) target and draft probabilities at the draft positions, drafts (B, k) drawn from q.
    Draft i is accepted with probability min(1, p_i(d_i)/q_i(d_i)), left to right; returns n_accepted (B,).
    `uniforms` (B, k) in [0, 1) replace the generator's draws (keyed sampling)."""
    b, k = drafts.shape
    p_d = p.gather(-1, drafts[..., None])[..., 0]  # (B, k)
    q_d = q.gather(-1, drafts[..., None])[..., 0]
    if uniforms is None:
        u = torch.rand((b, k), generator=generator, device=p.device, dtype=p.dtype)
    else:  # float64 keyed draws: compare in float64 so no draw rounds up to 1
        u, p_d, q_d = uniforms.to(p.device, torch.float64), p_d.double(), q_d.double()
    return (u * q_d < p_d).long().cumprod(1).sum(1)  # u < p/q without dividing (q_d > 0: d was drawn from q)


def sampled_next(
    p: torch.Tensor,
    q: torch.Tensor,
    n: torch.Tensor,
    bonus: torch.Tensor | None,
    generator: torch.Generator | None = None,
    cut: torch.Tensor | None = None,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """The token after the accepted prefix: from norm(max(0, p − q)) at the first rejection, from the bonus
    position's p (B, V) where all k were accepted (None when no row did). `cut` (B,): a row's own draft count
    (≤ k); a row that accepted all of its own drafts draws from p at the next position, which no draft covered.
    `uniforms` (B,): keyed draws instead of the generator's."""
    b, k, v = q.shape
    if k == 0:
        assert bonus is not None
        return sample_rows(bonus, generator, uniforms)
    idx = n.clamp(max=k - 1)[:, None, None].expand(b, 1, v)
    p_n, q_n = p.gather(1, idx)[:, 0], q.gather(1, idx)[:, 0]  # (B, V)
    residual = (p_n - q_n).clamp_(min=0.0)
    use_p = residual.sum(-1, keepdim=True) <= 0  # p == q to the last bit: nothing to correct, sample p
    if cut is not None:
        use_p = use_p | (n == cut)[:, None]
    residual = torch.where(use_p, p_n, residual)
    if bonus is not None:
        residual = torch.where((n == k)[:, None], bonus, residual)  # q ≡ 0 at the bonus position: residual = p
    return sample_rows(residual, generator, uniforms)


def accept_sampled(
    p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling (Leviathan et al. 2023 / Chen et al. 2023), exact for any draft distribution q.

    p: (B, k+1, V) target probabilities (draft positions + bonus); q: (B, k, V) draft probabilities that
    drafts (B, k) were drawn from. Returns (n_accepted (B,), next token (B,)).
    """
    k = drafts.shape[1]
    n = sampled_prefix(p[:, :k], q, drafts, generator)
    return n, sampled_next(p[:, :k], q, n, p[:, k], generator)
