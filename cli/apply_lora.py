"""`modelops apply-lora`: merge a PEFT LoRA adapter into its base, streamed tensor by tensor."""

from __future__ import annotations

from typing import Annotated

import typer

from modelops.cli.common import (
    ByteProgress,
    DryRun,
    DtypeOpt,
    OutDir,
    Overwrite,
    Quiet,
    Resume,
    ShardSize,
    Threads,
    handle_errors,
    human_bytes,
    setup,
)
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

HELP = """Merge a LoRA adapter into its base model: W + (α/r)·B·A per adapted tensor (rank/alpha patterns,
rsLoRA, GPT-2 Conv1D, embedding LoRA, lora_bias and modules_to_save honoured), streamed one tensor at a time.
The output is a normal transformers checkpoint (config, tokenizer and generation config copied from the base).
"""


@handle_errors
def apply_lora(
    out: OutDir,
    base: Annotated[str, typer.Option("--base", help="Base model: folder or org/name[@revision].")],
    adapter: Annotated[str, typer.Option("--adapter", help="PEFT LoRA adapter folder (or org/name[@rev]).")],
    dtype: DtypeOpt = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")] = "cpu",
    shard_size: ShardSize = "5GB",
    dry_run: DryRun = False,
    resume: Resume = False,
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
    from modelops.lora.apply import plan_apply, run_apply
    from modelops.merge import normalize_dtype

    plan = plan_apply(base, adapter, out=out, overwrite=overwrite, dtype=normalize_dtype(dtype, "--dtype"))
    if dry_run:
        typer.echo(plan.describe())
        return
    with ByteProgress(plan.total_bytes, "apply-lora", quiet) as bar:
        r = run_apply(
            plan,
            out,
            overwrite=overwrite,
            device=pick_device(device),
            shard_size=shard_size,
            progress=bar,
            resume=resume,
        )
    typer.echo(
        f"Wrote {r.tensors} tensors ({r.changed} changed by the adapter, {human_bytes(r.bytes_written)}) in "
        f"{sum(f.endswith('.safetensors') for f in r.files)} shard(s) to {r.out} in {r.seconds:.1f} s, "
        f"peak RSS {human_bytes(r.peak_rss)}"
    )
    if push_to:
        push_after_write(
            r.out,
            push_to,
            private=private,
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message,
            token=token,
            quiet=quiet,
        )


def register(app: typer.Typer) -> None:
    app.command("apply-lora", help=HELP)(apply_lora)
