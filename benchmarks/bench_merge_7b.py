"""Benchmark: `extrapolate` and a three-model TIES at 7B shape, against the disk's own speed measured in the same run.

    OMP_NUM_THREADS=1 python benchmarks/bench_merge_7b.py --dir /scratch/bench-7b     # ~56 GB free needed

Makes a synthetic sharded bf16 Llama-7B-shaped family once (base, ft1, ft2: 6.8B parameters, 13.7 GB each) and
keeps it for later runs. Each run then measures, in this order: the disk's write speed (a file written and
fsynced) and its cold read speed (the base model's files, evicted from the page cache first); then `modelops
extrapolate` (SFT = base, DPO = ft1) and `modelops merge` TIES (base + ft1 + ft2), each as its own process under
`/usr/bin/time` with its inputs evicted from the page cache, so every byte comes from the disk. The merge
fsyncs each shard it writes, so wall time includes the writes reaching the disk.

Disk-bound ceiling of a run = bytes read / read speed + bytes written / write speed. Reported: wall, peak RSS,
achieved GB/s ((read + written) / wall) and the share of the ceiling reached (ceiling / wall).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from synthetic import llama_shapes

POOL = 1 << 26  # values per random pool; tensors are slices of it at random offsets, so making 41 GB is I/O-bound
ROLES = ("base", "ft1", "ft2")


def pools(seed: int = 0) -> dict[str, torch.Tensor]:
    """One bf16 pool per model: base ~ N(0, 0.02²), each fine-tune = base + N(0, 0.002²) at the same index."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(POOL, generator=g).mul_(0.02)
    out = {"base": base.bfloat16()}
    for role in ROLES[1:]:
        out[role] = base.add(torch.randn(POOL, generator=g), alpha=0.002).bfloat16()
    return out


def slice_of(pool: torch.Tensor, offset: int, shape: tuple[int, ...]) -> torch.Tensor:
    """`numel(shape)` values of `pool` from `offset`, wrapping around; the same offset gives the same entries."""
    n = 1
    for d in shape:
        n *= d
    reps = (offset + n + POOL - 1) // POOL
    flat = pool.repeat(reps) if reps > 1 else pool
    return flat[offset : offset + n].reshape(shape).clone()


