"""Benchmark: speculative up-scaling (`--speculative K`) against plain lock-step EFT.

    OMP_NUM_THREADS=1 python benchmarks/bench_speculative.py                 # random models, then the zoo if built
    OMP_NUM_THREADS=1 python benchmarks/bench_speculative.py --no-random     # the zoo only

(a) From-config Llamas (no download): ~40M large, ~4M small base, the expert = the base plus seeded noise (a
    stand-in for a fine-tune), vocab 32000. The large model is unrelated to the smalls, so the acceptance rate
    is near its floor: this measures the cost of speculation when drafts are wrong.
(b) The zoo (`modelops zoo build --preset full`, if present): large_base + small_base + sft_facts on
    eval/facts.jsonl prompts, and + sft_review on eval/review.jsonl prompts: related models, real acceptance.

For each: greedy tokens/s of plain EFT vs speculative with K drafts (outputs checked identical), under the
constant and the heuristic draft-length schedule; the ratio is the median over `--repeats` pairs of (plain EFT
run, speculative run right after it), [min, max]; the acceptance rate (accepted / drafted), tokens per
verification round and drafts per round; then the sampled (temperature 1) acceptance rate. tokens/s = new
tokens of all rows ÷ wall time of the whole generate call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def random_decoder(vocab: int):
    from bench_decode import llama, tokenizer_for_vocab

    from modelops.decode import CoDecoder, FusionRule
    from modelops.decode.models import Member

    tok = tokenizer_for_vocab(vocab)
    large = llama(512, 2, 1536, vocab, 0)
    base = llama(64, 2, 256, vocab, 1)
    expert = llama(64, 2, 256, vocab, 1)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in expert.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    members = [Member("large", "large", large, tok), Member("base", "base", base, tok)]
    members.append(Member("expert", "expert", expert, tok))
    sizes = "/".join(f"{sum(p.numel() for p in m.model.parameters()) / 1e6:.1f}M" for m in members)
    return CoDecoder(members, FusionRule("eft")), sizes


def find_zoo() -> Path | None:
    from modelops.runtime.zoo_names import list_zoos

    for folder, manifest in list_zoos():
        roles = ("large_base", "small_base", "sft_facts", "sft_review")
        if manifest and manifest.get("preset") == "full" and all((folder / m).is_dir() for m in roles):
            return folder
    return None


REPEATS = 3


def seconds(fn):
    """(result, wall time) of one call."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def compare(
    name: str, decoder, texts: list[str], draft_lens: list[int], batch: int, new_tokens: int, schedules: list[str]
) -> None:
    """Each configuration is timed right after a plain EFT run, REPEATS times: the ratio is the median of those
    pairs' ratios, so the machine's drift over minutes does not land on one side."""
    from modelops.decode import SamplingConfig
    from modelops.decode.speculative import speculative_generate

    greedy = SamplingConfig(max_new_tokens=new_tokens)
    decoder.generate(texts[:1], SamplingConfig(max_new_tokens=2), batch_size=1)  # warm-up
    plain_run = partial(decoder.generate, texts, greedy, batch_size=batch)
    plain, t_plain = seconds(plain_run)
    n_tok = sum(g.num_tokens for g in plain)
    print(f"{name:34s} batch {batch:2d}  plain EFT      {n_tok / t_plain:8.1f} tok/s  ({n_tok} tokens, first run)")
    for schedule in schedules:
        for k in draft_lens:
            run = partial(speculative_generate, decoder, texts, batch_size=batch, schedule=schedule)
            ratios, spec_times = [], []
            for _ in range(REPEATS):
                _, t_p = seconds(plain_run)
                (gens, st), t_s = seconds(lambda k=k, run=run: run(greedy, draft_len=k))
                ratios.append(t_p / t_s)
                spec_times.append(t_s)
            same = [g.token_ids for g in gens] == [g.token_ids for g in plain]
            sampled = SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, seed=0)
            _, st_s = run(sampled, draft_len=k)
            label = f"K={k}" + (f" {schedule[:5]}" if schedule != "constant" else "")
            print(
                f"{'':34s} batch {batch:2d}  spec. {label:<11s} {n_tok / statistics.median(spec_times):8.1f} tok/s  "
                f"x{statistics.median(ratios):4.2f} [{min(ratios):.2f}, {max(ratios):.2f}]  "
                f"greedy: accept {st.acceptance_rate:.3f}, {st.tokens_per_round:.2f} tok/round, "
                f"{st.mean_draft_len:.2f} drafts, identical {same}; "
                f"T=1: accept {st_s.acceptance_rate:.3f}, {st_s.tokens_per_round:.2f} tok/round"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--draft-lens", default="2,4")
    ap.add_argument("--schedules", default="constant,heuristic", help="draft-length schedules to time")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per measurement")
    ap.add_argument("--no-random", action="store_true")
    ap.add_argument("--no-zoo", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="plain/speculative pairs per configuration (median)")
    ap.add_argument("--zoo-prompts", type=int, default=32)
    args = ap.parse_args()
    global REPEATS
    REPEATS = args.repeats
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    draft_lens = [int(x) for x in args.draft_lens.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    schedules = args.schedules.split(",")
    if not args.no_random:
        decoder, sizes = random_decoder(args.vocab)
        g = torch.Generator().manual_seed(0)
        texts = [
            " ".join(f"t{int(i)}" for i in torch.randint(0, args.vocab - 4, (16,), generator=g))
            for _ in range(args.prompts)
        ]
        for b in batches:
            compare(f"random {sizes}, vocab {args.vocab}", decoder, texts, draft_lens, b, args.new_tokens, schedules)
    zoo = None if args.no_zoo else find_zoo()
    if zoo is None:
        print("zoo: no full build found (modelops zoo build --preset full); skipped")
        return
    from modelops.decode import CoDecoder, FusionRule

    for expert, task in (("sft_facts", "facts"), ("sft_review", "review")):
        rows = [
            json.loads(line) for line in (zoo / "eval" / f"{task}.jsonl").read_text().splitlines()[: args.zoo_prompts]
        ]
        decoder = CoDecoder.load(str(zoo / "large_base"), str(zoo / "small_base"), [str(zoo / expert)], FusionRule())
        for b in batches:
            prompts = [r["prompt"] for r in rows]
            compare(f"zoo large_base+{expert} ({task})", decoder, prompts, draft_lens, b, 24, schedules)


if __name__ == "__main__":
    main()
