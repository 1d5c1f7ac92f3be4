"""Evaluation as the public API: systems (models, fused recipes) × tasks → n, mean and a 95% interval per pair,
and the papers' orderings measured on the zoo."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelops.checkpoint.rows import ResumableRows
from modelops.decode.sampling import SamplingConfig
from modelops.errors import Interrupted, RecipeError
from modelops.eval.harness import EvalReport, SystemSpec, load_recipe, model_system
from modelops.eval.harness import evaluate as evaluate_systems
from modelops.eval.orderings import OrderingRun, measure_orderings, ordering_text
from modelops.eval.orderings import values as cell_values
from modelops.eval.report import TaskResult
from modelops.eval.tasks import DEFAULT_MAX_NEW, TaskSpec, load_task, zoo_task
from modelops.eval.verdicts import Claim, Verdict, better, combine, faster, pooled, recovered, share, tally
from modelops.version import __version__

__all__ = [
    "Claim",
    "EvalReport",
    "LmEvalRun",
    "OrderingRun",
    "SystemSpec",
    "TaskSpec",
    "Verdict",
    "better",
    "cell_values",
    "combine",
    "end_worker_process",
    "eval_systems",
    "eval_tasks",
    "evaluate",
    "faster",
    "is_main_process",
    "measure_orderings",
    "model_system",
    "ordering_text",
    "pooled",
    "recovered",
    "run_lm_eval",
    "share",
    "tally",
    "zoo_lm_eval_tasks",
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
    lm_eval_tasks: Sequence[str] = (),
    lm_eval_include: Path | str | None = None,
) -> EvalReport:
    """Every system on every task: n, mean and a 95% bootstrap interval per pair, and every generation.

    With `out`, results.json, results.csv and the generations are written there atomically (by the main process
    when several run under accelerate / torchrun; every process gets the whole report). Each finished row is kept
    as it finishes (by every process); `resume` continues an interrupted evaluation with the same systems,
    tasks and sampling, running only the rows it had not finished, with any number of processes. `lm_eval_tasks` run through lm-evaluation-harness
    on the same systems; their rows join the report and lm-eval's own results go to `out/lm_eval_results.json`."""
    from modelops.checkpoint import AtomicOutput, check_output_location
    from modelops.eval.processes import leave_process_group

    if out is not None:
        check_output_location(Path(out), [], overwrite=overwrite)
    if resume and out is None:
        raise RecipeError("--resume needs --out (the folder of the interrupted evaluation)")
    store = PartialRecords(Path(out), resume=resume) if out is not None else None
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
    raw = None
    if lm_eval_tasks:
        run = run_lm_eval(systems, lm_eval_tasks, include_path=lm_eval_include, limit=limit, batch_size=batch_size,
                          device=device)  # fmt: skip
        report.results += run.rows
        raw = run.raw
    if out is not None and is_main_process():
        with AtomicOutput(Path(out), overwrite=overwrite) as tmp:
            report.write(tmp)
            if raw is not None:
                (tmp / "lm_eval_results.json").write_text(json.dumps(raw, indent=1, default=str))
    if store is not None and is_main_process():
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
    (system, task) and process in a hidden folder beside `out`, keyed by the system (with its models'
    fingerprints), the task's rows and metric, and the sampling settings. A resume reads every process's file,
    whatever the process count was, and each process appends to its own. Removed once the report is written."""

    def __init__(self, out: Path, *, resume: bool) -> None:
        import os

        self.out = out = Path(out).expanduser().resolve()
        self.folder = out.parent / f".{out.name}.modelops-partial"
        self.resume = resume
        self.rank, self.world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        self.kept = 0
        self._fingerprints: dict[str, str] = {}  # a model in several pairs is read once

    @contextmanager
    def open(self, system: str, spec: SystemSpec, task: TaskSpec, sampling: Any) -> Iterator[tuple[dict, Any]]:
        models = [m for m in (spec.large, spec.small_base, *(spec.experts or [])) if m]
        key = {
            "system": spec.describe(),
            "models": {m: self._fingerprint(m) for m in models},
            "task": {"name": task.name, "source": str(task.source), "metric": task.metric_label,
                     "rows": hashlib.sha256(json.dumps(task.rows, sort_keys=True, default=str).encode()).hexdigest()},
            "sampling": {k: getattr(sampling, k, None) for k in ("max_new_tokens", "temperature", "top_k", "top_p",
                                                                  "seed")},
            "version": __version__,
        }  # fmt: skip
        self.folder.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^\w.-]+", "_", f"{system}--{task.name}")
        own = self.folder / (f"{name}.jsonl" if self.rank == 0 else f"{name}.rank{self.rank}.jsonl")
        with ResumableRows(own, key=key, resume=self.resume, id_field="index") as sink:
            others = self._other_processes(name, own, sink.key)
            before = self.kept
            self.kept += len(sink.done) + len(others)

            def keep(record: dict[str, Any]) -> None:
                try:
                    sink.add(record)
                finally:  # a stop signal may land inside add, after the row is on disk
                    self.kept = before + len(sink.done)

            yield {**others, **sink.done}, keep
            sink.keep()

    def _other_processes(self, name: str, own: Path, key: dict[str, Any]) -> dict[int, dict[str, Any]]:
        """The finished records in the other processes' files of this (system, task): on a resume, those of an
        interrupted run with any process count (checked against `key`); otherwise none, and the files of process
        numbers this run does not have are removed (each one it has is started over by its own process)."""
        from modelops.checkpoint.rows import matching_rows, partial_rows_path

        found: dict[int, dict[str, Any]] = {}
        pattern = f".{name}.rank*.jsonl.modelops-partial.jsonl"  # `name` holds no glob characters
        for path in [partial_rows_path(self.folder / f"{name}.jsonl"), *self.folder.glob(pattern)]:
            number = re.search(r"\.rank(\d+)\.jsonl\.modelops-partial\.jsonl$", path.name)
            rank = int(number.group(1)) if number else 0
            if path == partial_rows_path(own) or not path.exists():
                continue
            if self.resume:
                found.update(matching_rows(path, key, self.out, "index")[0])
            elif rank >= self.world and self.rank == 0:
                path.unlink(missing_ok=True)
        return found

    def _fingerprint(self, model: str) -> str:
        from modelops.api.decoding import model_fingerprint

        if model not in self._fingerprints:
            self._fingerprints[model] = model_fingerprint(model)
        return self._fingerprints[model]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class LmEvalRun:
    """lm-eval's numbers for each system: rows for modelops' table, and lm-eval's own results per system."""

    rows: list[TaskResult] = field(default_factory=list)
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)


