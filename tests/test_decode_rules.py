"""The fusion rules, sampling filters and vocabulary helpers on hand-made and random tensors."""

from __future__ import annotations

import pytest
import torch

from modelops.decode import rules
from modelops.decode.sampling import ARGMAX_CHUNK, SamplingConfig, first_argmax, sample_rows, warp
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


def first_max_index(row: list[float]) -> int:
    """The first position of the row's maximum, NaN counting as the maximum (torch.argmax's rule), by hand."""
    for i, v in enumerate(row):
        if v != v:
            return i
    best = 0
    for i, v in enumerate(row):
        if v > row[best]:
            best = i
    return best


def test_first_argmax_is_the_first_maximum_of_every_row():
    c = ARGMAX_CHUNK
    for width in (7, 2 * c, 2 * c + 1, 5 * c, 5 * c + 37, 32000, 32001):
        x = torch.randn(6, width, generator=torch.Generator().manual_seed(width)).round(decimals=1)
        x[1, :] = 3.0  # a row of ties: column 0
        x[2, -1] = 50.0  # the maximum in the (possibly short) last chunk
        x[3, width // 2] = x[3, width - 1] = 40.0  # tie across chunks: the earlier one
        x[4, :] = float("-inf")
        x[5, width // 3] = float("nan")
        got = first_argmax(x)
        assert got.tolist() == [first_max_index(r) for r in x.tolist()], width
    y = torch.randn(2, 3, 5 * c + 3, generator=torch.Generator().manual_seed(1))  # leading dims kept
    assert first_argmax(y).shape == (2, 3)
    assert first_argmax(y).flatten().tolist() == [first_max_index(r) for r in y.reshape(6, -1).tolist()]
    ints = torch.randint(0, 5, (3, 5 * c), generator=torch.Generator().manual_seed(2))
    assert first_argmax(ints).tolist() == [first_max_index(r) for r in ints.tolist()]


def sparse_and_dense_rows(width: int) -> torch.Tensor:
    """Weights over `width` columns (300: blocks of 128, 128 and a short one of 44): a few columns on either side
    of block edges, and a dense random row."""
    w = torch.zeros(2, width)
    cols = [0, 127, 128, 255, 256, width - 1]
    w[0, cols] = torch.arange(1.0, 7.0)
    w[1] = torch.rand(width, generator=torch.Generator().manual_seed(4)) + 0.5
    return w


@pytest.mark.parametrize("width", [6, 300])
def test_sample_rows_draws_each_column_with_its_share_of_the_row(width):
    weights = torch.tensor(
        [
            [0.1, 0.0, 0.3, 0.2, 0.0, 0.4],  # zeros between positive weights
            [5.0, 1.0, 0.0, 0.0, 2.0, 2.0],  # not normalised
            [0.0, 0.0, 0.0, 0.0, 0.0, 1e-30],  # all the mass on the last column, and tiny
            [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # all on the first
        ]
    )
    if width != 6:
        weights = sparse_and_dense_rows(width)
    n = 20000
    draws = sample_rows(weights.repeat_interleave(n, 0), torch.Generator().manual_seed(3)).view(len(weights), n)
    for row, w in zip(draws, weights, strict=True):
        counts = torch.bincount(row, minlength=width).double()
        expected = (w.double() / w.double().sum()) * n
        assert (counts[expected == 0] == 0).all()  # a zero-weight column is never drawn
        positive = expected > 0
        if int(positive.sum()) > 1:  # Pearson's chi-square against w / sum(w)
            chi2 = float((((counts - expected) ** 2)[positive] / expected[positive]).sum())
            dof = torch.tensor((int(positive.sum()) - 1) / 2, dtype=torch.float64)
            assert float(torch.special.gammaincc(dof, torch.tensor(chi2 / 2, dtype=torch.float64))) > 1e-3
    again = sample_rows(weights.repeat_interleave(n, 0), torch.Generator().manual_seed(3)).view(len(weights), n)
    assert torch.equal(draws, again)  # seeded: reproducible
    for bad in (torch.zeros(1, 6), torch.tensor([[0.5, float("nan"), 0.5]])):
        with pytest.raises(ValueError, match="not finite"):
            sample_rows(bad)
