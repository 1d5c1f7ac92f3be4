"""The demo's verdict function against hand-made samples: ties are never "holds", noise is taken into account, and
the one-sided bounds agree with the normal approximation computed independently."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelops.eval.verdicts import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    Claim,
    better,
    combine,
    faster,
    judge,
    paired_bootstrap,
    pooled,
    recovered,
    share,
    tally,
)


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


def test_pooled_runs_are_resampled_within_each_run() -> None:
    """Run 1's prompts all gain 1, run 2's all lose 1: resampled within runs, every resample's mean is exactly 0;
    resampled across runs (no blocks), it is not."""
    a, b = [0.0] * 20, [1.0] * 10 + [-1.0] * 10
    diff = lambda x: x[1].mean(axis=-1) - x[0].mean(axis=-1)  # noqa: E731
    assert paired_bootstrap([a, b], diff, blocks=[10, 10])[1:] == (0.0, 0.0)
    low, high = paired_bootstrap([a, b], diff)[1:]
    assert low < -0.1 and high > 0.1
    with pytest.raises(ValueError, match="do not split"):
        paired_bootstrap([a, b], diff, blocks=[10, 9])


def test_a_pooled_claim_concatenates_runs_and_keeps_their_sizes() -> None:
    rng = np.random.default_rng(3)
    runs = [Claim("better", [list(x), list(x + 0.3 + rng.normal(0, 0.2, 12))], 0.0, "b − a") for x in
            (rng.normal(0, 1, 12) for _ in range(3))]  # fmt: skip
    each = [c.verdict() for c in runs]
    whole = pooled(runs)
    assert whole.runs == [12, 12, 12] and whole.columns[0] == [v for c in runs for v in c.columns[0]]
    v = whole.verdict()
    assert v.n == 36 and v.effect == pytest.approx(np.mean([e.effect for e in each]))
    assert v.outcome == HOLDS and (v.high - v.low) < min(e.high - e.low for e in each)  # more prompts: narrower
    assert pooled([whole, runs[0]]).runs == [12, 12, 12, 12]
    with pytest.raises(ValueError, match="not the same claim"):
        pooled([runs[0], Claim("better", runs[1].columns, 0.05)])


def test_claims_rebuild_each_verdict_kind() -> None:
    a, b, c = [0.0, 1.0] * 20, [1.0] * 40, [1.0] * 40
    assert Claim("better", [a, b]).verdict() == better(a, b)
    assert Claim("share", [b, a], 0.9).verdict() == share(b, a, at_least=0.9)
    assert Claim("recovered", [a, b, c], 0.9).verdict() == recovered(a, b, c, at_least=0.9)
    assert Claim("faster", [[1.1, 1.2, 1.15]], 1.0).verdict() == faster([1.1, 1.2, 1.15])
    assert Claim("identical", [[1.0, 1.0]]).verdict().outcome == HOLDS
    assert Claim("identical", [[1.0, 0.0]]).verdict().outcome == FAILS
    assert Claim.from_dict(Claim("better", [a, b], 0.05, "x").to_dict()) == Claim("better", [a, b], 0.05, "x")
