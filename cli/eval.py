"""`modelops eval`: systems (a model, a fused recipe, a compare file) × tasks → one table, JSON, CSV, generations."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from modelops.cli.common import Device, Overwrite, Quiet, Resume, Threads, err, handle_errors, setup
from modelops.cli.decode_options import BatchSize, ParallelModels
from modelops.cli.progress import TaskBars
from modelops.cli.relaunch import given_options, relaunch

TaskOpt = Annotated[
    list[str] | None,
    typer.Option("--task", "-t", help="Zoo task (facts, addition, review) or a JSONL file; repeat for several."),
]
ModelOpt = Annotated[list[str] | None, typer.Option("--model", "-m", help="One model (folder, org/name, zoo:ROLE).")]
RecipeOpt = Annotated[
    list[Path] | None, typer.Option("--recipe", help="A fused configuration (recipes/eft.yaml); repeatable.")
]
CompareOpt = Annotated[Path | None, typer.Option("--compare", help="Many systems in one table (recipes/compare.yaml).")]
ZooOpt = Annotated[
    Path | None, typer.Option("--zoo", help="Zoo build folder (default: newest cached full build, else mini).")
]
MetricOpt = Annotated[
    str | None, typer.Option("--metric", help="exact | choice | reward:module:fn | rm:PATH (default: from the rows).")
]
FluencyOpt = Annotated[
    str | None, typer.Option("--fluency", help="module:fn(prompt, text) -> bool, reported beside the metric.")
]


@handle_errors
def eval_cmd(
    ctx: typer.Context,
    task: TaskOpt = None,
    model: ModelOpt = None,
    recipe: RecipeOpt = None,
    compare: CompareOpt = None,
    zoo: ZooOpt = None,
    metric: MetricOpt = None,
    fluency: FluencyOpt = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="First N rows of each task.")] = None,
    batch_size: BatchSize = 16,
    max_new_tokens: Annotated[
        int | None, typer.Option("--max-new-tokens", min=1, help="Default: the zoo task's, else 64.")
    ] = None,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass.")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed: each prompt draws from its own stream.")] = 0,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, help="Bootstrap resamples for the CI.")] = 1000,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write results.json, results.csv, generations_*.jsonl.")
    ] = None,
    overwrite: Overwrite = False,
    resume: Resume = False,
    lm_eval_tasks: Annotated[
        str | None, typer.Option("--lm-eval-tasks", help="lm-eval tasks too (comma list; zoo_facts… built in).")
    ] = None,
    lm_eval_include: Annotated[
        Path | None, typer.Option("--lm-eval-include", help="Folder of your own lm-eval task YAMLs.")
    ] = None,
    num_processes: Annotated[
        int, typer.Option("--num-processes", min=1, help="Data-parallel processes (accelerate launch).")
    ] = 1,
    device: Device = "auto",
    parallel_models: ParallelModels = False,
    quiet: Quiet = False,
    threads: Threads = 1,
) -> None:
    """Evaluate models or fused configurations on tasks: n, mean, 95% bootstrap CI per system × task."""
    if not (model or recipe or compare):
        raise typer.BadParameter("give --model, --recipe or --compare (the systems to evaluate)")
    from modelops import api

    rank0 = api.is_main_process()
    setup(quiet or not rank0, threads)
    systems, recipe_tasks = api.eval_systems(model or [], [*(recipe or []), *([compare] if compare else [])], zoo)
    names = task or recipe_tasks
    if not names and not lm_eval_tasks:
        raise typer.BadParameter("give --task (a zoo task or a JSONL file), or tasks: in the recipe")
    specs = api.eval_tasks(names, metric=metric, zoo=zoo, fluency=fluency, max_new_tokens=max_new_tokens)
    if num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # validated once, then relaunched
        raise typer.Exit(relaunch(num_processes, "modelops.cli.eval", given_options(ctx, skip=("num_processes",))))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per model load is noise here; ours shows the rows
    bars = None if quiet or not rank0 else TaskBars()
    try:
        report = api.evaluate(systems, specs, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                              seed=seed, batch_size=batch_size, limit=limit, resamples=bootstrap, device=device,
                              progress=bars, parallel_models=parallel_models, out=out, resume=resume,
                              lm_eval_tasks=lm_eval_tasks.split(",") if lm_eval_tasks else (),
                              lm_eval_include=lm_eval_include,
                              overwrite=overwrite)  # fmt: skip
    finally:
        if bars is not None:
            bars.close()
    if rank0:
        from rich.console import Console

        console = Console()
        (console if console.is_terminal else Console(width=160)).print(report.table())
        if out is not None:
            err(f"wrote results.json, results.csv, results.md and the generations to {out}")
    api.end_worker_process()  # a torchrun worker leaves once everything is written


def register(app: typer.Typer) -> None:
    app.command("eval", short_help="Evaluate models or fused systems on tasks: mean and 95% CI per pair.")(eval_cmd)


def main() -> None:
    """`python -m modelops.cli.eval …` (what --num-processes relaunches under accelerate): this command alone."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.callback()
    def _root() -> None:
        """modelops eval"""

    register(app)
    app(["eval", *sys.argv[1:]])


if __name__ == "__main__":
    main()
