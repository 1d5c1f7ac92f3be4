"""One harness for a single model, a merged model or any fused configuration: systems × tasks → EvalReport.

Systems come from model specs and recipes (one system, or a compare recipe's `systems:`); each is run on each task
by `eval.running` (data-parallel under accelerate), and summarised with a bootstrap interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from modelops.decode.spec import check_dlf_mode, check_schedule, renamed
from modelops.errors import RecipeError
from modelops.eval.metrics import summarize
from modelops.eval.processes import distributed_state
from modelops.eval.report import EvalReport, TaskResult
from modelops.eval.running import OnRecord, Progress, run_task
from modelops.eval.tasks import TaskSpec, load_task, resolve_model

logger = logging.getLogger(__name__)


class RecordStore(Protocol):
    """Where finished rows' records are kept: `open(system, spec, task, sampling)` is a context manager giving the
    records already kept (row number -> record) and the callable that keeps one more."""

    def open(
        self, system: str, spec: SystemSpec, task: TaskSpec, sampling: Any
    ) -> AbstractContextManager[tuple[dict[int, dict[str, Any]], OnRecord | None]]: ...


SEARCH_KEYS = ("beam_width", "successors", "chunk_len", "n", "speculative")  # FusionRule's search/speculative knobs
# a system's own sampling (search rules want temperature 0.7, top-k 50); the eval flags give the rest
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "seed", "stop", "max_new_tokens")
SYSTEM_KEYS = ("name", "model", "large", "small_base", "experts", "rule", "weights", "gamma", "dlf_grid",
               "dlf_bounds", "dlf_mode", "chat_template_for", "dtype", "tasks", *SEARCH_KEYS, "speculative_schedule",
               *SAMPLING_KEYS)  # fmt: skip


@dataclass
class SystemSpec:
    """A model or a fused configuration; field names follow FusionRule / CoDecoder.load. `decoder`: prebuilt."""

    name: str
    large: str = ""
    small_base: str | None = None
    experts: list[str] = field(default_factory=list)
    rule: str = "single"
    weights: list[float] = field(default_factory=list)
    gamma: float = 1.0
    dlf_grid: list[float] | None = None
    dlf_bounds: list[tuple[float, float]] | None = None
    dlf_mode: str | None = None
    chat_template_for: str = "none"
    dtype: str | None = None
    beam_width: int = 4  # cbs: W
    successors: int = 4  # cbs: K
    chunk_len: int = 5  # cbs: L
    n: int = 16  # bon: N
    speculative: int = 0  # eft/proxy: tokens drafted by the expert per round
    speculative_schedule: str = "constant"  # or heuristic (the draft length adapts)
    sampling: dict[str, Any] = field(default_factory=dict)  # overrides of the eval's SamplingConfig
    decoder: Any = None  # a CoDecoder built by the caller (e.g. weights updated in place): used as is
    zoo: str | None = None  # where `zoo:ROLE` entries that name `{task}` resolve, once the task is known

    @property
    def per_task(self) -> bool:
        """Model entries that name `{task}` (e.g. `zoo:sft_{task}`): one system per task."""
        return any("{task}" in m for m in [self.large, self.small_base or "", *self.experts])

    def for_task(self, task: str) -> SystemSpec:
        def fill(m: str) -> str:
            return resolve_model(m.replace("{task}", task), self.zoo)

        small = fill(self.small_base) if self.small_base else None
        return replace(self, large=fill(self.large), small_base=small, experts=[fill(e) for e in self.experts])

    def fusion_rule(self) -> Any:
        from modelops.decode.engine import FusionRule

        return FusionRule.from_spec(self, self.rule, dlf_grid=self.dlf_grid or None)  # empty grid: the default

    def build(self, device: str = "cpu", *, parallel: bool = False) -> Any:
        """The CoDecoder for this system (or the prebuilt one); `parallel`: small models on a second thread."""
        from modelops.decode.codecoder import CoDecoder

        if self.decoder is not None:
            return self.decoder
        return CoDecoder.load(
            self.large, self.small_base, self.experts, self.fusion_rule(),
            chat_template_for=self.chat_template_for, device=device, dtype=self.dtype, parallel=parallel,
        )  # fmt: skip

    def describe(self) -> dict[str, Any]:
        if self.decoder is not None:
            return {"name": self.name, "rule": self.decoder.rule.name, "prebuilt": True}
        out = {"name": self.name, "large": self.large, "rule": self.rule}
        if self.rule != "single":
            out.update(small_base=self.small_base, experts=self.experts, weights=self.weights, gamma=self.gamma)
        if self.rule in ("cbs", "bon"):
            out.update({k: getattr(self, k) for k in ("beam_width", "successors", "chunk_len", "n")})
        if self.sampling:
            out["sampling"] = dict(self.sampling)
        return out


def model_system(spec: str, zoo: Path | str | None = None, name: str | None = None) -> SystemSpec:
    """One model (rule single); `zoo:ROLE` resolves inside the zoo build (`zoo:sft_{task}`: per task)."""
    path = spec if "{task}" in spec else resolve_model(spec, zoo)
    name = name or (spec[4:] if spec.startswith("zoo:") else Path(spec).name or spec)
    return SystemSpec(name, large=path, zoo=str(zoo) if zoo is not None else None)


def system_from_dict(data: dict[str, Any], *, name: str, where: str, base: Path, zoo: Path | str | None) -> SystemSpec:
    """A recipe mapping → SystemSpec; `model:` is `large:` with rule single; relative paths from the recipe."""
    data = renamed(dict(data), where)
    unknown = set(data) - set(SYSTEM_KEYS) - {"recipe"}
    if unknown:
        raise RecipeError(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; known: {', '.join(SYSTEM_KEYS)}"
        )

    def model(spec: Any) -> str:
        if not isinstance(spec, str) or not spec:
            raise RecipeError(f"{where}: model entries must be non-empty strings, got {spec!r}")
        local = base / spec
        if "{task}" in spec:  # resolved per task (SystemSpec.for_task)
            return spec
        return resolve_model(spec, zoo) if spec.startswith("zoo:") or not local.exists() else str(local)

    if "model" in data and "large" in data:
        raise RecipeError(f"{where}: give either model (one model) or large (a fused configuration), not both")
    large = data.get("model", data.get("large"))
    if large is None:
        raise RecipeError(f"{where}: no model: give `model: PATH` or `large: PATH` (zoo:ROLE works)")
    experts = data.get("experts") or []
    experts = experts if isinstance(experts, list) else [experts]
    rule = data.get("rule", "single" if "model" in data or not experts else "eft")
    weights = data.get("weights") or []
    weights = weights if isinstance(weights, list) else [weights]
    spec = SystemSpec(
        str(data.get("name", name)), large=model(large),
        small_base=model(data["small_base"]) if data.get("small_base") else None,
        experts=[model(e) for e in experts], rule=str(rule), weights=[float(w) for w in weights],
        gamma=float(data.get("gamma", 1.0)), chat_template_for=str(data.get("chat_template_for", "none")),
        dtype=data.get("dtype"), zoo=str(zoo) if zoo is not None else None,
    )  # fmt: skip
    for key in SEARCH_KEYS:
        if data.get(key) is not None:
            setattr(spec, key, int(data[key]))
    spec.speculative_schedule = str(data.get("speculative_schedule", "constant"))
    check_schedule(spec.speculative_schedule, f"{where}: speculative_schedule")
    spec.sampling = {k: data[k] for k in SAMPLING_KEYS if data.get(k) is not None}
    if isinstance(spec.sampling.get("stop"), str):
        spec.sampling["stop"] = [spec.sampling["stop"]]
    if data.get("dlf_grid") is not None:
        spec.dlf_grid = [float(a) for a in data["dlf_grid"]]
    if data.get("dlf_bounds") is not None:
        spec.dlf_bounds = [(float(lo), float(hi)) for lo, hi in data["dlf_bounds"]]
    if data.get("dlf_mode") is not None:
        spec.dlf_mode = str(data["dlf_mode"])
        check_dlf_mode(spec.dlf_mode)
    if spec.rule != "single" and (not spec.small_base or not spec.experts):
        raise RecipeError(f"{where}: rule {spec.rule} needs small_base and at least one expert")
    spec.fusion_rule().coefficients(len(spec.experts))  # validates the rule name and weights now
    return spec


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise RecipeError(f"{path}: recipe not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping (large, small_base, experts, rule, … or systems)")
    return data


def load_recipe(path: Path, zoo: Path | str | None = None) -> tuple[dict[str, SystemSpec], list[str]]:
    """A system recipe (one system) or a compare recipe (`systems:`); also its default `tasks:`."""
    data = read_yaml(path)
    tasks = data.get("tasks") or []
    tasks = [str(t) for t in (tasks if isinstance(tasks, list) else [tasks])]
    if "systems" not in data:
        system = system_from_dict(
            {k: v for k, v in data.items() if k != "tasks"}, name=path.stem, where=str(path), base=path.parent, zoo=zoo
        )
        return {system.name: system}, tasks
    entries = data["systems"]
    if isinstance(entries, dict):
        entries = [{"name": k, **(v if isinstance(v, dict) else {"model": v})} for k, v in entries.items()]
    if not isinstance(entries, list) or not entries:
        raise RecipeError(f"{path}: systems must be a non-empty list of {{name, model | recipe | large, …}}")
    systems: dict[str, SystemSpec] = {}
    for i, entry in enumerate(entries, 1):
        where = f"{path} systems[{i}]"
        if not isinstance(entry, dict):
            raise RecipeError(f"{where}: expected a mapping, got {entry!r}")
        if "recipe" in entry:
            sub_path = path.parent / entry["recipe"]
            sub = read_yaml(sub_path)
            sub.pop("tasks", None)
            entry = {**sub, **{k: v for k, v in entry.items() if k != "recipe"}}
            system = system_from_dict(entry, name=sub_path.stem, where=str(sub_path), base=sub_path.parent, zoo=zoo)
        else:
            system = system_from_dict(entry, name=f"system{i}", where=where, base=path.parent, zoo=zoo)
        if system.name in systems:
            raise RecipeError(f"{where}: two systems are named {system.name!r}; give each a distinct name")
        systems[system.name] = system
    return systems, tasks


def evaluate(
    systems: dict[str, SystemSpec],
    tasks: Sequence[TaskSpec],
    sampling: Any = None,
    batch_size: int = 16,
    limit: int | None = None,
    *,
    resamples: int = 1000,
    seed: int = 0,
    device: str = "auto",
    progress: Progress | None = None,
    parallel_models: bool = False,
    store: RecordStore | None = None,
) -> EvalReport:
    """Every system on every task. Systems are loaded one at a time; under accelerate every process gets the
    whole report (rank 0 is the one to print and write it). `parallel_models`: fused systems step their small
    models on a second thread (`--parallel-models`; the same tokens). `store` keeps each finished row's record
    and hands back those of an interrupted run: a system whose tasks are all done is not even loaded."""
    from modelops.decode.sampling import SamplingConfig
    from modelops.devices import pick_device

    sampling = sampling or SamplingConfig(max_new_tokens=64)
    state = distributed_state(device)
    dev = str(state.device) if state is not None else pick_device(device)
    nproc = state.num_processes if state is not None else 1
    tasks = [t.limited(limit) for t in tasks]
    report = EvalReport(config={
        "sampling": {k: getattr(sampling, k) for k in ("max_new_tokens", "temperature", "top_k", "top_p", "seed")},
        "batch_size": batch_size, "limit": limit, "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95},
        "processes": nproc, "systems": {n: s.describe() for n, s in systems.items()},
        "tasks": {t.name: {"source": t.source, "metric": t.metric_label, "n": len(t.rows)} for t in tasks},
    })  # fmt: skip
    for name, system in systems.items():
        pairs = [(system.for_task(t.name), [t]) for t in tasks] if system.per_task else [(system, tasks)]
        for concrete, its_tasks in pairs:
            decoder = None
            own = replace(sampling, **system.sampling) if system.sampling else sampling
            for task in its_tasks:
                t0 = time.perf_counter()
                with store.open(name, concrete, task, own) if store else nullcontext(({}, None)) as (done, keep):
                    if len(done) < len(task.rows) and decoder is None:
                        logger.debug("loading %s", name)
                        decoder = concrete.build(dev, parallel=parallel_models)
                    records = [done[i] for i in range(len(task.rows))] if len(done) == len(task.rows) else run_task(
                        decoder, task, own, batch_size=batch_size, device=dev, state=state, done=done,
                        on_record=keep,
                        progress=(lambda d, k, n, _s=name: progress(f"{_s} · {d}", k, n)) if progress else None,
                    )  # fmt: skip
                values = [rec["value"] for rec in records]
                fluent = [float(rec["fluent"]) for rec in records] if task.fluency else None
                report.results.append(
                    TaskResult(
                        name, task.name, task.metric_label, summarize(values, resamples=resamples, seed=seed),
                        summarize(fluent, resamples=resamples, seed=seed) if fluent is not None else None,
                        time.perf_counter() - t0, nproc, records,
                    )
                )  # fmt: skip
            if decoder is not None and concrete.decoder is None:  # built here: stop its worker thread
                decoder.close()
            del decoder
    return report


def evaluate_model_folder(
    path: str | Path,
    task: str | TaskSpec,
    *,
    zoo: Path | str | None = None,
    metric: str | None = None,
    sampling: Any = None,
    batch_size: int = 16,
    limit: int | None = None,
    device: str = "auto",
) -> float:
    """Mean score of one model folder on one task (zoo task name, JSONL path or TaskSpec)."""
    spec = task if isinstance(task, TaskSpec) else load_task(str(task), metric, zoo=zoo)
    system = SystemSpec(Path(path).name, large=str(path))
    report = evaluate({system.name: system}, [spec], sampling, batch_size, limit, resamples=0, device=device)
    return report.results[0].mean
