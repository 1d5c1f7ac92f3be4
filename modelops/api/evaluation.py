"""Evaluation as the public API: systems (models, fused recipes) × tasks → n, mean and a 95% interval per pair,
and the papers' orderings measured on the zoo."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelops.checkpoint.rows import ResumableRows
from modelops.decode.sampling import SamplingConfig
from modelops.errors import Interrupted, RecipeError
from modelops.eval.harness import EvalReport, SystemSpec, load_recipe, model_system
from modelops.eval.harness import evaluate as evaluate_systems
from modelops.eval.orderings import OrderingRun, measure_orderings, ordering_text
from modelops.eval.orderings import values as cell_values
from modelops.eval.tasks import DEFAULT_MAX_NEW, TaskSpec, load_task, zoo_task
from modelops.eval.verdicts import Verdict, better, faster, recovered, share, tally
from modelops.version import __version__

__all__ = [
    "EvalReport",
    "OrderingRun",
    "SystemSpec",
    "TaskSpec",
    "Verdict",
    "better",
    "cell_values",
    "end_worker_process",
    "eval_systems",
    "eval_tasks",
    "evaluate",
    "faster",
    "is_main_process",
    "measure_orderings",
    "model_system",
    "ordering_text",
    "recovered",
    "share",
    "tally",
    "zoo_task",
]  # fmt: skip


def eval_systems(
    models: Sequence[str] = (), recipes: Sequence[Path] = (), zoo: Path | None = None
) -> tuple[dict[str, SystemSpec], list[str]]:
    """Every system named by model specs and eval recipes (names must differ), and the recipes' default tasks."""
    found = [model_system(m, zoo) for m in models]
    tasks: list[str] = []
    for path in recipes:
        systems, there = load_recipe(Path(path), zoo)
        found += list(systems.values())
        tasks += [t for t in there if t not in tasks]
    out: dict[str, SystemSpec] = {}
    for system in found:
        if system.name in out:
            raise RecipeError(f"two systems are named {system.name!r}; give each a distinct name")
        out[system.name] = system
    return out, tasks


def eval_tasks(
    names: Sequence[str],
    *,
    metric: str | None = None,
    zoo: Path | None = None,
    fluency: str | None = None,
    max_new_tokens: int | None = None,
) -> list[TaskSpec]:
    """Tasks by zoo name or JSONL path, checked before any model is loaded."""
    return [load_task(t, metric, zoo=zoo, fluency=fluency, max_new_tokens=max_new_tokens) for t in names]


def evaluate(
    systems: dict[str, SystemSpec],
    tasks: Sequence[TaskSpec],
    *,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    limit: int | None = None,
    resamples: int = 1000,
    device: str = "auto",
    parallel_models: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    out: Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> EvalReport:
    """Every system on every task: n, mean and a 95% bootstrap interval per pair, and every generation.

    With `out`, results.json, results.csv and the generations are written there atomically (by the main process
    when several run under accelerate / torchrun; every process gets the whole report). In one process, each
    finished row is kept as it finishes; `resume` continues an interrupted evaluation with the same systems,
    tasks and sampling, running only the rows it had not finished."""
    import os

    from modelops.checkpoint import AtomicOutput, check_output_location
    from modelops.eval.processes import leave_process_group

    if out is not None:
        check_output_location(Path(out), [], overwrite=overwrite)
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if resume and (out is None or several):
        raise RecipeError("--resume needs --out, and one process (rows of several processes are not kept)")
    store = PartialRecords(Path(out), resume=resume) if out is not None and not several else None
    sampling = SamplingConfig(
        max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW, temperature=temperature, top_p=top_p, seed=seed
    )
    try:
        report = evaluate_systems(
            systems, list(tasks), sampling, batch_size, limit, resamples=resamples, seed=seed, device=device,
            progress=progress, parallel_models=parallel_models, store=store,
        )  # fmt: skip
    except KeyboardInterrupt as exc:
        if store is None:
            raise
        raise Interrupted(
            f"Interrupted: {store.kept} finished row(s) kept in {store.folder}; run the same command with --resume "
            "to continue",
            getattr(exc, "code", 130),
        ) from None
    finally:
        leave_process_group()
    if out is not None and is_main_process():
        with AtomicOutput(Path(out), overwrite=overwrite) as tmp:
            report.write(tmp)
    if store is not None:
        store.remove()
    return report


def is_main_process() -> bool:
    """True outside a torchrun group, and in its rank 0 (the one that prints and writes)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def end_worker_process() -> None:
    """A torchrun worker leaves here once its part is written (see `modelops.eval.processes`)."""
    from modelops.eval.processes import end_worker_process as end

    end()


class PartialRecords:
    """The records of an evaluation that writes to `out`, kept as rows finish: one resumable JSONL per
    (system, task) in a hidden folder beside `out`, keyed by the system (with its models' fingerprints), the task's
    rows and metric, and the sampling settings. Removed once the report is written."""

    def __init__(self, out: Path, *, resume: bool) -> None:
        out = Path(out).expanduser().resolve()
        self.folder = out.parent / f".{out.name}.modelops-partial"
        self.resume = resume
        self.kept = 0

    @contextmanager
    def open(self, system: str, spec: SystemSpec, task: TaskSpec, sampling: Any) -> Iterator[tuple[dict, Any]]:
        from modelops.api.decoding import model_fingerprint

        models = [m for m in (spec.large, spec.small_base, *(spec.experts or [])) if m]
        key = {
            "system": spec.describe(),
            "models": {m: model_fingerprint(m) for m in models},
            "task": {"name": task.name, "source": str(task.source), "metric": task.metric_label,
                     "rows": hashlib.sha256(json.dumps(task.rows, sort_keys=True, default=str).encode()).hexdigest()},
            "sampling": {k: getattr(sampling, k, None) for k in ("max_new_tokens", "temperature", "top_k", "top_p",
                                                                  "seed")},
            "version": __version__,
        }  # fmt: skip
        self.folder.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^\w.-]+", "_", f"{system}--{task.name}")
        with ResumableRows(self.folder / f"{name}.jsonl", key=key, resume=self.resume, id_field="index") as sink:
            before = self.kept
            self.kept += len(sink.done)

            def keep(record: dict[str, Any]) -> None:
                try:
                    sink.add(record)
                finally:  # a stop signal may land inside add, after the row is on disk
                    self.kept = before + len(sink.done)

            yield dict(sink.done), keep
            sink.keep()

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
