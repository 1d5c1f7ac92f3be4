"""Evaluation tasks: a zoo task by name, or a user JSONL file with a metric.

A task is rows of `{"id"?, "prompt", "reference"?, "choices"?, "answer"?}` plus one metric:
- `exact`: generated text == reference after `normalize` (zoo tasks: the zoo's own rule, answer then `<eos>`);
- `choice`: argmax over choices of the summed teacher-forced log-prob (CoDecoder.score), against `answer`;
- `reward:module:fn`: `fn(prompt, text) -> float` on the generation;
- `rm:PATH`: a sequence-classification checkpoint scores prompt + generation.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelops.errors import RecipeError
from modelops.runtime.zoo_names import find_zoo, load_manifest, resolve_model, zoo_roles  # noqa: F401  (eval's public names)

logger = logging.getLogger(__name__)

ZOO_TASKS = ("facts", "addition", "review")
METRICS = ("exact", "choice", "reward", "rm")
ZOO_UNFINISHED = " ..."  # the zoo reward counts a generation that did not stop as not fluent (zoo/scores.py)
DEFAULT_MAX_NEW = 64


@dataclass
class TaskSpec:
    """One evaluation task: rows, a metric and how to generate for it."""

    name: str
    rows: list[dict[str, Any]]
    metric: str = "exact"  # exact | choice | reward | rm
    reward: str | None = None  # module:function for metric reward
    rm: str | None = None  # folder of a sequence-classification checkpoint for metric rm
    fluency: str | None = None  # module:function(prompt, text) -> bool, reported beside a reward
    max_new_tokens: int | None = None  # None: the sampling config's value
    normalize: bool = True  # exact match through `normalize`
    require_eos: bool = False  # exact match only when the generation stopped by itself (zoo rule)
    unfinished_suffix: str | None = None  # appended before the reward fn sees an unfinished generation
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def metric_label(self) -> str:
        if self.metric == "reward":
            return f"reward:{self.reward}"
        if self.metric == "rm":
            return f"rm:{Path(self.rm or '').name}"
        return self.metric

    def limited(self, limit: int | None) -> TaskSpec:
        if limit is None or limit >= len(self.rows):
            return self
        from dataclasses import replace

        return replace(self, rows=self.rows[:limit])


# ---- metrics from flags -------------------------------------------------------------------------------------------
def parse_metric(text: str) -> dict[str, Any]:
    """`exact` | `choice` | `reward:module:fn` | `rm:PATH` → TaskSpec fields."""
    kind, _, rest = text.partition(":")
    if kind in ("exact", "choice") and not rest:
        return {"metric": kind}
    if kind == "reward" and rest.count(":") == 1 and all(rest.split(":")):
        return {"metric": "reward", "reward": rest}
    if kind == "rm" and rest:
        if not Path(rest).expanduser().is_dir():
            raise RecipeError(f"--metric {text}: {rest} is not a folder (a sequence-classification checkpoint)")
        return {"metric": "rm", "rm": str(Path(rest).expanduser())}
    raise RecipeError(f"--metric {text!r}: expected exact, choice, reward:module:function or rm:PATH")


def load_callable(spec: str) -> Callable[..., Any]:
    """`package.module:function` → the function (imported now, so a typo fails before any model loads)."""
    module_name, _, fn_name = spec.partition(":")
    if not module_name or not fn_name:
        raise RecipeError(f"{spec!r}: expected module:function, e.g. modelops.zoo.world:reward")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RecipeError(f"{spec}: cannot import {module_name} ({exc}); is it on PYTHONPATH?") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise RecipeError(f"{spec}: {module_name} has no function {fn_name!r}")
    return fn


# ---- loading tasks ------------------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows with a string `prompt`; `id` defaults to the line number."""
    from modelops.decode.spec import read_prompts

    return read_prompts(path, missing=f"task file not found (expected a JSONL file or one of {', '.join(ZOO_TASKS)})")