def llama_config(layers: int, hidden: int, vocab: int) -> dict[str, object]:
    heads = max(1, hidden // 128)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": hidden * 11 // 4,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


def make_family(folder: Path, layers: int, hidden: int, vocab: int, shard_bytes: float) -> dict[str, Path]:
    """base, ft1, ft2 as sharded bf16 safetensors with an index; reused when `made.json` says the same shape."""
    shape = {"layers": layers, "hidden": hidden, "vocab": vocab}
    dirs = {r: folder / r for r in ROLES}
    marker = folder / "made.json"
    if marker.exists() and json.loads(marker.read_text()) == shape:
        return dirs
    shutil.rmtree(folder, ignore_errors=True)
    for d in dirs.values():
        d.mkdir(parents=True)
    shapes = llama_shapes(layers, hidden, vocab)
    groups: list[list[str]] = [[]]
    size = 0
    for name, s in shapes.items():
        nbytes = 2 * torch.Size(s).numel()
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    rng = torch.Generator().manual_seed(1)
    offsets = {n: int(torch.randint(POOL, (1,), generator=rng)) for n in shapes}
    pool = pools()
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        for role in ROLES:
            tensors = {n: slice_of(pool[role], offsets[n], shapes[n]) for n in group}
            save_file(tensors, dirs[role] / fname, metadata={"format": "pt"})
            del tensors
        weight_map.update(dict.fromkeys(group, fname))
    total = sum(2 * torch.Size(s).numel() for s in shapes.values())
    for d in dirs.values():
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
        (d / "config.json").write_text(json.dumps(llama_config(layers, hidden, vocab)))
    marker.write_text(json.dumps(shape))
    return dirs


def weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def evict(files: list[Path]) -> None:
    """Drop these files' pages from the page cache (clean pages only; no root needed), so reads hit the disk."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def write_speed(folder: Path, gb: float) -> float:
    """Bytes/s of a sequential write of `gb` GB, fsynced (the data is random, so nothing compresses it away)."""
    block = torch.randint(0, 256, (1 << 26,), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    data = block.numpy().tobytes()
    path, n = folder / "probe.bin", max(1, int(gb * 1e9) // len(data))
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        for _ in range(n):
            fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    seconds = time.perf_counter() - t0
    path.unlink()
    return n * len(data) / seconds


def read_speed(files: list[Path]) -> float:
    """Bytes/s of reading `files` cold, sequentially, in 16 MB blocks."""
    evict(files)
    total, t0 = 0, time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while chunk := fh.read(1 << 24):
                total += len(chunk)
    return total / (time.perf_counter() - t0)


def timed(cmd: list[str], threads: int) -> dict[str, float]:
    """Wall seconds and peak RSS (bytes) of one process, from /usr/bin/time."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *cmd], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    _, wall, kb = next(ln for ln in reversed(r.stderr.splitlines()) if ln.startswith("TIME ")).split()
    return {"seconds": float(wall), "peak_rss": int(kb) * 1024}


def commands(dirs: dict[str, Path], out: Path, threads: int) -> dict[str, tuple[list[str], list[Path]]]:
    """Each benchmarked operation: its command line and the models it reads."""
    modelops = str(Path(sys.executable).parent / "modelops")
    common = ["--out", str(out), "--threads", str(threads), "-q"]
    recipe = out.parent / "ties.yaml"
    recipe.write_text(
        f"merge_method: ties\nbase_model: {dirs['base']}\nmodels:\n"
        + "".join(f"  - model: {dirs[r]}\n    parameters: {{weight: 1.0, density: 0.5}}\n" for r in ROLES[1:])
        + "dtype: bfloat16\n"
    )
    return {
        "extrapolate α=0.3": (
            [modelops, "extrapolate", "--sft", str(dirs["base"]), "--dpo", str(dirs["ft1"]), "--alpha", "0.3", *common],
            [dirs["base"], dirs["ft1"]],
        ),
        "TIES, 3 models": ([modelops, "merge", "--recipe", str(recipe), *common], [dirs[r] for r in ROLES]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, required=True, help="scratch folder; the family is kept there for reruns")
    ap.add_argument("--layers", type=int, default=32, help="decoder layers (32 with hidden 4096: Llama-7B's shape)")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--shard-gb", type=float, default=2.0, help="input shard size")
    ap.add_argument("--probe-gb", type=float, default=4.0, help="size of the disk write probe")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the merges")
    ap.add_argument("--only", default=None, help="run only the operations whose name starts with this")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dirs = make_family(args.dir / "family", args.layers, args.hidden, args.vocab, args.shard_gb * 1e9)
    params = sum(torch.Size(s).numel() for s in llama_shapes(args.layers, args.hidden, args.vocab).values())
    print(f"# family: {params / 1e9:.2f}B parameters per model, ready in {time.perf_counter() - t0:.0f} s", flush=True)
    w_speed = write_speed(args.dir, args.probe_gb)
    r_speed = read_speed(weight_files(dirs["base"]))
    print(f"# disk: write {w_speed / 1e9:.2f} GB/s (fsynced), cold read {r_speed / 1e9:.2f} GB/s", flush=True)
    out = args.dir / "out"
    rows = []
    for name, (cmd, inputs) in commands(dirs, out, args.threads).items():
        if args.only and not name.startswith(args.only):
            continue
        shutil.rmtree(out, ignore_errors=True)
        files = [f for d in inputs for f in weight_files(d)]
        evict(files)
        r = timed(cmd, args.threads)
        read = sum(f.stat().st_size for f in files)
        written = sum(f.stat().st_size for f in weight_files(out))
        shutil.rmtree(out)
        ceiling = read / r_speed + written / w_speed
        rows.append((name, read, written, r, ceiling))
        print(f"# {name}: {r['seconds']:.1f} s, peak RSS {r['peak_rss'] / 1e9:.2f} GB", flush=True)
    print(
        f"\n{params / 1e9:.2f}B bf16, {args.threads} thread(s); disk write {w_speed / 1e9:.2f} GB/s, "
        f"cold read {r_speed / 1e9:.2f} GB/s\n"
    )
    print("| operation | read | written | wall | peak RSS | achieved | disk-bound ceiling | share of ceiling |")
    print("|---|---|---|---|---|---|---|---|")
    for name, read, written, r, ceiling in rows:
        wall = r["seconds"]
        print(
            f"| {name} | {read / 1e9:.1f} GB | {written / 1e9:.1f} GB | {wall:.1f} s | {r['peak_rss'] / 1e9:.2f} GB "
            f"| {(read + written) / wall / 1e9:.2f} GB/s | {ceiling:.1f} s | {ceiling / wall:.0%} |"
        )


if __name__ == "__main__":
    main()
