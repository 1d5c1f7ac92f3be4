"""What an extraction kept and what it left: per-module rows, a summary, a rich table (rendered by the CLI)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from modelops.lora.svd import overall_relative_error

REPORT_FILE = "extraction_report.json"


@dataclass
class ModuleRow:
    """One module (or loose tensor) of the model and how the adapter carries its change."""

    module: str
    kind: str  # linear | conv1d | embedding | output | tensor
    shape: tuple[int, int]  # (out, in)
    status: str  # lora | full (modules_to_save / lora_bias) | unchanged | skipped | reported (changed, not saved)
    rank: int | None = None
    energy: float | None = None  # share of ‖ΔW‖² kept by the rank-r truncation
    rel_error: float | None = None  # ‖ΔW − B·A‖ / ‖ΔW‖
    delta_norm: float | None = None
    method: str | None = None  # exact | randomized

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def summarize(rows: list[ModuleRow]) -> dict[str, Any]:
    """Mean and norm-weighted overall relative error and energy over the LoRA modules; counts of the rest."""
    lora = [r for r in rows if r.status == "lora"]
    errors = [r.rel_error or 0.0 for r in lora]
    norms = [r.delta_norm or 0.0 for r in lora]
    total = sum(n * n for n in norms)
    kept = sum((r.energy or 0.0) * (r.delta_norm or 0.0) ** 2 for r in lora)
    ranks = [r.rank or 0 for r in lora]
    out: dict[str, Any] = {
        "modules": len(lora),
        "mean_rel_error": round(sum(errors) / len(errors), 6) if errors else 0.0,
        "max_rel_error": round(max(errors), 6) if errors else 0.0,
        "overall_rel_error": round(overall_relative_error(errors, norms), 6),
        "energy_kept": round(kept / total, 6) if total else 1.0,
        "mean_rank": round(sum(ranks) / len(ranks), 2) if ranks else 0,
        "min_rank": min(ranks, default=0),
        "max_rank": max(ranks, default=0),
    }
    for status in ("full", "unchanged", "skipped", "reported"):
        out[status] = sum(r.status == status for r in rows)
    return out


def render_table(rows: list[ModuleRow], summary: dict[str, Any]) -> Any:
    """A rich Table of every LoRA module plus the modules saved whole, skipped or merely reported."""
    from rich.table import Table

    table = Table(title="LoRA extraction", show_lines=False)
    for col, just in (("module", "left"), ("kind", "left"), ("out×in", "right"), ("status", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for col in ("rank", "energy kept", "rel. error", "‖ΔW‖"):
        table.add_column(col, justify="right")
    for r in rows:
        if r.status == "unchanged":
            continue
        style = {"skipped": "yellow", "reported": "yellow"}.get(r.status)
        table.add_row(
            r.module,
            r.kind,
            f"{r.shape[0]}×{r.shape[1]}",
            r.status,
            "" if r.rank is None else str(r.rank),
            "" if r.energy is None else f"{r.energy:.2%}",
            "" if r.rel_error is None else f"{r.rel_error:.4f}",
            "" if r.delta_norm is None else f"{r.delta_norm:.3g}",
            style=style,
        )
    table.caption = (
        f"{summary['modules']} LoRA modules, ranks {summary['min_rank']}–{summary['max_rank']}; "
        f"rel. error mean {summary['mean_rel_error']:.4f}, overall {summary['overall_rel_error']:.4f}; "
        f"energy kept {summary['energy_kept']:.2%}; saved whole {summary['full']}, unchanged {summary['unchanged']}"
    )
    return table
