"""Decode-time operations as the public API: the co-decoder, fused decoding of a prompts file, and evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from modelops.decode.api import DecodeRun, build_decoder, run_decode, write_jsonl
from modelops.decode.engine import CoDecoder
from modelops.decode.sampling import SamplingConfig
from modelops.decode.spec import DecodeSpec, load_spec, read_prompts
from modelops.devices import pick_device
from modelops.eval.harness import EvalReport, SystemSpec, load_recipe, model_system
from modelops.eval.harness import evaluate as evaluate_systems
from modelops.eval.tasks import DEFAULT_MAX_NEW, TaskSpec, load_task

__all__ = [
    "CoDecoder",
    "DecodeRun",
    "DecodeSpec",
    "EvalReport",
    "SamplingConfig",
    "decode_spec",
    "evaluate",
    "fuse_decode",
    "load_decoder",
    "read_prompts",
]


def decode_spec(recipe: Path | None = None, **overrides: Any) -> DecodeSpec:
    """A fused-decoding configuration from a recipe file and/or keyword overrides (large, small_base, experts,
    rule, weights, ...); every value is checked, and zoo roles are resolved."""
    return load_spec(Path(recipe) if recipe is not None else None, overrides)


def load_decoder(
    spec: DecodeSpec,
    *,
    device: str = "auto",
    dtype: str | None = None,
    device_map: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    parallel: bool = False,
) -> CoDecoder:
    """The co-decoder for `spec`: every model loaded once, a KV cache each, the rule's fusion. Close it when done."""
    return build_decoder(
        spec,
        device=pick_device(device),
        dtype=dtype,
        device_map=device_map,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        parallel=parallel,
    )


def fuse_decode(
    spec: DecodeSpec,
    prompts: Path | list[dict[str, Any]],
    out: Path | None = None,
    *,
    score: bool = False,
    batch_size: int = 8,
    continuous: bool = True,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    decoder: CoDecoder | None = None,
    **load: Any,
) -> DecodeRun:
    """Generate (or, with `score`, teacher-force the continuations of) every prompt row under the spec's rule,
    and write the rows to `out` as JSONL when given. `load` goes to `load_decoder` when no decoder is passed."""
    rows = read_prompts(Path(prompts), need_continuation=score) if isinstance(prompts, (str, Path)) else prompts
    own = decoder is None
    decoder = decoder or load_decoder(spec, **load)
    try:
        run = run_decode(
            decoder, spec, rows, batch_size=batch_size, score=score, on_batch=progress, continuous=continuous
        )
    finally:
        if own:
            decoder.close()
    if out is not None:
        inputs = [Path(prompts)] if isinstance(prompts, (str, Path)) else []
        write_jsonl(run.rows, Path(out), inputs=inputs, overwrite=overwrite)
    return run


def eval_systems(
    models: Sequence[str] = (), recipes: Sequence[Path] = (), zoo: Path | None = None
) -> tuple[dict[str, SystemSpec], list[str]]:
    """Every system named by model specs and eval recipes (names must differ), and the recipes' default tasks."""
    from modelops.errors import RecipeError

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
) -> EvalReport:
    """Every system on every task: n, mean and a 95% bootstrap interval per pair, and every generation.
    `report.write(folder)` saves results.json, results.csv and the generations."""
    sampling = SamplingConfig(
        max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW, temperature=temperature, top_p=top_p, seed=seed
    )
    return evaluate_systems(
        systems,
        list(tasks),
        sampling,
        batch_size,
        limit,
        resamples=resamples,
        seed=seed,
        device=device,
        progress=progress,
        parallel_models=parallel_models,
    )
