"""The fusion rules, sampling filters and vocabulary helpers on hand-made and random tensors."""

from __future__ import annotations

import math

import pytest
import torch

from modelops.decode import rules
from modelops.decode.sampling import SamplingConfig, warp
from modelops.decode.vocab import aligned_components

V = 50


def logits(seed: int, rows: int = 4, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * scale


def lsm(x: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(x, -1)


def test_eft_both_knobs_match_their_formulas():
    zl, zb, ze = logits(0), logits(1), logits(2)
    for w, g in [(1.0, 1.0), (0.5, 1.0), (1.0, 2.0), (0.7, 1.3)]:
        fused = lsm(rules.combine([zl, zb, ze], rules.eft_coefficients(weight=w, gamma=g)))
        if g == 1.0:
            expected = lsm(lsm(zl) + w * (lsm(ze) - lsm(zb)))  # up-scaling / proxy-tuning
        elif w == 1.0:
            expected = lsm(lsm(ze) + g * (lsm(zl) - lsm(zb)))  # the "amplified" form
        else:
            expected = lsm(lsm(zb) + g * (lsm(zl) - lsm(zb)) + w * (lsm(ze) - lsm(zb)))
        torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)


def test_fixed_weights_interpolate_behaviours():
    zl, zb, e1, e2 = logits(0), logits(1), logits(2), logits(3)
    fused = lsm(rules.combine([zl, zb, e1, e2], rules.fixed_coefficients([0.3, 0.7])))
    expected = lsm(lsm(zl) + 0.3 * (lsm(e1) - lsm(zb)) + 0.7 * (lsm(e2) - lsm(zb)))
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)


def test_zero_coefficient_ignores_minus_inf_components():
    zl = logits(0)
    broken = torch.full_like(zl, float("-inf"))
    fused = rules.combine([zl, broken, broken], [1.0, 0.0, 0.0])
    assert torch.equal(fused, zl)
    per_row = rules.combine([zl, broken, broken], torch.tensor([[1.0, 0.0, 0.0]] * 4))
    assert torch.isfinite(per_row).all()


def naive_dlf(zl, zb, experts, grid):
    """The objective candidate by candidate, with explicit softmaxes (independent of the batched identity)."""
    p, q = torch.softmax(zl, -1), torch.softmax(zb, -1)
    targets = []
    for z in experts:
        qt = torch.softmax(z, -1)
        targets.append(((qt * (qt.log() - q.log())).sum(), (q * (q.log() - qt.log())).sum()))
    best = None
    for alpha in sorted(set(grid)):
        for t in range(len(experts)) if alpha else [0]:
            pt = torch.softmax(zl + alpha * (experts[t] - zb), -1)
            k1 = (pt * (pt.log() - p.log())).sum()
            k2 = (p * (p.log() - pt.log())).sum()
            obj = sum((k1 - a) ** 2 + (k2 - b) ** 2 for a, b in targets)
            if best is None or obj < best[0] - 1e-9:
                best = (obj.item(), alpha, t)
    return best


def test_dlf_matches_a_candidate_by_candidate_search():
    grid = [round(0.1 * i, 1) for i in range(21)]
    for seed in range(6):
        zl, zb = logits(10 * seed, rows=1, scale=2.0), logits(10 * seed + 1, rows=1, scale=2.0)
        experts = [zb + logits(10 * seed + 2 + t, rows=1, scale=0.8) for t in range(2)]
        weights, objective = rules.dlf_weights(zl, zb, experts, rules.dlf_candidates(grid, 2))
        obj, alpha, t = naive_dlf(zl[0], zb[0], [e[0] for e in experts], grid)
        chosen = weights[0]
        assert chosen.abs().max().item() == pytest.approx(alpha, abs=1e-6)
        if alpha:
            assert int(chosen.abs().argmax()) == t
        assert objective[0].min().item() == pytest.approx(obj, rel=1e-3, abs=1e-6)


def test_dlf_picks_alpha_one_when_large_equals_small_base():
    # P = Q, so α = 1 makes P̃ = Q+ exactly and both squared terms vanish
    zb = logits(0, scale=2.0)
    ze = zb + logits(1, scale=1.0)
    weights, objective = rules.dlf_weights(zb.clone(), zb, [ze], rules.dlf_candidates(rules_grid(), 1))
    assert torch.allclose(weights[:, 0], torch.ones(4))
    assert objective.min(-1).values.max().item() < 1e-6


def test_dlf_picks_zero_when_expert_is_the_small_base_and_ties_go_to_the_smallest_alpha():
    zl, zb = logits(0), logits(1)
    weights, objective = rules.dlf_weights(zl, zb, [zb.clone(), zb.clone()], rules.dlf_candidates(rules_grid(), 2))
    assert torch.equal(weights, torch.zeros(4, 2))
    assert objective[:, 0].abs().max().item() < 1e-9


