"""Benchmark: `modelops merge` vs mergekit on synthetic sharded bf16 Llama-shaped models, wall time and peak RSS.

    OMP_NUM_THREADS=1 python benchmarks/bench_merge.py --layers 2,16 --mergekit /path/to/mergekit-venv/bin

Makes a base and three fine-tunes (base + small noise) per size, then runs a three-model TIES merge and a
model_stock merge with each tool as its own process under /usr/bin/time (same measurement for both), with the
page cache warm. mergekit is optional: it runs only when `--mergekit` names the bin folder of a separate
environment where it is installed (it needs transformers ≥ 5; never install it into modelops' environment).
Prints the ratios modelops/mergekit, and modelops' peak RSS at each size (flat means streamed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from synthetic import llama_shapes, warm

HIDDEN, VOCAB, HEADS = 2048, 32000, 16
INTER = HIDDEN * 11 // 4  # as in synthetic.llama_shapes
RECIPES = {
    "ties": "merge_method: ties\nbase_model: {base}\nmodels:\n"
    + "".join(f"  - model: {{m{i}}}\n    parameters: {{{{weight: 1.0, density: 0.5}}}}\n" for i in (1, 2, 3))
    + "dtype: bfloat16\n",
    "model_stock": "merge_method: model_stock\nbase_model: {base}\nmodels:\n"
    + "".join(f"  - model: {{m{i}}}\n" for i in (1, 2, 3))
    + "dtype: bfloat16\n",
}


def llama_config(layers: int) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "vocab_size": VOCAB,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


def make_family(folder: Path, layers: int, shards: int = 4) -> dict[str, Path]:
    """base + m1..m3 (base + 0.002 noise), sharded bf16 safetensors with an index and a real Llama config."""
    shapes = llama_shapes(layers, HIDDEN, VOCAB)
    names = list(shapes)
    groups = [names[i::shards] for i in range(shards)]
    dirs = {k: folder / k for k in ("base", "m1", "m2", "m3")}
    for d in dirs.values():
        d.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    weight_map: dict[str, str] = {}
    for s, group in enumerate(groups):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        base = {n: torch.randn(shapes[n], generator=g).mul_(0.02).bfloat16() for n in group}
        save_file(base, dirs["base"] / fname, metadata={"format": "pt"})
        for k in ("m1", "m2", "m3"):
            ft = {n: t.float().add_(torch.randn(t.shape, generator=g), alpha=0.002).bfloat16() for n, t in base.items()}
            save_file(ft, dirs[k] / fname, metadata={"format": "pt"})
            del ft
        weight_map.update(dict.fromkeys(group, fname))
        del base
    total = sum(2 * torch.Size(s).numel() for s in shapes.values())
    for d in dirs.values():
        (d / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
        )
        (d / "config.json").write_text(json.dumps(llama_config(layers)))
    return dirs


def timed(cmd: list[str]) -> dict[str, float]:
    """Wall seconds and peak RSS (bytes) of one process, from /usr/bin/time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *cmd], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{r.stderr[-3000:]}")
    line = next(ln for ln in reversed(r.stderr.splitlines()) if ln.startswith("TIME "))
    _, wall, kb = line.split()
    return {"seconds": float(wall), "peak_rss": int(kb) * 1024}


def run_size(
    root: Path, layers: int, mergekit_bin: Path | None, methods: list[str]
) -> tuple[int, dict[str, dict[str, dict[str, float]]]]:
    """(parameters per model, {method: {tool: {seconds, peak_rss}}}) for one model depth."""
    folder = root / f"family-{layers}"
    t0 = time.perf_counter()
    dirs = make_family(folder, layers)
    params = sum(torch.Size(s).numel() for s in llama_shapes(layers, HIDDEN, VOCAB).values())
    print(f"# {layers} layers: {params / 1e9:.2f}B params per model, made in {time.perf_counter() - t0:.0f} s")
    modelops = str(Path(sys.executable).parent / "modelops")
    results: dict[str, dict[str, dict[str, float]]] = {}
    for method in methods:
        text = RECIPES[method]
        recipe = folder / f"{method}.yaml"
        recipe.write_text(text.format(**{k: str(v) for k, v in dirs.items()}))
        results[method] = {}
        tools = [("modelops", [modelops, "merge", "--recipe", str(recipe), "--out", str(folder / "out"), "-q"])]
        if mergekit_bin is not None:
            mk = [str(mergekit_bin / "mergekit-yaml"), str(recipe), str(folder / "out"), "--lazy-unpickle"]
            tools.append(("mergekit", mk))
        for tool, cmd in tools:
            warm(folder)
            results[method][tool] = timed(cmd)
            shutil.rmtree(folder / "out", ignore_errors=True)
            r = results[method][tool]
            print(f"  {method:12s} {tool:9s} {r['seconds']:8.1f} s  {r['peak_rss'] / 1e9:6.2f} GB peak RSS", flush=True)
    shutil.rmtree(folder)
    return params, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="2,16", help="model depths to run (hidden 2048: 2 → 0.23B, 16 → 0.95B)")
    ap.add_argument("--mergekit", type=Path, default=None, help="bin folder of an environment with mergekit")
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--methods", default=",".join(RECIPES), help=f"which merges to run ({', '.join(RECIPES)})")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-merge-", dir=args.dir))
    try:
        methods = args.methods.split(",")
        rows = {int(n): run_size(root, int(n), args.mergekit, methods) for n in args.layers.split(",")}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        "\n| model | method | modelops wall | modelops peak RSS | mergekit wall | mergekit peak RSS | wall ratio | RSS ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for params, res in rows.values():
        size = f"{params / 1e9:.2f}B"
        for method in methods:
            ours, theirs = res[method]["modelops"], res[method].get("mergekit")
            cells = [f"{ours['seconds']:.1f} s", f"{ours['peak_rss'] / 1e9:.2f} GB"]
            if theirs:
                cells += [f"{theirs['seconds']:.1f} s", f"{theirs['peak_rss'] / 1e9:.2f} GB"]
                cells += [
                    f"{ours['seconds'] / theirs['seconds']:.2f}x",
                    f"{ours['peak_rss'] / theirs['peak_rss']:.2f}x",
                ]
            else:
                cells += ["–"] * 4
            print(f"| {size} | {method} | " + " | ".join(cells) + " |")
    sizes = sorted(rows)
    if len(sizes) > 1:
        for method in methods:
            lo, hi = (rows[n][1][method]["modelops"]["peak_rss"] for n in (sizes[0], sizes[-1]))
            print(f"modelops {method} peak RSS from {sizes[0]} to {sizes[-1]} layers: {(hi - lo) / 1e6:+.0f} MB")


if __name__ == "__main__":
    main()
