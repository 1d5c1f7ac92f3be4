"""The demo's verdict function against hand-made samples: ties are never "holds", noise is taken into account, and
the one-sided bounds agree with the normal approximation computed independently."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelops.eval.verdicts import FAILS, HOLDS, INCONCLUSIVE, better, combine, faster, judge, recovered, share, tally


def test_a_tie_is_inconclusive_never_holds() -> None:
    a = [1.5] * 24
    assert better(a, a).outcome == INCONCLUSIVE
    zeros = [0.0] * 24
    assert better(zeros, zeros).outcome == INCONCLUSIVE
    assert better(zeros, zeros, margin=0.0).text().startswith("inconclusive: mean(b − a) = 0 [0, 0]")


def test_clear_gains_hold_and_clear_losses_fail() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, 200)
    assert better(a, a + 1.0 + rng.normal(0, 0.3, 200)).outcome == HOLDS
    assert better(a, a - 1.0 + rng.normal(0, 0.3, 200)).outcome == FAILS


def test_overlapping_means_are_inconclusive() -> None:
    """EFT 1.39 vs best-of-16 0.92 used to 'hold' on overlapping intervals; a small noisy gap decides nothing."""
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, 24)
    b = a + rng.normal(0.05, 1.0, 24)
    assert better(a, b).outcome == INCONCLUSIVE


def test_bounds_match_the_normal_approximation() -> None:
    rng = np.random.default_rng(2)
    d = rng.normal(0.3, 1.0, 2000)
    v = better(np.zeros(2000), d)
    se = d.std(ddof=1) / math.sqrt(d.size)
    assert v.effect == pytest.approx(d.mean())
    assert v.low == pytest.approx(d.mean() - 1.6449 * se, abs=0.2 * se)
    assert v.high == pytest.approx(d.mean() + 1.6449 * se, abs=0.2 * se)


def test_non_inferiority_margin() -> None:
    a = np.ones(100)
    slightly_worse = a - 0.02
    assert better(a, slightly_worse).outcome == FAILS  # worse, every prompt
    assert better(a, slightly_worse, margin=0.05).outcome == HOLDS  # but within the stated margin
    assert better(a, a - 0.10, margin=0.05).outcome == FAILS


def test_shares_and_recovered_gains() -> None:
    expert = np.array([1.0, 0.0] * 50)  # mean 0.5
    keeps_96 = expert.copy()
    keeps_96[[0, 2]] = 0.0  # two of the 50 hits lost: 48/50 = 96% of the expert's score
    assert share(expert, keeps_96, at_least=0.9).effect == pytest.approx(0.96)
    assert share(expert, np.zeros(100), at_least=0.9).outcome == FAILS
    assert share(np.zeros(100), expert, at_least=0.9).outcome == INCONCLUSIVE  # the expert scores 0: no share
    base, tuned = np.zeros(100), np.ones(100)
    v = recovered(base, np.full(100, 0.95), tuned, at_least=0.9)
    assert v.outcome == HOLDS and v.effect == pytest.approx(0.95)
    assert recovered(base, np.full(100, 0.5), tuned, at_least=0.9).outcome == FAILS
    assert recovered(base, base, base, at_least=0.9).outcome == INCONCLUSIVE  # no gain to recover


def test_speed_ratio_judged_against_one() -> None:
    assert faster([0.85, 0.86, 0.84, 0.85]).outcome == FAILS
    assert faster([1.21, 1.30, 1.25, 1.27]).outcome == HOLDS
    assert faster([0.9, 1.1, 1.0, 1.05]).outcome == INCONCLUSIVE


def test_judge_and_tally() -> None:
    assert judge(0.1, 0.5, 0.0) == HOLDS and judge(-0.5, -0.1, 0.0) == FAILS and judge(-0.1, 0.1, 0.0) == INCONCLUSIVE
    assert tally(["holds: x", "fails: y", "inconclusive: z", "holds"]) == "2 hold, 1 fail, 1 inconclusive"
    assert combine([HOLDS, HOLDS]) == HOLDS and combine([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([INCONCLUSIVE, FAILS, HOLDS]) == FAILS