def zoo_lm_eval_tasks(zoo: Path | str | None = None) -> Path:
    """The zoo's facts task as local lm-eval tasks (zoo_facts, zoo_facts_mc, zoo_facts_text), written once per
    zoo build under the cache; pass the folder as lm-eval's `--include_path`."""
    from modelops.cache import cache_root
    from modelops.eval.lmeval import write_zoo_tasks
    from modelops.runtime.zoo_names import find_zoo

    folder = find_zoo(zoo)
    facts = zoo_task("facts", folder)
    target = cache_root() / "lm_eval_tasks" / folder.name
    return write_zoo_tasks(facts.rows, facts.max_new_tokens or DEFAULT_MAX_NEW, target)


@functools.lru_cache(maxsize=4)
def lm_eval_task_manager(include_paths: tuple[str, ...] = ()) -> Any:
    """lm-eval's task index, built once per set of include paths: building one reads every task YAML lm-eval ships
    (11–14 s here), which an α search would otherwise pay at every α."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_paths) or None)


def run_lm_eval(
    systems: dict[str, SystemSpec],
    tasks: Sequence[str],
    *,
    include_path: Path | str | None = None,
    zoo: Path | str | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    device: str = "auto",
) -> LmEvalRun:
    """lm-evaluation-harness tasks on each system, the system's co-decoder standing in as lm-eval's model. Zoo task
    names (zoo_facts, zoo_facts_mc, zoo_facts_text) are found without an include path. Each row's interval is
    mean ± 1.96 × lm-eval's standard error."""
    import logging

    import lm_eval as harness
    from datasets.utils.logging import disable_progress_bar

    from modelops.devices import pick_device
    from modelops.eval.lmeval import ZOO_LM_EVAL_TASKS, ModelopsLM
    from modelops.eval.metrics import Summary

    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its per-run seed and config lines; results come back
    disable_progress_bar()
    paths = [str(include_path)] if include_path else []
    if any(t in ZOO_LM_EVAL_TASKS for t in tasks):
        paths.append(str(zoo_lm_eval_tasks(zoo)))
    manager = lm_eval_task_manager(tuple(paths))
    run, dev = LmEvalRun(), pick_device(device)
    for name, system in systems.items():
        decoder = system.build(dev)
        try:
            model = ModelopsLM(decoder=decoder, batch_size=batch_size)
            result = harness.simple_evaluate(model=model, tasks=list(tasks), task_manager=manager, limit=limit)
        finally:
            if system.decoder is None:
                decoder.close()
        keep = ("results", "n-samples", "higher_is_better", "configs", "versions")
        run.raw[name] = {k: result[k] for k in keep if k in result}
        for task in tasks:
            metrics = result["results"][task]
            key = next(k for k in metrics if "," in k and "stderr" not in k)
            mean = float(metrics[key])
            err = metrics.get(key.replace(",", "_stderr,", 1))
            half = 1.96 * float(err) if isinstance(err, (int, float)) else float("nan")  # no stderr: no interval
            n = int(result["n-samples"][task]["effective"])
            label = f"lm-eval {key.split(',')[0]}"
            run.rows.append(TaskResult(name, task, label, Summary(n, mean, mean - half, mean + half)))
    return run
