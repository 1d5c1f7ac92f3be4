"""`modelops fuse-decode`: several causal LMs decoded in lock-step under one fusion rule."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelops.cli.common import (
    AllowPickle,
    CountProgress,
    Overwrite,
    Quiet,
    RecipeOpt,
    Threads,
    err,
    handle_errors,
    setup,
)

RULE_HELP = "eft | proxy | fixed | dlf | cbs | bon | single (large model alone)."


def register(app: typer.Typer) -> None:
    @app.command("fuse-decode")
    @handle_errors
    def fuse_decode(
        prompts: Annotated[Path, typer.Option("--prompts", help='JSONL: {"id"?, "prompt", "continuation"?}.')],
        out: Annotated[Path, typer.Option("--out", "-o", help="Results JSONL (written atomically).")],
        large: Annotated[
            str | None, typer.Option("--large", help="The large (base) model: folder or org/name@rev.")
        ] = None,
        small_base: Annotated[
            str | None, typer.Option("--small-base", help="The small model the experts were tuned from.")
        ] = None,
        expert: Annotated[
            list[str] | None, typer.Option("--expert", help="A small tuned model; repeat for several.")
        ] = None,
        rule: Annotated[str | None, typer.Option("--rule", help=RULE_HELP)] = None,
        weight: Annotated[
            list[float] | None, typer.Option("--weight", help="w for eft, α for proxy, one per expert for fixed.")
        ] = None,
        gamma: Annotated[float | None, typer.Option("--gamma", help="EFT 'amplified' knob: scales ℓ_L − ℓ_S−.")] = None,
        alpha_grid: Annotated[
            str | None,
            typer.Option("--alpha-grid", help="DLF grid: start:stop:step or a comma list (default 0:2:0.1)."),
        ] = None,
        alpha_bounds: Annotated[list[str] | None, typer.Option("--alpha-bounds", help="DLF lo:hi per expert.")] = None,
        beam_width: Annotated[int | None, typer.Option("--beam-width", help="CBS: beams kept per prompt (W).")] = None,
        successors: Annotated[int | None, typer.Option("--successors", help="CBS: successors per beam (K).")] = None,
        chunk_len: Annotated[int | None, typer.Option("--chunk-len", help="CBS: tokens per chunk (L).")] = None,
        n: Annotated[int | None, typer.Option("--n", help="Best-of-N: samples per prompt.")] = None,
        speculative: Annotated[
            int | None,
            typer.Option(
                "--speculative", help="The first expert drafts K tokens per round; output identical to plain decoding."
            ),
        ] = None,
        speculative_schedule: Annotated[
            str | None,
            typer.Option(
                "--speculative-schedule",
                help="constant (K every round) or heuristic (start at K; +2 after a round with every draft "
                "accepted, -1 otherwise, as transformers' assisted generation).",
            ),
        ] = None,
        max_new_tokens: Annotated[
            int | None, typer.Option("--max-new-tokens", help="New tokens per prompt (default 128).")
        ] = None,
        temperature: Annotated[
            float | None, typer.Option("--temperature", help="0 = greedy (default; cbs/bon: 0.7).")
        ] = None,
        top_k: Annotated[
            int | None, typer.Option("--top-k", help="Keep the k most likely fused tokens (0 = off; cbs/bon: 50).")
        ] = None,
        top_p: Annotated[
            float | None, typer.Option("--top-p", help="Nucleus sampling on the fused logits (default 1.0).")
        ] = None,
        stop: Annotated[list[str] | None, typer.Option("--stop", help="Stop string; repeatable.")] = None,
        seed: Annotated[int | None, typer.Option("--seed", help="Sampling seed (reproducible runs).")] = None,
        chat_template_for: Annotated[
            str | None,
            typer.Option("--chat-template-for", help="Who gets its chat template: expert | all | none (default)."),
        ] = None,
        score: Annotated[
            bool, typer.Option("--score", help="Teacher-forced log-prob of each row's continuation.")
        ] = False,
        batch_size: Annotated[
            int,
            typer.Option(
                "--batch-size",
                min=1,
                help="Prompts decoded at once; a finished row's place goes to the next prompt at once "
                "(cbs/bon: at the next chunk boundary, each prompt bringing W·K or N rows).",
            ),
        ] = 8,
        static_batches: Annotated[
            bool,
            typer.Option(
                "--static-batches",
                help="Decode in fixed groups of --batch-size: the next group starts once the whole group is done.",
            ),
        ] = False,
        device: Annotated[str, typer.Option("--device", help="cpu | cuda | auto.")] = "auto",
        device_map: Annotated[
            str | None, typer.Option("--device-map", help="Spread the large model (accelerate), e.g. auto.")
        ] = None,
        dtype: Annotated[
            str | None, typer.Option("--dtype", help="float32 | bfloat16 | float16 (default: as saved).")
        ] = None,
        trust_remote_code: Annotated[
            bool, typer.Option("--trust-remote-code", help="Run model code from the checkpoint.")
        ] = False,
        recipe: RecipeOpt = None,
        allow_pickle: AllowPickle = False,
        overwrite: Overwrite = False,
        quiet: Quiet = False,
        threads: Threads = 1,
        parallel_models: Annotated[
            bool,
            typer.Option(
                "--parallel-models",
                help=(
                    "Step the small models on a second thread beside the large one (cbs/bon: the base and the "
                    "expert score on two threads): same tokens, one more core."
                ),
            ),
        ] = False,
    ) -> None:
        """Fused decoding: EFT / up-scaling, proxy-tuning, fixed weights, dynamic logit fusion, CBS, best-of-N."""
        setup(quiet, threads)
        from modelops.decode.api import build_decoder, run_decode, write_jsonl
        from modelops.decode.spec import load_spec, parse_bounds, parse_grid, read_prompts
        from modelops.devices import pick_device

        overrides = {
            "large": large,
            "small_base": small_base,
            "experts": expert,
            "rule": rule,
            "weights": weight,
            "gamma": gamma,
            "alpha_grid": parse_grid(alpha_grid) if alpha_grid else None,
            "alpha_bounds": [parse_bounds(b) for b in alpha_bounds] if alpha_bounds else None,
            "beam_width": beam_width,
            "successors": successors,
            "chunk_len": chunk_len,
            "n": n,
            "speculative": speculative,
            "speculative_schedule": speculative_schedule,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "stop": stop,
            "seed": seed,
            "chat_template_for": chat_template_for,
        }
        spec = load_spec(recipe, overrides)
        rows = read_prompts(prompts, need_continuation=score)
        if out.exists() and not overwrite:
            raise typer.BadParameter(f"{out} exists; pass --overwrite to replace it", param_hint="--out")
        _quiet_transformers()
        decoder = build_decoder(
            spec,
            device=pick_device(device),
            dtype=dtype,
            device_map=device_map,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
            parallel=parallel_models,
        )
        try:
            with CountProgress(len(rows), "scoring" if score else f"decoding ({spec.rule})", quiet) as progress:
                run = run_decode(
                    decoder, spec, rows, batch_size=batch_size, score=score, on_batch=progress.advance,
                    continuous=not static_batches,
                )  # fmt: skip
        except BaseException:
            if not quiet:
                err("stopped; no results file was written")
            raise
        finally:
            decoder.close()
        write_jsonl(run.rows, out, inputs=[prompts], overwrite=overwrite)
        rate = f", {run.new_tokens / run.seconds:.1f} tokens/s" if run.new_tokens and run.seconds > 0 else ""
        extra = "".join(f", {k} {v:.3f}" if isinstance(v, float) else f", {k} {v}" for k, v in run.stats.items())
        typer.echo(f"{len(run.rows)} rows → {out} ({spec.rule}, {run.seconds:.1f} s{rate}{extra})")


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