def test_dlf_bounds_restrict_each_expert():
    cands = rules.dlf_candidates(rules_grid(), 2, bounds=[(0.0, 0.5), (1.0, 2.0)])
    first, second = cands[:, 0], cands[:, 1]
    assert first.max().item() == pytest.approx(0.5) and second[second > 0].min().item() == pytest.approx(1.0)
    assert ((first > 0) & (second > 0)).sum() == 0  # one expert active per candidate
    assert cands[0].abs().sum() == 0  # α = 0 first


def test_dlf_support_restriction_is_exact_on_peaked_rows():
    zl = logits(0, rows=1, scale=40.0)  # very peaked: most tokens are far below the best one
    zb = logits(1, rows=1, scale=40.0)
    ze = zb + logits(2, rows=1, scale=1.0)
    cands = rules.dlf_candidates(rules_grid(), 1)
    d = (lsm(ze) - lsm(zb))[None]
    kept, _ = rules._restrict_support(lsm(zl), d, torch.tensor([0.0, 2.0]), 30.0)
    assert kept.shape[-1] < V * 0.7  # the restriction does apply here
    w_cut, obj_cut = rules.dlf_weights(zl, zb, [ze], cands)
    w_all, obj_all = rules.dlf_weights(zl, zb, [ze], cands, support_margin=math.inf)
    assert torch.equal(w_cut, w_all)
    torch.testing.assert_close(obj_cut, obj_all, rtol=1e-4, atol=1e-7)


def rules_grid() -> list[float]:
    return [round(0.1 * i, 1) for i in range(21)]


def test_top_k_and_top_p_keep_the_right_tokens():
    x = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    keep_k = torch.isfinite(warp(x, SamplingConfig(temperature=1.0, top_k=2)))
    assert keep_k.tolist() == [[True, True, False, False]]
    keep_p = torch.isfinite(warp(x, SamplingConfig(temperature=1.0, top_p=0.8)))
    assert keep_p.tolist() == [[True, True, False, False]]  # 0.5 + 0.3 reaches 0.8
    keep_p = torch.isfinite(warp(x, SamplingConfig(temperature=1.0, top_p=0.81)))
    assert keep_p.tolist() == [[True, True, True, False]]
    assert torch.isfinite(warp(x, SamplingConfig(temperature=1.0, top_p=0.1))).sum() == 1


def test_temperature_scales_the_fused_logits():
    x = logits(0)
    torch.testing.assert_close(warp(x, SamplingConfig(temperature=0.5)), x / 0.5)


def test_width_alignment_masks_non_tokens_and_zeroes_missing_deltas():
    large = torch.randn(2, 8)  # 6 real tokens + 2 padding rows
    base, expert = torch.randn(2, 5), torch.randn(2, 5)  # the small models lack token 5
    comps = aligned_components([large, base, expert], width=6)
    fused = lsm(rules.combine(comps, rules.eft_coefficients()))
    assert fused.shape == (2, 6)
    # token 5: only the large model speaks (delta 0); tokens 0-4: the full rule
    manual = lsm(large[:, :6])
    manual[:, :5] = manual[:, :5] + lsm(expert) - lsm(base)
    torch.testing.assert_close(fused, lsm(manual))
    same = aligned_components([large, large.clone(), large.clone()], width=6)
    assert all(c.shape == (2, 6) for c in same)


def test_dlf_with_negative_alphas_and_early_stopping_matches_the_naive_search():
    grid = [-1.0, -0.6, -0.3, 0.0, 0.2, 0.5, 0.9, 1.4, 2.0, 3.0]
    for seed in range(8):
        zl, zb = logits(100 + seed, rows=1, scale=2.0), logits(200 + seed, rows=1, scale=2.0)
        experts = [zb + logits(300 + seed + 7 * t, rows=1, scale=0.3 + 0.4 * t) for t in range(2)]
        weights, objective = rules.dlf_weights(zl, zb, experts, rules.dlf_candidates(grid, 2))
        obj, alpha, t = naive_dlf(zl[0], zb[0], [e[0] for e in experts], grid)
        chosen = weights[0]
        assert chosen.abs().max().item() == pytest.approx(abs(alpha), abs=1e-6)
        if alpha:
            assert int(chosen.abs().argmax()) == t and float(chosen.sum()) == pytest.approx(alpha)
        assert objective[0].min().item() == pytest.approx(obj, rel=1e-3, abs=1e-6)


def test_dlf_in_row_blocks_matches_the_naive_search_per_row():
    vocab = 20000  # 65536 // 20000 = 3 rows per block: blocks of 3 and 2
    g = torch.Generator().manual_seed(5)
    zl, zb = torch.randn(5, vocab, generator=g) * 2, torch.randn(5, vocab, generator=g) * 2
    ze = zb + torch.randn(5, vocab, generator=g) * 0.5
    weights, objective = rules.dlf_weights(zl, zb, [ze], rules.dlf_candidates(rules_grid(), 1))
    assert weights.shape == (5, 1) and objective.shape == (5, 21)
    for row in range(5):
        obj, alpha, _ = naive_dlf(zl[row], zb[row], [ze[row]], rules_grid())
        assert weights[row, 0].item() == pytest.approx(alpha, abs=1e-6)
        assert objective[row].min().item() == pytest.approx(obj, rel=1e-3, abs=1e-6)
