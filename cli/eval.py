"""`modelops eval`: systems (a model, a fused recipe, a compare file) × tasks → one table, JSON, CSV, generations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from modelops.cli.common import Overwrite, Quiet, Threads, err, handle_errors, setup

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


def _relaunch(n: int, argv: list[str]) -> int:
    """This same command in n processes through torchrun (what `accelerate launch --multi_gpu` runs): each
    process joins accelerate's PartialState (gloo on CPU, nccl on GPUs). `accelerate launch --cpu` cannot start
    several CPU processes without MPI, so torchrun's `--standalone` rendezvous (a free port) is used directly."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           "-m", "modelops.cli.eval", *argv]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.call(cmd, env=env)


def register(app: typer.Typer) -> None:
    @app.command("eval")
    @handle_errors
    def eval_cmd(
        task: TaskOpt = None,
        model: ModelOpt = None,
        recipe: RecipeOpt = None,
        compare: CompareOpt = None,
        zoo: ZooOpt = None,
        metric: MetricOpt = None,
        fluency: FluencyOpt = None,
        limit: Annotated[int | None, typer.Option("--limit", min=1, help="First N rows of each task.")] = None,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Prompts per batch.")] = 16,
        max_new_tokens: Annotated[
            int | None, typer.Option("--max-new-tokens", min=1, help="Default: the zoo task's, else 64.")
        ] = None,
        temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy.")] = 0.0,
        top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass.")] = 1.0,
        seed: Annotated[int, typer.Option("--seed", help="Sampling seed (per batch: seed + batch index).")] = 0,
        bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, help="Bootstrap resamples for the CI.")] = 1000,
        out: Annotated[
            Path | None, typer.Option("--out", "-o", help="Write results.json, results.csv, generations_*.jsonl.")
        ] = None,
        overwrite: Overwrite = False,
        num_processes: Annotated[
            int, typer.Option("--num-processes", min=1, help="Data-parallel processes (accelerate launch).")
        ] = 1,
        device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")] = "auto",
        parallel_models: Annotated[
            bool,
            typer.Option(
                "--parallel-models",
                help="Fused systems step their small models on a second thread: same tokens, one more core.",
            ),
        ] = False,
        quiet: Quiet = False,
        threads: Threads = 1,
    ) -> None:
        """Evaluate models or fused configurations on tasks: n, mean, 95% bootstrap CI per system × task."""
        if not (model or recipe or compare):
            raise typer.BadParameter("give --model, --recipe or --compare (the systems to evaluate)")
        rank0 = os.environ.get("RANK", "0") == "0"
        setup(quiet or not rank0, threads)
        if out is not None:
            from modelops.checkpoint import check_output_location

            check_output_location(out, [], overwrite=overwrite)
        from modelops.decode.sampling import SamplingConfig
        from modelops.eval.tasks import DEFAULT_MAX_NEW, load_task

        systems, recipe_tasks = _systems(model or [], [*(recipe or []), *([compare] if compare else [])], zoo)
        names = task or recipe_tasks
        if not names:
            raise typer.BadParameter("give --task (a zoo task or a JSONL file), or tasks: in the recipe")
        specs = [load_task(t, metric, zoo=zoo, fluency=fluency, max_new_tokens=max_new_tokens) for t in names]
        if num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # validated once, then relaunched
            argv = [a for t in names for a in ("--task", t)] + [a for m in model or [] for a in ("--model", m)]
            argv += [a for r in recipe or [] for a in ("--recipe", str(r))]
            for flag, value in (("--compare", compare), ("--zoo", zoo), ("--metric", metric),
                                ("--fluency", fluency), ("--limit", limit), ("--max-new-tokens", max_new_tokens),
                                ("--out", out)):  # fmt: skip
                if value is not None:
                    argv += [flag, str(value)]
            argv += ["--batch-size", str(batch_size), "--temperature", str(temperature), "--top-p", str(top_p),
                     "--seed", str(seed), "--bootstrap", str(bootstrap), "--device", device,
                     "--threads", str(threads)] + ["--overwrite"] * overwrite + ["-q"] * quiet  # fmt: skip
            argv += ["--parallel-models"] * parallel_models
            raise typer.Exit(_relaunch(num_processes, argv))
        from transformers.utils import logging as hf_logging

        from modelops.eval.harness import evaluate
        from modelops.eval.processes import end_worker_process, leave_process_group

        hf_logging.disable_progress_bar()  # one bar per model load is noise here; ours shows the rows
        sampling = SamplingConfig(max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW, temperature=temperature,
                                  top_p=top_p, seed=seed)  # fmt: skip
        bars = None if quiet or not rank0 else _Bars()
        try:
            report = evaluate(systems, specs, sampling, batch_size, limit, resamples=bootstrap, seed=seed,
                              device=device, progress=bars, parallel_models=parallel_models)  # fmt: skip
        finally:
            if bars is not None:
                bars.close()
            leave_process_group()
        if not rank0:
            end_worker_process()
            return
        from rich.console import Console

        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
        console.print(report.table())
        if out is not None:
            from modelops.checkpoint import AtomicOutput

            with AtomicOutput(out, overwrite=overwrite) as tmp:
                report.write(tmp)
            err(f"wrote results.json, results.csv and {len(report.results)} generations file(s) to {out}")
        end_worker_process()  # rank 0 of a torchrun group, after everything is written


def _systems(models: list[str], recipes: list[Path], zoo: Path | None) -> tuple[dict, list[str]]:
    """Every system from --model, --recipe and --compare (names must differ), and the recipes' default tasks."""
    from modelops.eval.harness import load_recipe, model_system

    found = [model_system(m, zoo) for m in models]
    tasks: list[str] = []
    for path in recipes:
        systems, there = load_recipe(path, zoo)
        found += list(systems.values())
        tasks += [t for t in there if t not in tasks]
    out: dict = {}
    for s in found:
        if s.name in out:
            raise typer.BadParameter(f"two systems are named {s.name!r}; give each a distinct name")
        out[s.name] = s
    return out, tasks


class _Bars:
    """One transient rich bar per (system, task) on stderr: rows done of this process's share."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=True)  # fmt: skip
        self.tasks: dict[str, int] = {}

    def __call__(self, desc: str, done: int, total: int) -> None:
        if desc not in self.tasks:
            if not self.tasks:
                self.bar.start()
            self.tasks[desc] = self.bar.add_task(desc, total=total)
        self.bar.update(self.tasks[desc], completed=done)

    def close(self) -> None:
        if self.tasks:
            self.bar.stop()


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
