"""`modelops extract-lora`: a PEFT LoRA adapter from a full fine-tune (truncated SVD of ΔW), streamed."""

from __future__ import annotations

from typing import Annotated

import typer

from modelops.cli.common import DryRun, OutDir, Overwrite, Quiet, Threads, handle_errors, human_bytes, setup
from modelops.cli.push import (
    CommitMessage,
    CreatePr,
    Private,
    PushTo,
    Revision,
    Token,
    check_push_options,
    push_after_write,
)

HELP = """Extract a LoRA adapter from a full fine-tune: ΔW = W_tuned − W_base per linear layer, truncated SVD
(randomised with power iterations when the rank is small, exact otherwise), saved as a real PEFT adapter
(adapter_config.json + adapter_model.safetensors, scaling 1). Reports per-module relative error and energy kept
(table on stderr, extraction_report.json beside the adapter). Hu et al., LoRA, arXiv 2106.09685.
"""


@handle_errors
def extract_lora(
    out: OutDir,
    base: Annotated[str, typer.Option("--base", help="Base model: folder or org/name[@revision].")],
    tuned: Annotated[str, typer.Option("--tuned", help="Fully fine-tuned model of the same architecture.")],
    rank: Annotated[int | None, typer.Option("--rank", "-r", help="Fixed rank for every module [default: 16].")] = None,
    energy: Annotated[
        float | None, typer.Option("--energy", help="Per-module rank keeping this share of ‖ΔW‖² (e.g. 0.9).")
    ] = None,
    max_rank: Annotated[int, typer.Option("--max-rank", help="Cap on the rank chosen by --energy.")] = 128,
    modules: Annotated[
        str, typer.Option("--modules", help="all-linear, or module names: q_proj,v_proj,mlp.down_proj.")
    ] = "all-linear",
    embeddings: Annotated[
        str, typer.Option("--embeddings", help="Changed embeddings/lm_head: full (modules_to_save), lora, or skip.")
    ] = "full",
    other: Annotated[
        str, typer.Option("--other", help="Changed norms, biases, unselected weights: report, or full (saved whole).")
    ] = "report",
    dtype: Annotated[str | None, typer.Option("--dtype", help="Adapter dtype (default: the tuned model's).")] = None,
    svd: Annotated[
        str, typer.Option("--svd", help="auto (randomised when r ≪ min(out, in)), exact, or randomized.")
    ] = "auto",
    device: Annotated[str, typer.Option("--device", help="Where the SVDs run: cpu, cuda or auto.")] = "auto",
    dry_run: DryRun = False,
    overwrite: Overwrite = False,
    threads: Threads = 1,
    quiet: Quiet = False,
    push_to: PushTo = None,
    private: Private = False,
    revision: Revision = None,
    create_pr: CreatePr = False,
    commit_message: CommitMessage = None,
    token: Token = None,
) -> None:
    setup(quiet, threads)
    check_push_options(push_to, create_pr=create_pr, revision=revision, repo_hint="--push-to")
    from modelops.devices import pick_device
    from modelops.lora.extract import ExtractOptions, plan_extraction, run_extraction
    from modelops.merge import normalize_dtype

    if rank is not None and energy is not None:
        raise typer.BadParameter("give --rank or --energy, not both")
    options = ExtractOptions(
        rank=rank if energy is None else None,
        energy=energy,
        max_rank=max_rank,
        modules=modules,
        embeddings=embeddings,
        other=other,
        dtype=normalize_dtype(dtype, "--dtype"),
        device=pick_device(device),
        svd=svd,
    )
    if options.rank is None and options.energy is None:
        options.rank = 16
    plan = plan_extraction(base, tuned, options, out=out, overwrite=overwrite)
    if dry_run:
        typer.echo(plan.describe())
        return
    from modelops.cli.common import ByteProgress

    total = sum(plan.base.tensors[m.weight].nbytes for m in plan.lora + plan.embeds)
    with ByteProgress(total, "extract-lora", quiet) as bar:
        result = run_extraction(plan, out, overwrite=overwrite, progress=bar)
    s = result.summary
    if not quiet:
        from rich.console import Console

        from modelops.lora.report import render_table

        Console(stderr=True).print(render_table(result.rows, s))
    typer.echo(
        f"Wrote LoRA adapter ({s['modules']} modules, rank {s['min_rank']}–{s['max_rank']}, "
        f"{human_bytes(s['adapter_bytes'])}) to {result.out} in {s['seconds']:.1f} s; relative error mean "
        f"{s['mean_rel_error']:.4f}, overall {s['overall_rel_error']:.4f}; energy kept {s['energy_kept']:.2%}; "
        f"peak RSS {human_bytes(s['peak_rss_bytes'])}"
    )
    if push_to:
        push_after_write(
            result.out,
            push_to,
            private=private,
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message,
            token=token,
            quiet=quiet,
        )


def register(app: typer.Typer) -> None:
    app.command("extract-lora", help=HELP)(extract_lora)
