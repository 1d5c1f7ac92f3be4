"""Benchmark: continuous batching (a finished row's place goes to the next prompt) vs fixed groups of prompts.

    OMP_NUM_THREADS=1 python benchmarks/bench_batching.py        # ~40M large, ~4M smalls, vocab 32000

From-config Llamas (no download), EFT, sampled at temperature 1. Their next-token distributions are close to
uniform, so making 1/--stop-every of the vocabulary stop ids ends each row after a geometric number of tokens
(mean about --stop-every, capped at --max-new-tokens): rows of one batch finish at very different times, as
answers of a chat model do. Each round decodes the same prompts both ways (`CoDecoder.generate` with
`continuous=True`, and `False`: the next group starts when the whole group is done) and prints tokens/s, the
batch occupancy (live rows ÷ batch size, per step) and the ratio of the two rates; the median over rounds is
the result. Greedy outputs of the two modes are identical (tests/test_decode_continuous.py); sampled ones are not
(the random stream is shared by different rows), hence the token rate, not the time, is compared.

    OMP_NUM_THREADS=1 python benchmarks/bench_batching.py --rule cbs   # or bon: weak-to-strong search

Search (`chunk_beam_search`, T 0.7, top-k 50): --batch-size prompts at a time, each with W·K (or N) rows; a
prompt that is done hands its place to the next at the next chunk boundary (bon: every --score-every tokens).
Each prompt samples from its own generator, so both modes give the same results (checked here): the time ratio
is the result.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_decode import llama, tokenizer_for_vocab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--stop-every", type=int, default=64, help="1 token id in this many stops a row")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rule", choices=("eft", "cbs", "bon"), default="eft")
    ap.add_argument("--shape", default="2,2,5", help="cbs: W,K,L")
    ap.add_argument("--n", type=int, default=4, help="bon: N")
    ap.add_argument("--score-every", type=int, default=16, help="bon: tokens between scorings and admissions")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from modelops.decode import CoDecoder, FusionRule, SamplingConfig
    from modelops.decode.models import Member

    tok = tokenizer_for_vocab(args.vocab)
    models = [llama(512, 2, 1536, args.vocab, 0), llama(64, 2, 256, args.vocab, 1), llama(64, 2, 256, args.vocab, 2)]
    members = [Member(role, role, m, tok) for role, m in zip(("large", "base", "expert"), models, strict=True)]
    decoder = CoDecoder(members, FusionRule("eft"))
    decoder.stop_ids = set(range(4, args.vocab, args.stop_every))
    g = torch.Generator().manual_seed(0)
    prompts = [" ".join(f"w{int(i)}" for i in torch.randint(0, args.vocab - 4, (int(n),), generator=g))
               for n in torch.randint(4, 32, (args.prompts,), generator=g)]  # fmt: skip
    if args.rule != "eft":
        search(args, members, prompts)
        return
    print(
        f"{args.prompts} prompts, batch {args.batch_size}, EFT sampled at T=1, up to {args.max_new_tokens} new "
        f"tokens, 1 id in {args.stop_every} stops a row; {args.repeats} rounds"
    )
    ratios = []
    for r in range(args.repeats):
        rates = {}
        for continuous in (True, False):
            sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=1.0, seed=r)
            start = time.perf_counter()
            gens = decoder.generate(prompts, sampling, batch_size=args.batch_size, continuous=continuous)
            seconds = time.perf_counter() - start
            tokens = sum(g.num_tokens for g in gens)
            rates[continuous] = tokens / seconds
            lengths = sorted(g.num_tokens for g in gens)
            print(
                f"round {r} {'continuous' if continuous else 'groups    '}: {tokens} tokens in {seconds:.1f} s = "
                f"{tokens / seconds:.1f} tokens/s, occupancy {decoder.last_stats['occupancy']:.2f}, "
                f"row lengths median {lengths[len(lengths) // 2]} max {lengths[-1]}"
            )
        ratios.append(rates[True] / rates[False])
    ratios.sort()
    print(f"continuous ÷ groups, tokens/s: median {statistics.median(ratios):.2f} [{ratios[0]:.2f}, {ratios[-1]:.2f}]")


def search(args: argparse.Namespace, members: list, prompts: list[str]) -> None:
    from modelops.decode.search import chunk_beam_search, search_sampling

    if args.rule == "cbs":
        width, successors, chunk = (int(x) for x in args.shape.split(","))
        shape = {"beam_width": width, "successors": successors, "chunk_len": chunk}
        label = f"CBS({width}, {successors}, {chunk})"
    else:
        shape = {"beam_width": 1, "successors": args.n, "chunk_len": None, "score_every": args.score_every}
        label = f"best-of-{args.n}, scored every {args.score_every} tokens"
    stop_ids = set(range(4, args.vocab, args.stop_every))
    print(
        f"{args.prompts} prompts, {label}, batch {args.batch_size} prompts, T 0.7 top-k 50, up to "
        f"{args.max_new_tokens} new tokens, 1 id in {args.stop_every} stops a row; {args.repeats} rounds"
    )
    ratios = []
    for r in range(args.repeats):
        seconds, results = {}, {}
        for continuous in (True, False) if r % 2 == 0 else (False, True):  # alternate which mode runs first
            stats: dict = {}
            sampling = search_sampling(args.max_new_tokens, seed=r)
            start = time.perf_counter()
            results[continuous] = chunk_beam_search(
                *(m for m in members), prompts, sampling=sampling, batch_size=args.batch_size, stats=stats,
                continuous=continuous, stop_ids=stop_ids, **shape,
            )  # fmt: skip
            seconds[continuous] = time.perf_counter() - start
            print(
                f"round {r} {'continuous' if continuous else 'groups    '}: {seconds[continuous]:.1f} s, "
                f"{stats['large_steps']} large steps, {stats['rows_sampled']} rows sampled, occupancy "
                f"{stats['occupancy']:.2f}, {stats['admissions']} admissions"
            )
        same = [a.token_ids for a in results[True]] == [b.token_ids for b in results[False]]
        print(f"round {r}: same chosen responses in both modes: {same}")
        ratios.append(seconds[False] / seconds[True])
    ratios.sort()
    print(f"groups ÷ continuous, time: median {statistics.median(ratios):.2f} [{ratios[0]:.2f}, {ratios[-1]:.2f}]")


if __name__ == "__main__":
    main()