def default_metric(rows: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    """From the fields present: choices → choice, reference → exact, a `reward` field → that function."""
    if all("choices" in r for r in rows):
        return {"metric": "choice"}
    if all("reference" in r for r in rows):
        return {"metric": "exact"}
    rewards = {r.get("reward") for r in rows}
    if len(rewards) == 1 and isinstance(next(iter(rewards)), str):
        return {"metric": "reward", "reward": next(iter(rewards))}
    raise RecipeError(
        f'{path}: cannot tell the metric (rows need "reference", "choices" or a "reward" field); '
        "pass --metric exact|choice|reward:module:fn|rm:PATH"
    )


def check_rows(task: TaskSpec) -> None:
    """Every row has what its metric needs; the reward/fluency functions import."""
    for i, row in enumerate(task.rows, 1):
        if task.metric == "exact" and not isinstance(row.get("reference"), str):
            raise RecipeError(f'{task.source} row {i}: metric exact needs a string "reference"')
        if task.metric == "choice":
            choices = row.get("choices")
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                raise RecipeError(f'{task.source} row {i}: metric choice needs "choices": a list of >= 2 strings')
            answer_index(row, f"{task.source} row {i}")
    if task.metric == "reward":
        load_callable(task.reward or "")
    if task.fluency:
        load_callable(task.fluency)


def answer_index(row: dict[str, Any], where: str) -> int:
    """`answer` as an index into `choices`, or as the text of one of them."""
    answer, choices = row.get("answer"), row["choices"]
    if isinstance(answer, bool) or answer is None:
        raise RecipeError(f'{where}: "answer" must be an index into "choices" or the text of one')
    if isinstance(answer, int):
        if not 0 <= answer < len(choices):
            raise RecipeError(f'{where}: "answer" {answer} is outside 0..{len(choices) - 1}')
        return answer
    if isinstance(answer, str) and answer in choices:
        return choices.index(answer)
    raise RecipeError(f'{where}: "answer" {answer!r} is not one of the choices')


def zoo_task(name: str, zoo: Path | str | None = None) -> TaskSpec:
    """A zoo task scored the way the zoo scores its own models (modelops/zoo/scores.py)."""
    folder = find_zoo(zoo)
    info = load_manifest(folder).get("tasks", {}).get(name)
    if info is None:
        raise RecipeError(f"task {name!r} is not in the zoo build {folder}")
    rows = read_jsonl(folder / info["eval"])
    max_new = {"facts": 4, "addition": 5, "review": 8}.get(name)  # = modelops.zoo.scores.MAX_NEW
    if info["metric"] == "reward":
        return TaskSpec(
            name, rows, "reward", reward=info["reward"], fluency=info.get("fluency"), max_new_tokens=max_new,
            unfinished_suffix=ZOO_UNFINISHED, source=str(folder / info["eval"]),
        )  # fmt: skip
    return TaskSpec(
        name, rows, "exact", max_new_tokens=max_new, normalize=False, require_eos=True,
        source=str(folder / info["eval"]),
    )  # fmt: skip


def load_task(
    name_or_path: str,
    metric: str | None = None,
    *,
    zoo: Path | str | None = None,
    fluency: str | None = None,
    max_new_tokens: int | None = None,
) -> TaskSpec:
    """A zoo task by name (unless a file of that name exists) or a JSONL file; `metric` overrides the default."""
    path = Path(name_or_path).expanduser()
    if name_or_path in ZOO_TASKS and not path.is_file():
        task = zoo_task(name_or_path, zoo)
    else:
        rows = read_jsonl(path)
        task = TaskSpec(path.stem, rows, source=str(path), **(default_metric(rows, path) if metric is None else {}))
    if metric is not None:
        fields = parse_metric(metric)
        task.metric, task.reward, task.rm = fields["metric"], fields.get("reward"), fields.get("rm")
        if task.metric == "exact" and name_or_path not in ZOO_TASKS:
            task.normalize, task.require_eos = True, False
    if fluency is not None:
        task.fluency = fluency
    if max_new_tokens is not None:
        task.max_new_tokens = max_new_tokens
    check_rows(task)
    return task
