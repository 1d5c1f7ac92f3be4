"""An evaluation's results: the rich table, results.json, results.csv and the generations files."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelops.eval.metrics import Summary

CSV_FIELDS = (
    "system", "task", "metric", "n", "mean", "ci_low", "ci_high",
    "fluency", "fluency_ci_low", "fluency_ci_high", "seconds", "processes",
)  # fmt: skip


@dataclass
class TaskResult:
    """One (system, task) cell: the summary, fluency beside a reward if asked, and every row's record."""

    system: str
    task: str
    metric: str
    summary: Summary
    fluency: Summary | None = None
    seconds: float = 0.0
    processes: int = 1
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return self.summary.mean

    def row(self) -> dict[str, Any]:
        s, f = self.summary, self.fluency
        return {
            "system": self.system,
            "task": self.task,
            "metric": self.metric,
            "n": s.n,
            "mean": s.mean,
            "ci_low": s.low,
            "ci_high": s.high,
            "fluency": f.mean if f else None,
            "fluency_ci_low": f.low if f else None,
            "fluency_ci_high": f.high if f else None,
            "seconds": round(self.seconds, 3),
            "processes": self.processes,
        }


@dataclass
class EvalReport:
    """Every (system, task) result of one evaluation, in the order they were run."""

    results: list[TaskResult] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def get(self, system: str, task: str) -> TaskResult:
        for r in self.results:
            if r.system == system and r.task == task:
                return r
        raise KeyError((system, task))

    def to_dict(self) -> dict[str, Any]:
        return {"results": [r.row() for r in self.results], "config": self.config}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_jsonable) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for r in self.results:
            writer.writerow({k: ("" if v is None else v) for k, v in r.row().items()})
        return buf.getvalue()

    def to_markdown(self) -> str:
        """The table as Markdown (what a README shows), the same cells as `table()`."""
        lines = ["| system | task | metric | n | mean | 95% CI |", "|---|---|---|---|---|---|"]
        for r in self.results:
            pct = percent_metric(r.metric)
            s = r.summary
            ci = f"{fmt_value(s.low, pct)} – {fmt_value(s.high, pct)}" if s.low == s.low else "-"
            lines.append(f"| {r.system} | {r.task} | {r.metric} | {s.n} | {fmt_value(s.mean, pct)} | {ci} |")
        return "\n".join(lines) + "\n"

    def write(self, folder: Path) -> list[Path]:
        """results.json, results.csv, results.md and generations_<system>_<task>.jsonl into `folder` (which
        exists)."""
        written = [folder / "results.json", folder / "results.csv", folder / "results.md"]
        written[0].write_text(self.to_json(), encoding="utf-8")
        written[1].write_text(self.to_csv(), encoding="utf-8")
        written[2].write_text(self.to_markdown(), encoding="utf-8")
        for r in (r for r in self.results if r.records):
            path = folder / generations_name(r.system, r.task)
            with path.open("w", encoding="utf-8") as fh:
                for rec in r.records:
                    fh.write(json.dumps(rec, default=_jsonable, ensure_ascii=False) + "\n")
            written.append(path)
        return written

    def table(self, title: str | None = None) -> Any:
        """A rich Table: one row per (system, task); the metric's kind only (its full name is in the JSON)."""
        from rich.table import Table

        table = Table(title=title)
        for col in ("system", "task", "metric", "n", "mean", "95% CI", "fluent [95% CI]", "s"):
            table.add_column(col, justify="left" if col in ("system", "task", "metric") else "right")
        for r in self.results:
            kind = r.metric.split(":")[0]
            pct = percent_metric(r.metric)
            fl = r.fluency
            table.add_row(
                r.system, r.task, kind, str(r.summary.n), fmt_value(r.summary.mean, pct),
                f"{fmt_value(r.summary.low, pct)} – {fmt_value(r.summary.high, pct)}",
                f"{fmt_value(fl.mean, True)} [{fmt_value(fl.low, True)} – {fmt_value(fl.high, True)}]" if fl else "",
                f"{r.seconds:.1f}",
            )  # fmt: skip
        return table


def percent_metric(metric: str) -> bool:
    """Shares (exact match, accuracy) print as percentages; rewards and perplexities as numbers."""
    kind = metric.split(":")[0]
    return kind in ("exact", "choice", "lm-eval acc", "lm-eval acc_norm", "lm-eval exact_match")


def fmt_value(x: float, percent: bool) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.1f}%" if percent else f"{x:+.3f}"


def generations_name(system: str, task: str) -> str:
    """`generations_<system>_<task>.jsonl` with every character outside [A-Za-z0-9._-] made `-`."""

    def clean(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "x"

    return f"generations_{clean(system)}_{clean(task)}.jsonl"


def _jsonable(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, (set, tuple)):
        return list(x)
    return str(x)
