"""Every merge method, one module per family, all in one table (`REGISTRY`).

Families: `weighted` (linear, passthrough, ExPO), `task_vectors` (task arithmetic, TIES, DARE, Breadcrumbs,
DELLA; sparsifiers in `sparsify`), `spherical` (SLERP, NuSLERP, Multi-SLERP, Karcher), `stock` (Model Stock),
`consensus` (SCE, RAM), `swap` (NearSwap, Arcee Fusion). Each method is a pure tensor function (float32 math,
inputs never modified) plus a registry entry with its parameters (mergekit's names and defaults), whether it
needs a base model, and its paper. Importing this package fills the table.
"""

from __future__ import annotations

from modelops.merge.methods import consensus, spherical, stock, swap, task_vectors, weighted
from modelops.merge.methods.sparsify import bernoulli, magnitude
from modelops.merge.methods.spherical import slerp
from modelops.merge.methods.task_vectors import merge_task_vectors, task_arithmetic, ties
from modelops.merge.methods.weighted import expo, linear
from modelops.merge.registry import REGISTRY, MergeMethod, Param, lookup

__all__ = [
    "REGISTRY",
    "bernoulli",
    "consensus",
    "expo",
    "get_method",
    "linear",
    "magnitude",
    "merge_task_vectors",
    "method_names",
    "methods_table",
    "slerp",
    "spherical",
    "stock",
    "swap",
    "task_arithmetic",
    "task_vectors",
    "ties",
    "weighted",
]


def get_method(name: str) -> MergeMethod:
    """The registered method called `name` (or one line naming the closest known one)."""
    return lookup(name)


def method_names() -> list[str]:
    return sorted({m.name for m in REGISTRY.values()})


def methods_table() -> str:
    """The Markdown table of every method (base model, parameters with mergekit's defaults, paper) for the docs."""
    rows = [
        "| method | base model | per-model parameters | global parameters | reference |",
        "|---|---|---|---|---|",
    ]

    def shown(p: Param) -> str:
        return f"`{p.name}` (required)" if p.required else f"`{p.name}` = {p.default}"

    for name in method_names():
        m = REGISTRY[name]
        per_model = ", ".join(shown(p) for p in m.params if p.per_model) or "–"
        common = ", ".join(shown(p) for p in m.params if not p.per_model) or "–"
        rows.append(f"| `{m.name}` | {m.base} | {per_model} | {common} | [{m.paper}]({m.paper_url}) |")
    return "\n".join(rows)
