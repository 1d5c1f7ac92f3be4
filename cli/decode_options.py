"""Option aliases of the decode-time commands (`fuse-decode`, `eval`): one definition per knob."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Large = Annotated[str | None, typer.Option("--large", help="The large (base) model: folder or org/name@rev.")]
SmallBase = Annotated[str | None, typer.Option("--small-base", help="The small model the experts were tuned from.")]
Experts = Annotated[list[str] | None, typer.Option("--expert", help="A small tuned model; repeat for several.")]
Rule = Annotated[str | None, typer.Option("--rule", help="eft | proxy | fixed | dlf | cbs | bon | single.")]
Weights = Annotated[
    list[float] | None, typer.Option("--weight", help="Fusion weight: eft w, proxy α, one per expert for fixed.")
]
Gamma = Annotated[float | None, typer.Option("--gamma", help="EFT 'amplified' knob: scales ℓ_L − ℓ_S−.")]
DlfGrid = Annotated[str | None, typer.Option("--dlf-grid", help="DLF weight grid: start:stop:step or a comma list.")]
DlfBounds = Annotated[list[str] | None, typer.Option("--dlf-bounds", help="DLF lo:hi per expert.")]
DlfMode = Annotated[
    str | None, typer.Option("--dlf-mode", help="DLF with several experts: one (one active per step) or joint.")
]
OldDlfGrid = Annotated[str | None, typer.Option("--alpha-grid", hidden=True, help="Deprecated: --dlf-grid.")]
OldDlfBounds = Annotated[
    list[str] | None, typer.Option("--alpha-bounds", hidden=True, help="Deprecated: --dlf-bounds.")
]
BeamWidth = Annotated[int | None, typer.Option("--beam-width", help="CBS: beams kept per prompt (W).")]
Successors = Annotated[int | None, typer.Option("--successors", help="CBS: successors per beam (K).")]
ChunkLen = Annotated[int | None, typer.Option("--chunk-len", help="CBS: tokens per chunk (L).")]
BestOf = Annotated[int | None, typer.Option("--n", help="Best-of-N: samples per prompt.")]
Speculative = Annotated[int | None, typer.Option("--speculative", help="The expert drafts K tokens per round.")]
Schedule = Annotated[
    str | None, typer.Option("--speculative-schedule", help="constant, or heuristic (K grows +2 / shrinks -1).")
]
MaxNewTokens = Annotated[int | None, typer.Option("--max-new-tokens", min=1, help="New tokens per prompt.")]
Temperature = Annotated[float | None, typer.Option("--temperature", min=0.0, help="0 = greedy.")]
TopK = Annotated[int | None, typer.Option("--top-k", help="Keep the k most likely fused tokens (0 = off).")]
TopP = Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling on the fused logits.")]
Stop = Annotated[list[str] | None, typer.Option("--stop", help="Stop string; repeatable.")]
Seed = Annotated[int | None, typer.Option("--seed", help="Sampling seed: each prompt draws from its own stream.")]
ChatTemplateFor = Annotated[str | None, typer.Option("--chat-template-for", help="expert | all | none (default).")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Prompts decoded at once.")]
StaticBatches = Annotated[
    bool, typer.Option("--static-batches", help="Fixed groups: the next starts when the whole group is done.")
]
DeviceMap = Annotated[str | None, typer.Option("--device-map", help="Spread the large model (accelerate): auto.")]
ModelDtype = Annotated[str | None, typer.Option("--dtype", help="float32 | bfloat16 | float16 (default: as saved).")]
TrustRemoteCode = Annotated[bool, typer.Option("--trust-remote-code", help="Run model code from the checkpoint.")]
ParallelModels = Annotated[
    bool,
    typer.Option("--parallel-models", help="Step the small models on a second thread: same tokens, one more core."),
]
Prompts = Annotated[Path, typer.Option("--prompts", help='JSONL: {"id"?, "prompt", "continuation"?}.')]
ResultsFile = Annotated[Path, typer.Option("--out", "-o", help="Results JSONL (rows kept as they finish).")]
Score = Annotated[bool, typer.Option("--score", help="Teacher-forced log-prob of each row's continuation.")]


def deprecated(old: str, new: str, value: object) -> object:
    """Warn once that `old` is now `new` (for one release), and pass the value on."""
    if value:
        typer.echo(f"warning: {old} is deprecated; use {new} (the old name goes in the next release)", err=True)
    return value
