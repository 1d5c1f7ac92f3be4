"""One verdict for every claim the demo checks: holds, fails or inconclusive, with the effect and its interval.

Claims compare systems on the same prompts, so the test is paired: a bootstrap that resamples prompts (the same
resample for every system) gives the distribution of the effect, and a one-sided 95% bound decides.

- "a < b" (b is better): holds when the lower bound of mean(b − a) is above 0; fails when the upper bound is
  below 0; otherwise (a tie included) inconclusive.
- "a ≲ b" (b is not worse, within a margin δ stated with the claim): holds when the lower bound of mean(b − a)
  is above −δ; fails when the upper bound is below −δ; otherwise inconclusive.
- A share ("b keeps ≥ 90% of a's score", "b recovers ≥ 90% of the gain from a to c"): the same bounds on the
  ratio of means, against the threshold.

Each bound is one-sided at 95% (the 5th / 95th percentile of the bootstrap distribution); the interval printed
beside the effect is the two-sided 90% one made of those two bounds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"
LEVEL = 0.95  # one-sided


@dataclass(frozen=True)
class Verdict:
    """The outcome of one claim: the verdict, the effect (what was estimated) and its bounds."""

    outcome: str  # holds | fails | inconclusive
    effect: float
    low: float  # one-sided 95% lower bound
    high: float  # one-sided 95% upper bound
    threshold: float  # what the bounds are judged against
    what: str  # e.g. "mean(b − a)", "mean(b) / mean(a)"
    n: int

    def text(self, digits: int = 3) -> str:
        f = f"{{:.{digits}g}}"
        return (
            f"{self.outcome}: {self.what} = {f.format(self.effect)} [{f.format(self.low)}, {f.format(self.high)}] "
            f"vs {f.format(self.threshold)} (paired bootstrap, one-sided 95%, n = {self.n})"
        )


def judge(low: float, high: float, threshold: float) -> str:
    """Above the threshold with 95% confidence: holds; below it: fails; neither: inconclusive."""
    if low > threshold:
        return HOLDS
    if high < threshold:
        return FAILS
    return INCONCLUSIVE


def paired_bootstrap(
    columns: Sequence[Sequence[float]],
    statistic: Callable[[np.ndarray], np.ndarray],
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(estimate, 5th, 95th percentile) of `statistic` over prompt resamples shared by every column.

    `columns[k][i]` is system k's value on prompt i; `statistic` maps a (k, …, n) array to one value per leading
    resample row (it gets shape (k, R, n) for the resamples and (k, 1, n) for the estimate)."""
    x = np.asarray(columns, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError("paired_bootstrap: every column needs the same, non-zero number of prompts")
    n = x.shape[1]
    estimate = float(statistic(x[:, None, :])[0])
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples)
    for lo in range(0, resamples, 256):
        k = min(256, resamples - lo)
        idx = rng.integers(0, n, size=(k, n))
        stats[lo : lo + k] = statistic(x[:, idx])
    low, high = np.quantile(stats, [1.0 - LEVEL, LEVEL])
    return estimate, float(low), float(high)


def _mean(a: np.ndarray) -> np.ndarray:
    return a.mean(axis=-1)


def better(a: Sequence[float], b: Sequence[float], *, margin: float = 0.0, seed: int = 0) -> Verdict:
    """b > a (margin 0: superiority) or b ≳ a − margin (non-inferiority), per prompt paired."""
    est, low, high = paired_bootstrap([a, b], lambda x: _mean(x[1] - x[0]), seed=seed)
    threshold = -margin if margin else 0.0  # not -0.0
    return Verdict(judge(low, high, threshold), est, low, high, threshold, "mean(b − a)", len(a))


def share(a: Sequence[float], b: Sequence[float], *, at_least: float, seed: int = 0) -> Verdict:
    """mean(b) / mean(a) ≥ `at_least` (b keeps that share of a's score)."""

    def ratio(x: np.ndarray) -> np.ndarray:
        top, bottom = _mean(x[1]), _mean(x[0])
        return np.divide(top, bottom, out=np.full_like(top, np.nan), where=bottom != 0)

    est, low, high = paired_bootstrap([a, b], ratio, seed=seed)
    return _nan_safe(Verdict(judge(low, high, at_least), est, low, high, at_least, "mean(b) / mean(a)", len(a)))


def recovered(a: Sequence[float], b: Sequence[float], c: Sequence[float], *, at_least: float, seed: int = 0) -> Verdict:
    """(mean(b) − mean(a)) / (mean(c) − mean(a)) ≥ `at_least`: b recovers that share of the gain from a to c."""

    def gain(x: np.ndarray) -> np.ndarray:
        top, bottom = _mean(x[1]) - _mean(x[0]), _mean(x[2]) - _mean(x[0])
        return np.divide(top, bottom, out=np.full_like(top, np.nan), where=bottom != 0)

    est, low, high = paired_bootstrap([a, b, c], gain, seed=seed)
    what = "(mean(b) − mean(a)) / (mean(c) − mean(a))"
    return _nan_safe(Verdict(judge(low, high, at_least), est, low, high, at_least, what, len(a)))


def faster(ratios: Sequence[float], *, seed: int = 0) -> Verdict:
    """Speed ratios of paired timing rounds (new ÷ old tokens/s): holds when their mean is above 1 with 95%
    confidence, fails when below."""
    est, low, high = paired_bootstrap([ratios], lambda x: _mean(x[0]), seed=seed)
    return Verdict(judge(low, high, 1.0), est, low, high, 1.0, "speed ratio", len(ratios))


def _nan_safe(v: Verdict) -> Verdict:
    """A ratio whose denominator can be 0 in a resample (no score, no gain to recover) decides nothing."""
    if any(np.isnan(x) for x in (v.effect, v.low, v.high)):
        return Verdict(INCONCLUSIVE, v.effect, v.low, v.high, v.threshold, v.what + " (undefined: zero base)", v.n)
    return v


def combine(outcomes: Sequence[str]) -> str:
    """Several claims as one: fails if one fails, holds if all hold, otherwise inconclusive."""
    if FAILS in outcomes:
        return FAILS
    return HOLDS if outcomes and all(o == HOLDS for o in outcomes) else INCONCLUSIVE


def tally(verdicts: Sequence[str]) -> str:
    """ "3 hold, 1 fails, 2 inconclusive" from verdict texts (their first word)."""
    words = [v.split(":", 1)[0].split()[0] if v else "" for v in verdicts]
    n = {k: sum(w == k for w in words) for k in (HOLDS, FAILS, INCONCLUSIVE)}
    return f"{n[HOLDS]} hold, {n[FAILS]} fail, {n[INCONCLUSIVE]} inconclusive"
