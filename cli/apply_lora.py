"""`modelops apply-lora`: merge a PEFT LoRA adapter into its base, streamed tensor by tensor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelops.cli.common import (
    Device,
    DryRun,
    DtypeOpt,
    OutDir,
    Overwrite,
    Quiet,
    Resume,
    ShardSize,
    Threads,
    human_bytes,
    setup,
)  # fmt: skip
from modelops.cli.progress import ByteProgress
from modelops.cli.publishing import writes_folder

HELP = """Merge a LoRA adapter into its base model: W + (α/r)·B·A per adapted tensor (rank/alpha patterns,
rsLoRA, GPT-2 Conv1D, embedding LoRA, lora_bias and modules_to_save honoured), streamed one tensor at a time.
The output is a normal transformers checkpoint (config, tokenizer and generation config copied from the base).
"""


@writes_folder
def apply_lora(
    out: OutDir,
    base: Annotated[str, typer.Option("--base", help="Base model: folder or org/name[@revision].")],
    adapter: Annotated[str, typer.Option("--adapter", help="PEFT LoRA adapter folder (or org/name[@rev]).")],
    dtype: DtypeOpt = None,
    device: Device = "cpu",
    shard_size: ShardSize = "5GB",
    dry_run: DryRun = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
    threads: Threads = 1,
    quiet: Quiet = False,
) -> Path | None:
    setup(quiet, threads)
    from modelops import api

    plan = api.plan_apply_lora(base, adapter, out, overwrite=overwrite, dtype=dtype)
    if dry_run:
        typer.echo(plan.describe())
        return None
    with ByteProgress(plan.total_bytes, "apply-lora", quiet) as bar:
        r = api.apply_lora(base, adapter, out, plan=plan, overwrite=overwrite, device=device, shard_size=shard_size,
                           progress=bar, resume=resume)  # fmt: skip
    typer.echo(
        f"Wrote {r.tensors} tensors ({r.changed} changed by the adapter, {human_bytes(r.bytes_written)}) in "
        f"{sum(f.endswith('.safetensors') for f in r.files)} shard(s) to {r.out} in {r.seconds:.1f} s, "
        f"peak RSS {human_bytes(r.peak_rss)}"
    )
    return r.out


def register(app: typer.Typer) -> None:
    app.command("apply-lora", help=HELP, short_help="Merge a PEFT LoRA adapter into its base model.")(apply_lora)
