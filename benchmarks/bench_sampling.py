"""Benchmark: drawing the next token, modelops' inverse-CDF sampler vs torch.multinomial.

    OMP_NUM_THREADS=1 python benchmarks/bench_sampling.py        # vocab 32000; ~40M large, ~4M smalls

1. One draw per row from softmax(random logits), rows 1 / 16 / 64: `sample_rows` (one uniform per row, a binary
   search in the running sum) vs `torch.multinomial(probs, 1)` (which draws an exponential for every entry).
2. A sampled EFT decode (`CoDecoder.generate`, T 0.7, top-k 50, no early stop) at batch 1 and 16, once with
   modelops' sampler and once with `torch.multinomial` put in its place; tokens/s of each and their ratio.
   Each round runs both; the median over rounds is printed. The two draw from the same distribution but from
   different random streams, so the tokens differ (tests/test_decode_rules.py checks the distribution).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_decode import llama, tokenizer_for_vocab


def per_call(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    import modelops.decode.sampling as sampling_module
    from modelops.decode import CoDecoder, FusionRule, SamplingConfig
    from modelops.decode.models import Member
    from modelops.decode.sampling import sample_rows

    gen = torch.Generator().manual_seed(0)
    print(f"1. one draw per row, vocab {args.vocab} (ms per call)")
    for rows in (1, 16, 64):
        probs = torch.randn(rows, args.vocab, generator=gen).softmax(-1)
        ours = per_call(lambda p=probs: sample_rows(p, gen), 200)
        theirs = per_call(lambda p=probs: torch.multinomial(p, 1, generator=gen), 50)
        print(f"   rows {rows:3d}: sample_rows {ours * 1e3:.3f}, torch.multinomial {theirs * 1e3:.3f}, "
              f"{theirs / ours:.1f}x faster")  # fmt: skip

    tok = tokenizer_for_vocab(args.vocab)
    models = [llama(512, 2, 1536, args.vocab, 0), llama(64, 2, 256, args.vocab, 1), llama(64, 2, 256, args.vocab, 2)]
    members = [Member(role, role, m, tok) for role, m in zip(("large", "base", "expert"), models, strict=True)]
    decoder = CoDecoder(members, FusionRule("eft"))
    decoder.stop_ids = set()  # every row decodes --new-tokens tokens
    ours_fn = sampling_module.sample_rows

    def multinomial(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.multinomial(weights, 1, generator=generator)[:, 0]

    print(f"2. sampled EFT decode, 40M/4M/4M, T 0.7 top-k 50, {args.new_tokens} new tokens, {args.rounds} rounds")
    for batch in (1, 16):
        prompts = [f"w{i} w{i + 7} w{i + 3}" for i in range(batch)]
        ratios, rates = [], {"modelops": [], "multinomial": []}
        for r in range(args.rounds):
            seconds = {}
            for name, fn in (("modelops", ours_fn), ("multinomial", multinomial)):
                sampling_module.sample_rows = fn  # `choose` looks the sampler up at call time
                cfg = SamplingConfig(max_new_tokens=args.new_tokens, temperature=0.7, top_k=50, seed=r)
                start = time.perf_counter()
                gens = decoder.generate(prompts, cfg, batch_size=batch)
                seconds[name] = time.perf_counter() - start
                rates[name].append(sum(g.num_tokens for g in gens) / seconds[name])
            sampling_module.sample_rows = ours_fn
            ratios.append(seconds["multinomial"] / seconds["modelops"])
        ratios.sort()
        print(
            f"   batch {batch:2d}: modelops {statistics.median(rates['modelops']):.1f} tokens/s, with "
            f"torch.multinomial {statistics.median(rates['multinomial']):.1f}; speed-up median "
            f"{statistics.median(ratios):.2f} [{ratios[0]:.2f}, {ratios[-1]:.2f}]"
        )


if __name__ == "__main__":
    main()
