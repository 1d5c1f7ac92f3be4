"""Benchmark weak-to-strong search: incremental scoring against re-scoring the whole response every chunk.

    OMP_NUM_THREADS=1 python benchmarks/bench_search.py [--prompts 2] [--max-new 64] [--shape 4 4 5]

From-config Llamas with a 32000-word vocabulary: a large one (~40M parameters) samples, a small base and a
small "expert" (~4M each, the expert a noisy copy of the base) score. Four runs on the same prompts and seed:
  large alone   the lock-step sampler with the large model only, W·K rows per prompt (the cost floor)
  incremental   CBS(W, K, L): the small models are fed each chunk's new tokens once (parent score + chunk)
  full          CBS(W, K, L) re-feeding every row's whole response to the small models each chunk (what the
                reference implementation does, minus its one-prompt-at-a-time loop)
  parallel      incremental with `--parallel-models`: the base scores on this thread, the expert on a second
All CBS runs must return the same tokens and scores; the table shows seconds, small-model tokens fed, and
the time ratios.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def llama(seed: int, hidden: int, layers: int, vocab: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
                      max_position_embeddings=1024, initializer_range=0.2, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def main() -> None:
    import torch

    from modelops.decode import CoDecoder, FusionRule
    from modelops.decode.models import Member
    from modelops.decode.overlap import Overlap
    from modelops.decode.search import chunk_beam_search, search_sampling

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--shape", type=int, nargs=3, default=[4, 4, 5], metavar=("W", "K", "L"))
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    w, k, chunk = args.shape
    from bench_decode import tokenizer_for_vocab  # same folder: one tokenizer for the decode benchmarks

    tok = tokenizer_for_vocab(args.vocab)
    large = llama(0, 384, 8, args.vocab)
    base = llama(1, 64, 2, args.vocab)
    expert = copy.deepcopy(base)
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        for p in expert.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    sizes = [sum(p.numel() for p in m.parameters()) / 1e6 for m in (large, base)]
    mem = [
        Member("large", "large", large, tok),
        Member("base", "base", base, tok),
        Member("expert", "expert", expert, tok),
    ]
    g = torch.Generator().manual_seed(0)
    texts = [
        " ".join(f"w{i}" for i in torch.randint(0, 1000, (16,), generator=g).tolist()) for _ in range(args.prompts)
    ]
    sampling = search_sampling(args.max_new, seed=0)

    single = CoDecoder([mem[0]], FusionRule("single"))
    t0 = time.perf_counter()
    single.generate([t for t in texts for _ in range(w * k)], sampling, batch_size=len(texts) * w * k)
    floor = time.perf_counter() - t0
    runs = {}
    overlap = Overlap()
    for name, full, over in (("incremental", False, None), ("full", True, None), ("parallel", False, overlap)):
        stats: dict = {}
        t0 = time.perf_counter()
        out = chunk_beam_search(*mem, texts, beam_width=w, successors=k, chunk_len=chunk, sampling=sampling,
                                batch_size=len(texts), full_rescore=full, stats=stats, overlap=over)  # fmt: skip
        runs[name] = (time.perf_counter() - t0, stats, out)
    overlap.close()
    inc, full, par = runs["incremental"], runs["full"], runs["parallel"]
    same = all([a.token_ids for a in inc[2]] == [b.token_ids for b in r[2]] for r in (full, par))
    diff = max(abs(a.score - b.score) for a, b in zip(inc[2], full[2], strict=True))
    print(f"large {sizes[0]:.1f}M, small {sizes[1]:.1f}M params, vocab {args.vocab}; {args.prompts} prompts, "
          f"CBS({w},{k},{chunk}), {args.max_new} new tokens, {args.threads} thread(s)")  # fmt: skip
    print(f"{'run':<14}{'seconds':>9}{'small tokens fed':>18}{'chunks':>8}")
    print(f"{'large alone':<14}{floor:>9.2f}{'-':>18}{'-':>8}")
    for name, (sec, stats, _) in runs.items():
        print(f"{name:<14}{sec:>9.2f}{stats['small_tokens_fed']:>18}{stats['chunks']:>8}")
    print(f"full ÷ incremental: {full[0] / inc[0]:.2f}×   incremental ÷ large alone: {inc[0] / floor:.2f}×   "
          f"parallel (--parallel-models: the small pair on two threads) ÷ incremental: {par[0] / inc[0]:.2f}×   "
          f"same tokens: {same}, max score difference {diff:.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
