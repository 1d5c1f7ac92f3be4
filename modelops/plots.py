"""Pictures of what the tools measured, as PNG beside their JSON: ExPO's α curve and DLF's α trace.

matplotlib is an optional extra (`pip install "modelops[plots]"`). Without it each function returns None after
one line saying how to get the plots; nothing else changes. Figures are drawn with the Agg backend (no display).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MISSING = "matplotlib is not installed: plots skipped (pip install 'modelops[plots]' to get them)"
_warned = False


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or None (with one line, once per process) when it is missing."""
    global _warned
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        if not _warned:
            logger.warning(MISSING)
            _warned = True
        return None
    return plt


def alpha_curve_png(
    curve: Sequence[dict[str, Any]], path: Path, *, title: str = "", metric: str = "score"
) -> Path | None:
    """The α search: score (with its interval) and, when measured, the fluency rate, against α; the best α marked.

    `curve`: the `alpha_search.curve` records ({"alpha", "mean", "ci": [low, high], "fluency"?})."""
    plt = _pyplot()
    if plt is None or not curve:
        return None
    points = sorted(curve, key=lambda p: p["alpha"])
    alphas = [p["alpha"] for p in points]
    means = [p["mean"] for p in points]
    lows = [p["mean"] - p["ci"][0] for p in points]
    highs = [p["ci"][1] - p["mean"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.errorbar(alphas, means, yerr=[lows, highs], marker="o", capsize=3, color="tab:blue", label=metric)
    best = max(points, key=lambda p: p["mean"])
    ax.axvline(best["alpha"], color="tab:blue", linestyle=":", linewidth=1)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("α  (0 = the aligned model; < 0 toward the SFT)")
    ax.set_ylabel(metric, color="tab:blue")
    if any(p.get("fluency") is not None for p in points):
        twin = ax.twinx()
        fluent = [(p["alpha"], p["fluency"]) for p in points if p.get("fluency") is not None]
        twin.plot(*zip(*fluent, strict=True), marker="s", color="tab:orange", label="fluency rate")
        twin.set_ylabel("fluency rate", color="tab:orange")
        twin.set_ylim(-0.05, 1.05)
    ax.set_title(title or f"α search: best α = {best['alpha']:g}", fontsize=10)
    return _save(plt, fig, path)


def alpha_trace_png(rows: Sequence[dict[str, Any]], path: Path, *, title: str = "") -> Path | None:
    """DLF's chosen α per decoding step, per expert, averaged over the rows (a step where another expert, or none,
    is active counts as 0 for this one), with the number of rows still decoding at each step.

    `rows`: fuse-decode result rows with "alpha_trace": [{"expert": i | None, "alpha": a}, …]."""
    series, live = alpha_trace_series(rows)
    plt = _pyplot() if live else None
    if plt is None:
        return None
    steps = len(live)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for e, mean in series.items():
        ax.plot(range(steps), mean, marker=".", label=f"expert {e}")
    ax.set_xlabel("decoding step")
    ax.set_ylabel("mean chosen α")
    twin = ax.twinx()
    twin.plot(range(steps), live, color="grey", linewidth=0.8, linestyle="--")
    twin.set_ylabel("rows decoding", color="grey")
    if series:
        ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title or f"DLF: α per step ({live[0]} rows)", fontsize=10)
    return _save(plt, fig, path)


def alpha_trace_series(rows: Sequence[dict[str, Any]]) -> tuple[dict[int, list[float]], list[int]]:
    """What `alpha_trace_png` draws: per expert, the mean α at each step over the rows still decoding (0 where
    another expert or none was active; a joint step's own weight for each), and how many rows were still decoding
    at each step."""
    traces = [r["alpha_trace"] for r in rows if r.get("alpha_trace")]
    steps = max((len(t) for t in traces), default=0)
    live = [sum(len(t) > i for t in traces) for i in range(steps)]
    experts = sorted(
        {s["expert"] for t in traces for s in t if s["expert"] is not None}
        | {e for t in traces for s in t for e, w in enumerate(s.get("weights") or []) if w}
    )
    series = {e: [sum(_weight(t[i], e) for t in traces if len(t) > i) / live[i] for i in range(steps)] for e in experts}
    return series, live


def _weight(step: dict[str, Any], expert: int) -> float:
    """Expert `expert`'s α at one step (a joint step lists every expert's weight)."""
    if "weights" in step:
        return float(step["weights"][expert])
    return float(step["alpha"]) if step["expert"] == expert else 0.0


def _save(plt: Any, fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
