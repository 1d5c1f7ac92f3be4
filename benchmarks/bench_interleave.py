"""Why alternating models costs more than running each alone: every model's own step time, alone and interleaved.

    OMP_NUM_THREADS=1 python benchmarks/bench_interleave.py [--batch 1] [--new-tokens 128] [--rounds 3]

The models of bench_decode.py (~40M large, two ~4M small, vocab 32000), each in its own greedy loop with the
in-place KV cache. "alone" runs one model's loop by itself; "interleaved" runs the three loops one step of each
in turn (nothing fused) and times each model's steps separately. The same forward calls on the same inputs:
the difference is what the other models' weights do to the caches in between.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from bench_decode import llama

from modelops.runtime.kvcache import growing_cache
from modelops.transformers_compat import cache_keyword


@torch.inference_mode()
def step_times(models: list, ids: torch.Tensor, new_tokens: int) -> list[float]:
    """Seconds spent in each model's decode steps (prefill excluded), the models stepping in turn."""
    kws = [cache_keyword(m) for m in models]
    caches = [growing_cache(m) for m in models]
    outs = [
        m(input_ids=ids, use_cache=True, logits_to_keep=1, **{kw: c})
        for m, kw, c in zip(models, kws, caches, strict=True)
    ]
    toks = [o.logits[:, -1].argmax(-1, keepdim=True) for o in outs]
    spent = [0.0] * len(models)
    for _ in range(new_tokens - 1):
        for j, (m, kw, c) in enumerate(zip(models, kws, caches, strict=True)):
            start = time.perf_counter()
            toks[j] = m(input_ids=toks[j], use_cache=True, **{kw: c}).logits[:, -1].argmax(-1, keepdim=True)
            spent[j] += time.perf_counter() - start
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    names = ["large", "small base", "expert"]
    models = [llama(512, 2, 1536, args.vocab, 0), llama(64, 2, 256, args.vocab, 1), llama(64, 2, 256, args.vocab, 2)]
    ids = torch.randint(3, args.vocab, (args.batch, 16), generator=torch.Generator().manual_seed(0))
    alone: list[list[float]] = [[] for _ in models]
    mixed: list[list[float]] = [[] for _ in models]
    for _ in range(args.rounds):
        for j, model in enumerate(models):
            alone[j].append(step_times([model], ids, args.new_tokens)[0])
        for j, t in enumerate(step_times(models, ids, args.new_tokens)):
            mixed[j].append(t)
    steps = args.new_tokens - 1
    print(f"batch {args.batch}, {steps} decode steps per model, {args.rounds} rounds; ms per step (median)")
    print(f"{'model':<12}{'alone':>8}{'interleaved':>13}{'ratio':>8}")
    for j, name in enumerate(names):
        a, m = statistics.median(alone[j]) / steps * 1e3, statistics.median(mixed[j]) / steps * 1e3
        print(f"{name:<12}{a:>8.2f}{m:>13.2f}{m / a:>8.2f}")
    total_a = sum(statistics.median(x) for x in alone)
    total_m = sum(statistics.median(x) for x in mixed)
    print(f"{'all three':<12}{total_a / steps * 1e3:>8.2f}{total_m / steps * 1e3:>13.2f}{total_m / total_a:>8.2f}")


if __name__ == "__main__":
    main()
