"""Benchmark `extract-lora` against exact per-module SVD and against the in-memory peft/torch way.

    OMP_NUM_THREADS=1 python benchmarks/bench_lora.py [--layers 4] [--hidden 1024] [--ranks 16 64]

A synthetic Llama-shaped base/tuned pair (bf16, ~67M parameters each at the defaults, like the 70M-parameter
model a peer measured at 88 s for rank 16) whose ΔW per linear layer is a decaying rank-32 signal plus
full-rank noise. Every method runs in its own subprocess so peak RSS is its own:
  stream   modelops extract-lora (streamed, randomised SVD where r ≪ min(out, in))
  exact    the same streamed pipeline with the exact SVD of every module (--svd exact)
  memory   both models loaded whole with transformers, full torch.linalg.svd per module, adapter written
           through peft's get_peft_model + save_pretrained
A last pass runs `stream` on a pair with half the layers, to show peak RSS does not grow with model size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_pair(root: Path, layers: int, hidden: int, inter: int, vocab: int, seed: int = 0) -> tuple[Path, Path]:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, tie_word_embeddings=False)  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "lm_head.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{n}.weight"] = (hidden, hidden)
        shapes[p + "mlp.gate_proj.weight"] = shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
        shapes[p + "input_layernorm.weight"] = shapes[p + "post_attention_layernorm.weight"] = (hidden,)
    base, tuned = {}, {}
    decay = torch.arange(1, 33, dtype=torch.float32).pow(-0.7)  # rank-32 signal with a decaying spectrum
    for name, shape in shapes.items():
        w = torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=g) * 0.02
        base[name] = w.to(torch.bfloat16)
        if len(shape) == 2 and "layers" in name:
            m, n = shape
            sig = (torch.randn(m, 32, generator=g) * decay) @ torch.randn(32, n, generator=g) * (3e-3 / n**0.5)
            w = w + sig + 2e-4 * torch.randn(shape, generator=g)
        tuned[name] = w.to(torch.bfloat16)
    out = []
    for tag, sd in (("base", base), ("tuned", tuned)):
        d = root / f"{tag}_{layers}L"
        d.mkdir(parents=True, exist_ok=True)
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        cfg.save_pretrained(d)
        out.append(d)
    return out[0], out[1]


def run_stream(base: str, tuned: str, out: str, rank: int, svd: str) -> dict:
    import accelerate  # noqa: F401 - imported before the clock starts, as in run_memory
    import peft  # noqa: F401
    from transformers import AutoModelForCausalLM  # noqa: F401

    from modelops.lora.extract import ExtractOptions, plan_extraction, run_extraction

    t0 = time.perf_counter()
    plan = plan_extraction(base, tuned, ExtractOptions(rank=rank, svd=svd, device="cpu"), out=Path(out))
    res = run_extraction(plan, Path(out))
    s = res.summary
    return {"seconds": time.perf_counter() - t0, "mean_rel_error": s["mean_rel_error"], "modules": s["modules"]}


def run_memory(base: str, tuned: str, out: str, rank: int) -> dict:
    """The usual script: two whole models in memory, full SVD per module, peft writes the adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    mb = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    mt = AutoModelForCausalLM.from_pretrained(tuned, dtype=torch.float32)
    tuned_sd = mt.state_dict()
    factors, errors = {}, []
    for name, mod in mb.named_modules():
        if isinstance(mod, torch.nn.Linear) and name != "lm_head":
            delta = tuned_sd[name + ".weight"] - mod.weight
            U, S, Vh = torch.linalg.svd(delta.detach(), full_matrices=False)
            B, A = U[:, :rank] * S[:rank], Vh[:rank]
            errors.append(float((delta - B @ A).norm() / delta.norm()))
            factors[name] = (A, B)
    del mt, tuned_sd
    cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules="all-linear", init_lora_weights=False)
    pm = get_peft_model(mb, cfg)
    with torch.no_grad():
        for name, mod in pm.base_model.model.named_modules():
            if name in factors:
                mod.lora_A["default"].weight.copy_(factors[name][0])
                mod.lora_B["default"].weight.copy_(factors[name][1])
    pm.save_pretrained(out)
    return {"seconds": time.perf_counter() - t0, "mean_rel_error": sum(errors) / len(errors), "modules": len(errors)}


def child(args: argparse.Namespace) -> None:
    import resource

    import torch

    torch.set_num_threads(1)
    out = tempfile.mkdtemp(prefix="bench_lora_out_")
    os.rmdir(out)
    if args.method == "memory":
        res = run_memory(args.base, args.tuned, out, args.rank)
    else:
        res = run_stream(args.base, args.tuned, out, args.rank, "exact" if args.method == "exact" else "auto")
    # VmHWM, not ru_maxrss: ru_maxrss survives exec and would include the parent's (pair-making) peak
    try:
        hwm = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM:"))
        res["peak_rss_mb"] = int(hwm.split()[1]) / 1024
    except (OSError, StopIteration):
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res))


def spawn(method: str, base: Path, tuned: Path, rank: int) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--base", str(base), "--tuned", str(tuned), "--rank", str(rank)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{method} r={rank} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", dest="method")
    ap.add_argument("--base")
    ap.add_argument("--tuned")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--ranks", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--methods", nargs="+", default=["stream", "exact", "memory"])
    args = ap.parse_args()
    if args.method:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench_lora_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        base, tuned = make_pair(root, args.layers, args.hidden, args.intermediate, args.vocab)
        size = sum(f.stat().st_size for f in base.glob("*.safetensors"))
        print(f"pair: {args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}, vocab "
              f"{args.vocab}: {size / 1e6:.0f} MB per model (bf16, {size / 2e6:.1f}M params); made in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
        print(f"{'method':8s} {'rank':>4s} {'wall s':>8s} {'peak RSS MB':>12s} {'mean rel err':>13s}", flush=True)
        for rank in args.ranks:
            for method in args.methods:
                r = spawn(method, base, tuned, rank)
                print(f"{method:8s} {rank:4d} {r['seconds']:8.2f} {r['peak_rss_mb']:12.0f} {r['mean_rel_error']:13.5f}",
                      flush=True)  # fmt: skip
        half = max(1, args.layers // 2)
        b2, t2 = make_pair(root, half, args.hidden, args.intermediate, args.vocab, seed=1)
        r = spawn("stream", b2, t2, args.ranks[0])
        print(f"stream on {half} layers (half the model), rank {args.ranks[0]}: {r['seconds']:.2f} s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
