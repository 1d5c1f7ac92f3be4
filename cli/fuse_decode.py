"""`modelops fuse-decode`: several causal LMs decoded in lock-step under one fusion rule."""

from __future__ import annotations

import typer

from modelops.cli import decode_options as o
from modelops.cli.common import (
    AllowPickle,
    Device,
    Overwrite,
    Quiet,
    RecipeOpt,
    Resume,
    Threads,
    handle_errors,
    setup,
)
from modelops.cli.progress import CountProgress


@handle_errors
def fuse_decode(
    prompts: o.Prompts,
    out: o.ResultsFile,
    large: o.Large = None,
    small_base: o.SmallBase = None,
    expert: o.Experts = None,
    rule: o.Rule = None,
    weight: o.Weights = None,
    gamma: o.Gamma = None,
    dlf_grid: o.DlfGrid = None,
    dlf_bounds: o.DlfBounds = None,
    dlf_mode: o.DlfMode = None,
    beam_width: o.BeamWidth = None,
    successors: o.Successors = None,
    chunk_len: o.ChunkLen = None,
    n: o.BestOf = None,
    speculative: o.Speculative = None,
    speculative_schedule: o.Schedule = None,
    max_new_tokens: o.MaxNewTokens = None,
    temperature: o.Temperature = None,
    top_k: o.TopK = None,
    top_p: o.TopP = None,
    stop: o.Stop = None,
    seed: o.Seed = None,
    chat_template_for: o.ChatTemplateFor = None,
    score: o.Score = False,
    batch_size: o.BatchSize = 8,
    static_batches: o.StaticBatches = False,
    device: Device = "auto",
    device_map: o.DeviceMap = None,
    dtype: o.ModelDtype = None,
    trust_remote_code: o.TrustRemoteCode = False,
    recipe: RecipeOpt = None,
    allow_pickle: AllowPickle = False,
    overwrite: Overwrite = False,
    resume: Resume = False,
    quiet: Quiet = False,
    threads: Threads = 1,
    parallel_models: o.ParallelModels = False,
    alpha_grid: o.OldDlfGrid = None,
    alpha_bounds: o.OldDlfBounds = None,
) -> None:
    """Fused decoding: EFT / up-scaling, proxy-tuning, fixed weights, dynamic logit fusion, CBS, best-of-N.

    Rows are kept as they finish: an interrupted run continues with --resume."""
    setup(quiet, threads)
    from transformers.utils import logging as hf_logging

    from modelops import api

    hf_logging.disable_progress_bar()
    dlf_grid = dlf_grid or o.deprecated("--alpha-grid", "--dlf-grid", alpha_grid)
    dlf_bounds = dlf_bounds or o.deprecated("--alpha-bounds", "--dlf-bounds", alpha_bounds)
    spec = api.decode_spec(
        recipe, large=large, small_base=small_base, experts=expert, rule=rule, weights=weight, gamma=gamma,
        dlf_grid=dlf_grid, dlf_bounds=dlf_bounds, dlf_mode=dlf_mode, beam_width=beam_width, successors=successors,
        chunk_len=chunk_len, n=n, speculative=speculative, speculative_schedule=speculative_schedule,
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, stop=stop, seed=seed,
        chat_template_for=chat_template_for,
    )  # fmt: skip
    total = len(api.read_prompts(prompts, need_continuation=score))
    with CountProgress(total, "scoring" if score else f"decoding ({spec.rule})", quiet) as bar:
        run = api.fuse_decode(
            spec, prompts, out, score=score, batch_size=batch_size, continuous=not static_batches, overwrite=overwrite,
            resume=resume, progress=bar.advance, device=device, dtype=dtype, device_map=device_map,
            allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, parallel=parallel_models,
        )  # fmt: skip
    rate = f", {run.new_tokens / run.seconds:.1f} tokens/s" if run.new_tokens and run.seconds > 0 else ""
    extra = "".join(f", {k} {v:.3f}" if isinstance(v, float) else f", {k} {v}" for k, v in run.stats.items())
    typer.echo(f"{len(run.rows)} rows → {out} ({spec.rule}, {run.seconds:.1f} s{rate}{extra})")


def register(app: typer.Typer) -> None:
    app.command("fuse-decode", short_help="Decode with several models fused: EFT, proxy-tuning, DLF, CBS, best-of-N.")(
        fuse_decode
    )
