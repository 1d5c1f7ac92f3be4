"""Benchmark: streamed `modelops extrapolate` vs the naive approach (load both state dicts, compute, save).

    OMP_NUM_THREADS=1 python benchmarks/bench_extrapolate.py --size-gb 1 --small-gb 0.25

Makes a synthetic bf16 SFT/DPO pair with Llama-shaped tensor names in several shards, warms the page cache, then
runs each approach in its own process and reports wall time and peak RSS, and their ratios, in one run. The
`--small-gb` run shows whether modelops' peak memory grows with model size (it should not).
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

import torch
from safetensors.torch import save_file
from synthetic import llama_shapes, warm

NAIVE = r"""
import resource, sys, time, json, glob, os
def hwm():  # VmHWM: ru_maxrss would inherit the parent's peak across fork+exec
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
import torch
from safetensors.torch import load_file, save_file
sft_dir, dpo_dir, out_dir, alpha = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
torch.set_num_threads(1)
t0 = time.perf_counter()
def load(d):
    sd = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        sd.update(load_file(f))
    return sd
sft, dpo = load(sft_dir), load(dpo_dir)
out = {k: (dpo[k].float() + alpha * (dpo[k].float() - sft[k].float())).to(dpo[k].dtype) for k in dpo}
os.makedirs(out_dir, exist_ok=True)
save_file(out, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss": hwm()}))
"""

OURS = r"""
import resource, sys, time, json
def hwm():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
import torch
torch.set_num_threads(1)
t0 = time.perf_counter()
from modelops.api import expo_recipe, merge
merge(expo_recipe(sys.argv[1], sys.argv[2], float(sys.argv[4])), sys.argv[3], shard_size="2GB")
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss": hwm()}))
"""

BASELINE = r"""
import resource, json, torch
def hwm():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
from modelops.api import expo_recipe, merge
print(json.dumps({"peak_rss": hwm()}))
"""


def make_pair(folder: Path, size_gb: float, *, hidden: int = 2048, shards: int = 4) -> tuple[Path, Path]:
    """Llama-shaped bf16 tensors adding up to ~size_gb per model; DPO = SFT + 1e-3 relative noise."""
    inter, vocab = hidden * 11 // 4, 32000
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    fixed = 2 * vocab * hidden + hidden
    layers = max(1, int((size_gb * 1e9 / 2 - fixed) / per_layer))
    shapes = llama_shapes(layers, hidden, vocab)
    names = list(shapes)
    groups = [names[i::shards] for i in range(shards)]
    g = torch.Generator().manual_seed(0)
    dirs = folder / "sft", folder / "dpo"
    for d in dirs:
        d.mkdir(parents=True)
    weight_map: dict[str, str] = {}
    for s, group in enumerate(groups):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        sft = {n: (torch.randn(shapes[n], generator=g) * 0.02).bfloat16() for n in group}
        dpo = {n: (t.float() * (1 + 1e-3 * torch.randn(t.shape, generator=g))).bfloat16() for n, t in sft.items()}
        save_file(sft, dirs[0] / fname, metadata={"format": "pt"})
        save_file(dpo, dirs[1] / fname, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, fname))
        del sft, dpo
    total = sum(2 * torch.Size(s).numel() for s in shapes.values())
    index = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    for d in dirs:
        (d / "model.safetensors.index.json").write_text(index)
        (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    return dirs


def run(code: str, *args: str) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench(size_gb: float, root: Path) -> dict[str, dict[str, float]]:
    folder = root / f"pair-{size_gb}"
    t0 = time.perf_counter()
    sft, dpo = make_pair(folder, size_gb)
    print(f"# made a {size_gb} GB/model bf16 pair in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    results = {}
    for name, code in (("modelops", OURS), ("naive", NAIVE)):
        warm(sft)
        warm(dpo)
        results[name] = run(code, str(sft), str(dpo), str(folder / f"out-{name}"), "0.3")
        subprocess.run(["rm", "-rf", str(folder / f"out-{name}")], check=True)
    subprocess.run(["rm", "-rf", str(folder)], check=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=1.0, help="size of each model of the pair (bf16)")
    ap.add_argument("--small-gb", type=float, default=0.25, help="a second, smaller size to show memory scaling")
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-expo-", dir=args.dir))
    runtime = run(BASELINE)["peak_rss"]
    rows = []
    for size in (args.small_gb, args.size_gb):
        r = bench(size, root)
        rows.append((size, r))
    print(f"runtime alone (python + torch + modelops imported): peak RSS {runtime / 1e6:.0f} MB")
    print(f"{'size/model':>10} {'approach':>9} {'wall s':>8} {'peak RSS MB':>12} {'RSS - runtime':>14}")
    for size, r in rows:
        for name in ("modelops", "naive"):
            print(
                f"{size:>8.2f}GB {name:>9} {r[name]['seconds']:>8.2f} {r[name]['peak_rss'] / 1e6:>12.0f} {(r[name]['peak_rss'] - runtime) / 1e6:>14.0f}"
            )
        print(
            f"{'':>10} ratio modelops/naive: wall {r['modelops']['seconds'] / r['naive']['seconds']:.2f}x, "
            f"peak RSS {r['modelops']['peak_rss'] / r['naive']['peak_rss']:.2f}x"
        )
    (s0, r0), (s1, r1) = rows
    growth = (r1["modelops"]["peak_rss"] - r0["modelops"]["peak_rss"]) / 1e6
    print(
        f"modelops peak RSS growth from {s0} GB to {s1} GB models: {growth:+.0f} MB (naive: {(r1['naive']['peak_rss'] - r0['naive']['peak_rss']) / 1e6:+.0f} MB)"
    )
    subprocess.run(["rm", "-rf", str(root)], check=True)


if __name__ == "__main__":
    main()
