"""DLF with every expert's weight searched together (`--dlf-mode joint`, docs/methods.md §2.3).

The default DLF search (`dlf.py`) activates one expert per candidate, α·e_t. Here a candidate is a whole weight
vector (α_1 … α_T) from the product of the per-expert grids, and the fused distribution is
P̃ ∝ P·exp(Σ_t α_t d_t), d_t = z_t − z_S−. With s = Σ_t α_t d_t and log Z = log E_P[e^s]:

    KL(P̃‖P) = E_P̃[s] − log Z,    KL(P‖P̃) = log Z − E_P[s],

judged by the same objective, Σ_t [KL(P̃‖P) − KL(Q_t‖Q)]² + [KL(P‖P̃) − KL(Q‖Q_t)]². Every candidate is evaluated
(no certificate prunes a product grid), in chunks of candidates so a chunk's (rows, candidates, V) buffer stays
bounded: |G|^T candidates, 441 for two experts on the default grid. With one expert it is the default search's
grid and gives the same choice.
"""

from __future__ import annotations

import itertools

import torch

from modelops.decode.dlf import first_near_minimum

CHUNK_ELEMS = 1 << 24  # at most this many floats in one chunk's (rows, candidates, V) buffer


def joint_candidates(
    grid: list[float], n_experts: int, bounds: list[tuple[float, float]] | None = None
) -> torch.Tensor:
    """Every weight vector (C, T) of the product of the experts' grids (each cut to its bounds; 0 always kept),
    ordered by Σ|α| and then lexicographically, so the first-minimum rule prefers the smallest total weight."""
    axes = []
    for t in range(n_experts):
        lo, hi = bounds[t] if bounds else (-float("inf"), float("inf"))
        axes.append(sorted({0.0} | {float(a) for a in grid if lo <= a <= hi}))
    rows = sorted(itertools.product(*axes), key=lambda r: (sum(abs(a) for a in r), r))
    return torch.tensor(rows, dtype=torch.float32)


class JointDlfSearch:
    """The joint search, called like `DlfSearch`: (weights (B, T), objective (B, C), fused logits or None)."""

    def __init__(self, candidates: torch.Tensor) -> None:
        self.candidates = candidates

    def __call__(
        self, large: torch.Tensor, base: torch.Tensor, experts: list[torch.Tensor], fuse: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        log_p = large.float().log_softmax(-1)  # (B, V)
        log_q = base.float().log_softmax(-1)
        log_qt = torch.stack([e.float() for e in experts], 1).log_softmax(-1)  # (B, T, V)
        target_f = (log_qt.exp() * (log_qt - log_q[:, None])).nan_to_num(0.0).sum(-1)  # (B, T): KL(Q_t‖Q)
        target_g = (log_q.exp()[:, None] * (log_q[:, None] - log_qt)).nan_to_num(0.0).sum(-1)  # KL(Q‖Q_t)
        deltas = torch.stack([e.float() - base.float() for e in experts], 1)  # (B, T, V)
        deltas = deltas.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)  # a token one side cannot emit: no tilt
        cand = self.candidates.to(large.device)
        p = log_p.exp()
        mean_s = torch.einsum("ct,btv,bv->bc", cand, deltas, p)  # E_P[s] per candidate
        rows, width = log_p.shape
        step = max(1, CHUNK_ELEMS // max(1, rows * width))
        objective = torch.empty(rows, len(cand), dtype=torch.float32, device=large.device)
        for lo in range(0, len(cand), step):
            part = cand[lo : lo + step]
            s = torch.einsum("ct,btv->bcv", part, deltas)  # (B, c, V)
            tilted = log_p[:, None] + s
            log_z = tilted.logsumexp(-1)  # log E_P[e^s]
            f = (tilted.softmax(-1) * s).sum(-1) - log_z  # KL(P̃‖P)
            g = log_z - mean_s[:, lo : lo + step]  # KL(P‖P̃)
            objective[:, lo : lo + step] = ((f[..., None] - target_f[:, None]) ** 2).sum(-1) + (
                (g[..., None] - target_g[:, None]) ** 2
            ).sum(-1)
        weights = cand[first_near_minimum(objective)]  # (B, T): the smallest total weight on ties
        fused = large.float() + torch.einsum("bt,btv->bv", weights, deltas) if fuse else None
        return weights, objective, fused
