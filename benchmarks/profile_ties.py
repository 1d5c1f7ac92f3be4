"""Where a TIES merge spends its time at a 7B tensor's shape: a cProfile of the method on one tensor, by stage.

    OMP_NUM_THREADS=1 python benchmarks/profile_ties.py [--rows 11008 --cols 4096 --models 2] [--threads 1,2]

Runs modelops' TIES (density 0.5, weight 1) on a bf16 base and `--models` fine-tunes of one (rows, cols) tensor
(Llama-7B's MLP shape by default), in process, and prints ns per parameter for each stage: the exact top-k
selection (histogram passes), the task vectors rebuilt for the merge with the cut applied, and the sign election
and weighted sum. Stages are cProfile's cumulative times of the functions named in the table. `--threads` then
times the whole merge (no profiler) at each torch thread count, in alternating rounds, with the ratio to the first.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch

from modelops.merge.methods import get_method
from modelops.merge.registry import TensorJob

STAGES = {  # (file suffix, function) -> what the stage is
    ("sparsify.py", "kth_largest"): "top-k selection: two histogram passes over the magnitudes",
    ("task_vectors.py", "abs_blocks"): "magnitudes rebuilt from bf16 for the selection",
    ("task_vectors.py", "_kept"): "task vectors rebuilt for the merge, the cut applied",
    ("sparsify.py", "keep"): "the cut applied (inside the line above)",
    ("task_vectors.py", "merge_task_vectors"): "sign election, weighted disjoint mean",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=11008)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--models", type=int, default=2)
    ap.add_argument("--threads", default="", help="comma-separated torch thread counts to time, e.g. 1,2")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    base = torch.randn(args.rows, args.cols, generator=g).to(torch.bfloat16)
    fts = [(base.float() + 0.01 * torch.randn(base.shape, generator=g)).to(torch.bfloat16) for _ in range(args.models)]
    n = base.numel()
    job = TensorJob(
        name="mlp",
        base=base,
        tensors=fts,
        per_model={"weight": [1.0] * args.models, "density": [0.5] * args.models},
        params={"lambda": 1.0, "normalize": True, "rescale": False, "int8_mask": False},
    )
    blocks = get_method("ties").blocks  # what the executor runs: the result as row blocks, written as they come
    assert blocks is not None
    for _ in blocks(job):  # warm-up
        pass
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in blocks(job):
        pass
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    print(f"TIES, {args.models} fine-tunes, one {args.rows}x{args.cols} bf16 tensor: {wall / n * 1e9:.1f} ns/param\n")
    print("| stage | ns per parameter | share |")
    print("|---|---|---|")
    for (suffix, func), label in STAGES.items():
        cum = sum(v[3] for (file, _, name), v in stats.items() if file.endswith(suffix) and name == func)
        print(f"| {label} (`{func}`) | {cum / n * 1e9:.1f} | {cum / wall:.0%} |")
    if args.threads:
        print_thread_scaling(blocks, job, [int(t) for t in args.threads.split(",")], args.rounds, n)


def print_thread_scaling(blocks, job: TensorJob, counts: list[int], rounds: int, n: int) -> None:
    """ns/param of the whole merge at each thread count: the median of `rounds` alternating rounds."""
    times: dict[int, list[float]] = {c: [] for c in counts}
    for _ in range(rounds):
        for c in counts:
            torch.set_num_threads(c)
            t0 = time.perf_counter()
            for _ in blocks(job):
                pass
            times[c].append(time.perf_counter() - t0)
    first = statistics.median(times[counts[0]])
    print(f"\n| torch threads | ns per parameter (median of {rounds}) | time ÷ {counts[0]} thread(s) |")
    print("|---|---|---|")
    for c in counts:
        med = statistics.median(times[c])
        print(f"| {c} | {med / n * 1e9:.1f} | {med / first:.2f} |")


if __name__ == "__main__":
    main()
