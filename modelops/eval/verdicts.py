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

A `Claim` keeps what a verdict was computed from (the per-prompt columns and the threshold), so runs over several
seeds can be pooled: `pooled` concatenates the runs' prompts and resamples within each run (a stratified paired
bootstrap), so every run keeps its weight and no prompt is paired with another run's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

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
    blocks: Sequence[int] | None = None,
) -> tuple[float, float, float]:
    """(estimate, 5th, 95th percentile) of `statistic` over prompt resamples shared by every column.

    `columns[k][i]` is system k's value on prompt i; `statistic` maps a (k, …, n) array to one value per leading
    resample row (it gets shape (k, R, n) for the resamples and (k, 1, n) for the estimate). `blocks`: the prompts
    are runs of these sizes, one after another, and each resample draws within each run."""
    x = np.asarray(columns, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError("paired_bootstrap: every column needs the same, non-zero number of prompts")
    n = x.shape[1]
    sizes = list(blocks) if blocks else [n]
    if sum(sizes) != n or min(sizes) < 1:
        raise ValueError(f"paired_bootstrap: blocks {sizes} do not split {n} prompts")
    starts = np.cumsum([0, *sizes[:-1]])
    estimate = float(statistic(x[:, None, :])[0])
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples)
    for lo in range(0, resamples, 256):
        k = min(256, resamples - lo)
        idx = np.concatenate(
            [start + rng.integers(0, size, size=(k, size)) for start, size in zip(starts, sizes, strict=True)], 1
        )
        stats[lo : lo + k] = statistic(x[:, idx])
    low, high = np.quantile(stats, [1.0 - LEVEL, LEVEL])
    return estimate, float(low), float(high)


def _mean(a: np.ndarray) -> np.ndarray:
    return a.mean(axis=-1)


Blocks = Sequence[int] | None


def better(
    a: Sequence[float], b: Sequence[float], *, margin: float = 0.0, seed: int = 0, blocks: Blocks = None
) -> Verdict:
    """b > a (margin 0: superiority) or b ≳ a − margin (non-inferiority), per prompt paired."""
    est, low, high = paired_bootstrap([a, b], lambda x: _mean(x[1] - x[0]), seed=seed, blocks=blocks)
    threshold = -margin if margin else 0.0  # not -0.0
    return Verdict(judge(low, high, threshold), est, low, high, threshold, "mean(b − a)", len(a))


def share(a: Sequence[float], b: Sequence[float], *, at_least: float, seed: int = 0, blocks: Blocks = None) -> Verdict:
    """mean(b) / mean(a) ≥ `at_least` (b keeps that share of a's score)."""

    def ratio(x: np.ndarray) -> np.ndarray:
        top, bottom = _mean(x[1]), _mean(x[0])
        return np.divide(top, bottom, out=np.full_like(top, np.nan), where=bottom != 0)

    est, low, high = paired_bootstrap([a, b], ratio, seed=seed, blocks=blocks)
    return _nan_safe(Verdict(judge(low, high, at_least), est, low, high, at_least, "mean(b) / mean(a)", len(a)))


def recovered(
    a: Sequence[float], b: Sequence[float], c: Sequence[float], *, at_least: float, seed: int = 0, blocks: Blocks = None
) -> Verdict:
    """(mean(b) − mean(a)) / (mean(c) − mean(a)) ≥ `at_least`: b recovers that share of the gain from a to c."""

    def gain(x: np.ndarray) -> np.ndarray:
        top, bottom = _mean(x[1]) - _mean(x[0]), _mean(x[2]) - _mean(x[0])
        return np.divide(top, bottom, out=np.full_like(top, np.nan), where=bottom != 0)

    est, low, high = paired_bootstrap([a, b, c], gain, seed=seed, blocks=blocks)
    what = "(mean(b) − mean(a)) / (mean(c) − mean(a))"
    return _nan_safe(Verdict(judge(low, high, at_least), est, low, high, at_least, what, len(a)))


def faster(ratios: Sequence[float], *, seed: int = 0, blocks: Blocks = None) -> Verdict:
    """Speed ratios of paired timing rounds (new ÷ old tokens/s): holds when their mean is above 1 with 95%
    confidence, fails when below."""
    est, low, high = paired_bootstrap([ratios], lambda x: _mean(x[0]), seed=seed, blocks=blocks)
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


@dataclass
class Claim:
    """What one verdict is computed from: its kind, the per-prompt columns (a, b[, c]) or timing ratios, and
    its threshold (the margin of `better`, the share of `share` / `recovered`)."""

    kind: str  # better | share | recovered | faster | identical
    columns: list[list[float]]
    param: float = 0.0
    label: str = ""
    runs: list[int] = field(default_factory=list)  # prompts per run when pooled (empty: one run)

    def verdict(self, seed: int = 0) -> Verdict:
        blocks = self.runs or None
        if self.kind == "better":
            return better(*self.columns, margin=self.param, seed=seed, blocks=blocks)
        if self.kind == "share":
            return share(*self.columns, at_least=self.param, seed=seed, blocks=blocks)
        if self.kind == "recovered":
            return recovered(*self.columns, at_least=self.param, seed=seed, blocks=blocks)
        if self.kind == "faster":
            return faster(self.columns[0], seed=seed, blocks=blocks)
        if self.kind == "identical":  # not a sampling question: every run must give the same tokens (1.0 each)
            same = float(np.mean(self.columns[0]))
            return Verdict(
                HOLDS if same == 1.0 else FAILS, same, same, same, 1.0, "share identical", len(self.columns[0])
            )
        raise ValueError(f"unknown claim kind {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Claim:
        return cls(**data)


def pooled(claims: Sequence[Claim]) -> Claim:
    """One claim over several runs of the same claim: each column is the runs' prompts one after another, and the
    verdict resamples within each run."""
    first = claims[0]
    if any((c.kind, c.param, len(c.columns)) != (first.kind, first.param, len(first.columns)) for c in claims):
        raise ValueError(f"pooled: the runs of {first.label or first.kind!r} are not the same claim")
    columns = [[v for c in claims for v in c.columns[k]] for k in range(len(first.columns))]
    runs = [n for c in claims for n in (c.runs or [len(c.columns[0])])]
    return Claim(first.kind, columns, first.param, first.label, runs)
