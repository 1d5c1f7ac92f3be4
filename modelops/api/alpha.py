"""`extrapolate --alpha auto` as the public API: score θ_dpo + α·(θ_dpo − θ_sft) over a grid on a task, in memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelops.devices import pick_device
from modelops.eval import alpha as alpha_search
from modelops.eval.alpha import AlphaPoint

__all__ = ["AlphaPoint", "choose_alpha"]


def choose_alpha(
    sft: str,
    dpo: str,
    grid: str | None,
    task: str,
    *,
    metric: str | None = None,
    zoo: str | None = None,
    limit: int | None = None,
    device: str = "auto",
    allow_pickle: bool = False,
    on_point: Callable[[AlphaPoint], None] | None = None,
) -> tuple[AlphaPoint, dict[str, Any]]:
    """Sweep α over `grid` (comma list; default −0.5…2 with 0 = the aligned model) on `task` and return the best
    point and the `alpha_search` record that goes into the output's recipe and card."""
    return alpha_search.choose_alpha(
        sft, dpo, grid, task, metric=metric, zoo=zoo, limit=limit, device=pick_device(device),
        allow_pickle=allow_pickle, on_point=on_point,
    )  # fmt: skip
