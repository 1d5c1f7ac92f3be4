"""`modelops extract-lora`: a PEFT LoRA adapter from a full fine-tune (truncated SVD of ΔW), streamed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelops.cli.common import Device, DryRun, OutDir, Overwrite, Quiet, Resume, Threads, human_bytes, setup
from modelops.cli.progress import ByteProgress
from modelops.cli.publishing import writes_folder

HELP = """Extract a LoRA adapter from a full fine-tune: ΔW = W_tuned − W_base per linear layer, truncated SVD
(randomised with power iterations when the rank is small, exact otherwise), saved as a real PEFT adapter
(adapter_config.json + adapter_model.safetensors, scaling 1). Reports per-module relative error and energy kept
(table on stderr, extraction_report.json beside the adapter). Hu et al., LoRA, arXiv 2106.09685.
"""


@writes_folder
def extract_lora(
    out: OutDir,
    base: Annotated[str, typer.Option("--base", help="Base model: folder or org/name[@revision].")],
    tuned: Annotated[str, typer.Option("--tuned", help="Fully fine-tuned model of the same architecture.")],
    rank: Annotated[int | None, typer.Option("--rank", "-r", help="Fixed rank for every module [default: 16].")] = None,
    energy: Annotated[
        float | None, typer.Option("--energy", help="Per-module rank keeping this share of ‖ΔW‖².")
    ] = None,
    max_rank: Annotated[int, typer.Option("--max-rank", help="Cap on the rank chosen by --energy.")] = 128,
    modules: Annotated[str, typer.Option("--modules", help="all-linear, or names: q_proj,v_proj.")] = "all-linear",
    embeddings: Annotated[str, typer.Option("--embeddings", help="Changed embeddings: full, lora or skip.")] = "full",
    other: Annotated[str, typer.Option("--other", help="Changed norms, biases...: report, or full.")] = "report",
    dtype: Annotated[str | None, typer.Option("--dtype", help="Adapter dtype (default: the tuned model's).")] = None,
    svd: Annotated[str, typer.Option("--svd", help="auto, exact, or randomized.")] = "auto",
    device: Device = "auto",
    dry_run: DryRun = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
    threads: Threads = 1,
    quiet: Quiet = False,
) -> Path | None:
    setup(quiet, threads)
    from modelops import api

    if rank is not None and energy is not None:
        raise typer.BadParameter("give --rank or --energy, not both")
    options = {"rank": rank if energy is not None or rank is not None else 16, "energy": energy, "max_rank": max_rank,
               "modules": modules, "embeddings": embeddings, "other": other, "dtype": dtype, "device": device,
               "svd": svd}  # fmt: skip
    plan = api.plan_extract_lora(base, tuned, out, overwrite=overwrite, **options)
    if dry_run:
        typer.echo(plan.describe())
        return None
    with ByteProgress(plan.total_bytes, "extract-lora", quiet) as bar:
        result = api.extract_lora(base, tuned, out, plan=plan, overwrite=overwrite, resume=resume, progress=bar)
    s = result.summary
    if not quiet:
        from rich.console import Console

        Console(stderr=True).print(result.table())
    typer.echo(
        f"Wrote LoRA adapter ({s['modules']} modules, rank {s['min_rank']}–{s['max_rank']}, "
        f"{human_bytes(s['adapter_bytes'])}) to {result.out} in {s['seconds']:.1f} s; relative error mean "
        f"{s['mean_rel_error']:.4f}, overall {s['overall_rel_error']:.4f}; energy kept {s['energy_kept']:.2%}; "
        f"peak RSS {human_bytes(s['peak_rss_bytes'])}"
    )
    return result.out


def register(app: typer.Typer) -> None:
    app.command("extract-lora", help=HELP, short_help="A PEFT LoRA adapter from a full fine-tune (SVD of ΔW).")(
        extract_lora
    )
