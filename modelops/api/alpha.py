"""`extrapolate --alpha auto`: evaluate ExPO's θ_dpo + α(θ_dpo − θ_sft) for a grid of α in memory, write only the
winner.

One loaded model is re-weighted in place per α by the merge registry's own ExPO function (no checkpoint per α).
Memory: the model plus two float32 copies of its weights (θ_dpo and θ_sft). The curve goes into the winner's
recipe and model card. It stands on the evaluation harness and the co-decoder, so it lives above both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from modelops.checkpoint import Checkpoint
from modelops.decode import CoDecoder, FusionRule
from modelops.decode.models import Member
from modelops.devices import pick_device
from modelops.errors import CheckpointError, ModelopsError, RecipeError
from modelops.eval.harness import SystemSpec, evaluate
from modelops.eval.tasks import load_task
from modelops.merge.methods.weighted import expo
from modelops.runtime.models import load_causal_lm

logger = logging.getLogger(__name__)

DEFAULT_ALPHA_GRID = [-0.5, -0.3, -0.1, 0.0, 0.1, 0.3, 0.5, 1.0, 2.5]


@dataclass
class AlphaPoint:
    alpha: float
    mean: float
    ci_low: float
    ci_high: float
    fluency: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"alpha": self.alpha, "mean": round(self.mean, 6), "ci": [round(self.ci_low, 6), round(self.ci_high, 6)]}
        if self.fluency is not None:
            out["fluency"] = round(self.fluency, 6)
        return out


def parse_alpha_grid(text: str) -> list[float]:
    try:
        grid = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ModelopsError(f"--alpha-grid {text!r}: expected a comma list such as -0.5,-0.1,0.1,0.5,1") from None
    if not grid or min(grid) < -1:
        raise ModelopsError(f"--alpha-grid {text!r}: needs at least one value, each >= -1")
    return grid


class Reweighter:
    """A loaded DPO model whose weights can be set to ExPO(θ_sft, θ_dpo, α) for any α, in place."""

    def __init__(self, model: Any, sft_spec: str, *, allow_pickle: bool = False) -> None:
        self.model = model
        self.params: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []
        aliases: dict[int, list[str]] = {}  # a tied weight is one parameter under several names
        for name, param in model.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(param), []).append(name)
        with Checkpoint.open(sft_spec, allow_pickle=allow_pickle) as sft:
            for name, param in model.named_parameters():
                key = next((n for n in aliases[id(param)] if n in sft), None)
                if key is None:
                    raise CheckpointError(
                        f"{sft_spec}: no tensor {name!r}, which the DPO model has; are they one family?"
                    )
                theta = param.detach().float().clone()
                ref = sft.get(key).float().to(theta.device)
                shared_rows = ref.dim() == theta.dim() and ref.shape[1:] == theta.shape[1:]
                if ref.shape != theta.shape and not (shared_rows and ref.shape[0] < theta.shape[0]):
                    raise CheckpointError(
                        f"{name}: shape {tuple(ref.shape)} in the SFT model but {tuple(theta.shape)} in the DPO model"
                    )
                self.params.append((param, theta, ref))

    @torch.no_grad()
    def set_alpha(self, alpha: float) -> None:
        for param, theta, ref in self.params:
            rows = ref.shape[0]  # added tokens (rows past the SFT's): kept as in the DPO model, as the merge does
            param[:rows].copy_(expo(ref, theta[:rows], alpha).to(param.dtype))
            param[rows:].copy_(theta[rows:].to(param.dtype))


def alpha_sweep(
    sft: str,
    dpo: str,
    grid: list[float],
    task: Any,
    *,
    sampling: Any = None,
    batch_size: int = 16,
    limit: int | None = None,
    device: str = "cpu",
    allow_pickle: bool = False,
    on_point: Callable[[AlphaPoint], None] | None = None,
    lm_eval_include: str | None = None,
) -> list[AlphaPoint]:
    """Score ExPO at every α of the grid on `task` (a TaskSpec, or "lm-eval:TASK" for an lm-evaluation-harness task
    whose metric is higher-is-better); α = 0 is the DPO model itself."""
    model, tok = load_causal_lm(dpo, device=device, allow_pickle=allow_pickle)
    weights = Reweighter(model, sft, allow_pickle=allow_pickle)
    decoder = CoDecoder([Member("large", dpo, model, tok)], FusionRule("single"))
    points = []
    for alpha in grid:
        weights.set_alpha(alpha)
        name = f"alpha={alpha:g}"
        system = {name: SystemSpec(name, decoder=decoder)}
        if isinstance(task, str):  # lm-eval:TASK
            res = _lm_eval_point(system, task.removeprefix(LM_EVAL), limit=limit, batch_size=batch_size, device=device,
                                 include_path=lm_eval_include)  # fmt: skip
        else:
            res = evaluate(system, [task], sampling, batch_size, limit, device=device).results[0]
        point = AlphaPoint(
            alpha, res.mean, res.summary.low, res.summary.high, res.fluency.mean if res.fluency else None
        )
        points.append(point)
        if on_point:
            on_point(point)
    weights.set_alpha(0.0)
    return points


LM_EVAL = "lm-eval:"  # a task of lm-evaluation-harness rather than a zoo task or a JSONL file


def _lm_eval_point(system: dict[str, SystemSpec], task: str, **options: Any) -> Any:
    """One α's row on an lm-eval task (zoo_facts… built in), refused when the metric is lower-is-better."""
    from modelops.api.evaluation import run_lm_eval

    run = run_lm_eval(system, [task], **options)
    (name,) = system
    raw = run.raw[name]
    metric = run.rows[0].metric.removeprefix("lm-eval ")
    better = raw.get("higher_is_better", {}).get(task, {}).get(metric, True)
    if not better:
        raise RecipeError(f"--eval lm-eval:{task}: its metric {metric} is lower-is-better; choose a task scored by acc")
    return run.rows[0]


def best_alpha(points: list[AlphaPoint]) -> AlphaPoint:
    """Highest mean; ties go to the α closest to 0 (the least change to the DPO model)."""
    return max(points, key=lambda p: (p.mean, -abs(p.alpha)))


def choose_alpha(
    sft: str,
    dpo: str,
    grid_text: str | None,
    task_name: str,
    *,
    metric: str | None = None,
    zoo: str | None = None,
    limit: int | None = None,
    device: str = "auto",
    allow_pickle: bool = False,
    on_point: Callable[[AlphaPoint], None] | None = None,
    lm_eval_include: str | None = None,
) -> tuple[AlphaPoint, dict[str, Any]]:
    """Sweep α over the grid (comma list; default −0.5…2.5, with 0 = the aligned model) on the task and return the
    best point plus the `alpha_search` record that goes into the output's recipe and card."""
    device = pick_device(device)
    grid = parse_alpha_grid(grid_text) if grid_text else list(DEFAULT_ALPHA_GRID)
    task = task_name if task_name.startswith(LM_EVAL) else load_task(task_name, metric, zoo=zoo)
    points = alpha_sweep(sft, dpo, grid, task, limit=limit, device=device, allow_pickle=allow_pickle, on_point=on_point,
                         lm_eval_include=lm_eval_include)  # fmt: skip
    best = best_alpha(points)
    if isinstance(task, str):
        search = {"task": task, "metric": "lm-eval", "n": limit, "best_alpha": best.alpha}
    else:
        n = min(limit, len(task.rows)) if limit else len(task.rows)
        search = {"task": task.name, "metric": task.metric_label, "n": n, "best_alpha": best.alpha}
    search["curve"] = [p.to_dict() for p in points]
    return best, {"alpha_search": search}
