"""`modelops demo --preset tiny`: make a small model family from config, run the weight-space operations on it, and
check each output by loading it with transformers and comparing logits with the same math done in memory.

It needs no download and runs in seconds; it is also what `recipes/*.yaml` point at (`modelops-demo/models/...`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from modelops import api
from modelops.demo.report import DemoLine

logger = logging.getLogger(__name__)

DEMO_MODELS = ("base", "ft-a", "ft-b", "sft", "dpo")


def _config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def _noisy(model: torch.nn.Module, seed: int, scale: float) -> dict[str, torch.Tensor]:
    """Seeded relative noise on every weight: a stand-in for a fine-tune of `model`."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * v * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def build_demo_models(folder: Path) -> dict[str, Path]:
    """A base, two fine-tunes, an SFT and a DPO of it (deterministic; skipped when already there)."""
    from transformers import LlamaForCausalLM

    paths = {name: folder / name for name in DEMO_MODELS}
    if all((p / "config.json").is_file() for p in paths.values()):
        return paths
    torch.manual_seed(0)
    base = LlamaForCausalLM(_config()).eval()
    states = {"base": base.state_dict(), "ft-a": _noisy(base, 1, 0.05), "ft-b": _noisy(base, 2, 0.05)}
    states["sft"] = _noisy(base, 3, 0.05)
    sft_model = LlamaForCausalLM(_config())
    sft_model.load_state_dict(states["sft"])
    states["dpo"] = _noisy(sft_model, 4, 0.01)
    for name, state in states.items():
        if (paths[name] / "config.json").is_file():
            continue
        model = LlamaForCausalLM(_config())
        model.load_state_dict(state)
        with api.AtomicOutput(paths[name], overwrite=True) as tmp:
            model.save_pretrained(tmp, safe_serialization=True, max_shard_size="300KB")
    return paths


def _max_logit_gap(
    out: Path,
    expected: Callable[[dict[str, dict[str, torch.Tensor]]], dict[str, torch.Tensor]],
    models: dict[str, Path],
) -> float:
    """Largest |logit difference| between the written checkpoint and the formula applied in memory."""
    from transformers import AutoModelForCausalLM

    states = {n: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).state_dict() for n, p in models.items()}
    written = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    reference = AutoModelForCausalLM.from_pretrained(models["base"], dtype=torch.float32).eval()
    reference.load_state_dict(expected(states))
    ids = torch.randint(3, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((written(ids).logits - reference(ids).logits).abs().max())


TOLERANCE = 1e-4  # max |Δlogit| between the streamed output and the math in memory (float32 rounding)


def run_tiny_demo(workdir: Path, *, overwrite: bool = True) -> list[DemoLine]:
    """Build the demo family and run each weight-space operation once, checked on logits."""
    models = build_demo_models(workdir / "models")
    out = workdir / "outputs"
    rows: list[DemoLine] = []

    def timed(name: str, command: str, target: Path, fn: Callable[[], object], expected) -> None:
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        gap = _max_logit_gap(target, expected, models)
        verdict = (
            f"holds: max |Δlogit| {gap:.1e} ≤ {TOLERANCE:g}" if gap <= TOLERANCE else f"fails: max |Δlogit| {gap:.1e}"
        )
        claim = f"{name} equals the same math in memory (`{command}`)"
        rows.append(DemoLine("weights", claim, "logits on random ids", str(target), verdict, seconds))

    alpha = 0.3
    timed(
        "ExPO extrapolate (α=0.3)",
        "modelops extrapolate --sft sft --dpo dpo --alpha 0.3",
        out / "expo",
        lambda: api.extrapolate(str(models["sft"]), str(models["dpo"]), out / "expo", alpha=alpha, overwrite=overwrite),
        lambda s: {k: api.expo_tensor(s["sft"][k], s["dpo"][k], alpha) for k in s["dpo"]},
    )
    ta = {
        "merge_method": "task_arithmetic",
        "base_model": str(models["base"]),
        "models": [
            {"model": str(models["ft-a"]), "parameters": {"weight": 0.7}},
            {"model": str(models["ft-b"]), "parameters": {"weight": 0.3}},
        ],
    }
    timed(
        "task arithmetic (0.7, 0.3)",
        "modelops merge --recipe recipes/task_arithmetic.yaml",
        out / "task_arithmetic",
        lambda: api.merge(ta, out / "task_arithmetic", overwrite=overwrite),
        lambda s: {
            k: s["base"][k] + 0.7 * (s["ft-a"][k] - s["base"][k]) + 0.3 * (s["ft-b"][k] - s["base"][k])
            for k in s["base"]
        },
    )
    lin = {
        "merge_method": "linear",
        "models": [str(models["ft-a"]), str(models["ft-b"])],
        "parameters": {"weight": 1.0},
    }
    timed(
        "linear (model soup)",
        "modelops merge --recipe recipes/linear.yaml",
        out / "linear",
        lambda: api.merge(lin, out / "linear", overwrite=overwrite),
        lambda s: {k: (s["ft-a"][k] + s["ft-b"][k]) / 2 for k in s["base"]},
    )
    ties = {
        "merge_method": "ties",
        "base_model": str(models["base"]),
        "models": [
            {"model": str(models["ft-a"]), "parameters": {"weight": 1.0, "density": 0.5}},
            {"model": str(models["ft-b"]), "parameters": {"weight": 1.0, "density": 0.5}},
        ],
    }

    def ties_in_memory(s: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {
            k: api.ties_tensor(s["base"][k], [s["ft-a"][k], s["ft-b"][k]], [1.0, 1.0], [0.5, 0.5]) for k in s["base"]
        }

    timed(
        "TIES (density 0.5)",
        "modelops merge --recipe recipes/ties.yaml",
        out / "ties",
        lambda: api.merge(ties, out / "ties", overwrite=overwrite),
        ties_in_memory,
    )
    return rows
