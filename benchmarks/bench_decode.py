"""Benchmark: fused decoding vs the sum of each model's own cached decode, and DLF's weight search vs a step.

    OMP_NUM_THREADS=1 python benchmarks/bench_decode.py            # ~40M large, ~4M smalls, vocab 32000
    OMP_NUM_THREADS=1 python benchmarks/bench_decode.py --shape real --batches 1,8 --new-tokens 64 --repeats 3
        # a 135M Llama's shape (hidden 576, 30 layers, 9 heads / 3 KV heads, vocab 49152, tied embeddings) as the
        # large model, and two 6-layer cuts of it as the small pair

From-config Llamas (no download). Greedy, --new-tokens tokens, no early stop, at batch 1 and 16, all in one run:
- floor: each model's own greedy loop with its KV cache (prefill, then one cached forward + argmax per token),
  with transformers' DynamicCache, and again with modelops' in-place cache (the one the co-decoder uses);
- interleaved: the same three loops, one step of each in turn, nothing fused (the cost of alternating alone);
- naive: a lock-step loop that log-softmaxes every model every step and combines the three log-probs;
- modelops: `CoDecoder.generate` with the EFT rule (also with --parallel-models) and DLF, i.e. what
  `modelops fuse-decode` runs.
Ratios: each round runs every approach once; the median over rounds of (time ÷ that round's floor) is printed
with its range, so the machine's drift between rounds cancels.
DLF: time of its weight search per step vs one fused EFT step (on random logits, and inside the DLF decode),
and a per-α loop (the straightforward implementation) for reference.
--breakdown: where a step's time goes, from forward hooks on each model: each model's forward per token in its own
loop and inside the fused EFT loop, and the time outside the forwards (argmax / fusion, cache and Python work).
--only "modelops eft,modelops dlf": run just these approaches besides the floor; shorter rounds drift less.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from modelops.transformers_compat import cache_keyword


def llama(hidden: int, layers: int, inter: int, vocab: int, seed: int, kv_heads: int | None = None, tied: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=kv_heads or max(1, hidden // 64),
        max_position_embeddings=1024,
        eos_token_id=2,
        bos_token_id=1,
        pad_token_id=0,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(cfg).eval()


def cut(large, layers: int, seed: int, noise: float = 0.0):
    """The first `layers` layers of `large` (with its embeddings, final norm and head) as a model of its own; `noise`
    perturbs every weight (an expert that differs from the base)."""
    small = llama(large.config.hidden_size, layers, large.config.intermediate_size, large.config.vocab_size, seed,
                  large.config.num_key_value_heads, large.config.tie_word_embeddings)  # fmt: skip
    small.load_state_dict(large.state_dict(), strict=False)
    if noise:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in small.parameters():
                p.add_(torch.randn(p.shape, generator=g) * noise)
    return small.eval()


def tokenizer_for_vocab(n: int):
    """A word-level tokenizer with exactly n tokens (no download): specials 0-3, then w0, w1, …; `<s>` prepended,
    decoding joins words with spaces. Shared by the decode benchmarks."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(n - len(specials))])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def n_params(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


@torch.inference_mode()
def own_decode(model, ids: torch.Tensor, new_tokens: int, growing: bool = False) -> float:
    """The floor: one model's cached greedy loop (transformers' DynamicCache, or modelops' in-place one)."""
    from transformers import DynamicCache

    from modelops.runtime.kvcache import growing_cache

    kw = cache_keyword(model)
    start = time.perf_counter()
    cache = growing_cache(model) if growing else DynamicCache(config=model.config)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{kw: cache})
    tok = out.logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(new_tokens - 1):
        out = model(input_ids=tok, use_cache=True, **{kw: cache})
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
    return time.perf_counter() - start


@torch.inference_mode()
def interleaved_own(models, ids: torch.Tensor, new_tokens: int) -> float:
    """Each model's own greedy loop, one step of each in turn, nothing fused: the cost of alternating alone."""
    from transformers import DynamicCache

    kws = [cache_keyword(m) for m in models]
    start = time.perf_counter()
    caches = [DynamicCache(config=m.config) for m in models]
    outs = [
        m(input_ids=ids, use_cache=True, logits_to_keep=1, **{kw: c})
        for m, kw, c in zip(models, kws, caches, strict=True)
    ]
    toks = [o.logits[:, -1].argmax(-1, keepdim=True) for o in outs]
    for _ in range(new_tokens - 1):
        outs = [
            m(input_ids=t, use_cache=True, **{kw: c}) for m, kw, c, t in zip(models, kws, caches, toks, strict=True)
        ]
        toks = [o.logits[:, -1].argmax(-1, keepdim=True) for o in outs]
    return time.perf_counter() - start


@torch.inference_mode()
def naive_lockstep(models, ids: torch.Tensor, new_tokens: int) -> float:
    """Three models one after another, log-softmax of each, combine, argmax (what reference code does)."""
    from transformers import DynamicCache

    kws = [cache_keyword(m) for m in models]
    start = time.perf_counter()
    caches = [DynamicCache(config=m.config) for m in models]
    outs = [m(input_ids=ids, use_cache=True, **{kw: c}) for m, kw, c in zip(models, kws, caches, strict=True)]
    for step in range(new_tokens):
        lp = [torch.log_softmax(o.logits[:, -1].float(), -1) for o in outs]
        tok = (lp[0] + lp[2] - lp[1]).argmax(-1, keepdim=True)
        if step == new_tokens - 1:
            break
        outs = [m(input_ids=tok, use_cache=True, **{kw: c}) for m, kw, c in zip(models, kws, caches, strict=True)]
    return time.perf_counter() - start


def fused_decode(decoder, prompts_ids: list[list[int]], new_tokens: int) -> float:
    from modelops.decode.loops import StopChecker, lockstep_generate
    from modelops.decode.sampling import SamplingConfig

    cfg = SamplingConfig(max_new_tokens=new_tokens)
    stopper = StopChecker(set(), [], decoder.tokenizer, new_tokens)  # no early stop: every row runs full length
    members = decoder.runners()
    start = time.perf_counter()
    outs = lockstep_generate(
        members, decoder.fuse, [prompts_ids] * len(members), cfg, stopper, 0, overlap=decoder.overlap
    )
    elapsed = time.perf_counter() - start
    assert all(len(o.token_ids) == new_tokens for o in outs)
    return elapsed


def dlf_cost(batch: int, vocab: int, reps: int, experts: int = 1) -> tuple[float, float, float, float]:
    """(DlfSearch s/step, its eager passes s/step, per-α loop s/step, fused eft combine s/step), random logits."""
    from modelops.decode import rules
    from modelops.decode.dlf import DlfSearch, dlf_candidates

    g = torch.Generator().manual_seed(0)
    zl, zb = torch.randn(batch, vocab, generator=g) * 0.5, torch.randn(batch, vocab, generator=g) * 0.5
    ze = [zb + 0.3 * torch.randn(batch, vocab, generator=g) for _ in range(experts)]
    cands = dlf_candidates([round(0.1 * i, 1) for i in range(21)], experts)
    timed = []
    for search in (
        DlfSearch(cands, use_native=True),
        DlfSearch(cands, use_native=False),
    ):  # one per decode: kernel, eager passes
        search(zl, zb, ze)
        t0 = time.perf_counter()
        for _ in range(reps):
            search(zl, zb, ze)
        timed.append((time.perf_counter() - t0) / reps)

    def per_alpha() -> None:
        p, q = torch.log_softmax(zl, -1), torch.log_softmax(zb, -1)
        qt = torch.log_softmax(ze[0], -1)
        a = (qt.exp() * (qt - q)).sum(-1)
        b = (q.exp() * (q - qt)).sum(-1)
        best = []
        for alpha in [round(0.1 * i, 1) for i in range(21)]:
            pt = torch.log_softmax(zl + alpha * (ze[0] - zb), -1)
            k1 = (pt.exp() * (pt - p)).sum(-1)
            k2 = (p.exp() * (p - pt)).sum(-1)
            best.append((k1 - a) ** 2 + (k2 - b) ** 2)
        torch.stack(best).argmin(0)

    t0 = time.perf_counter()
    for _ in range(reps):
        per_alpha()
    loop = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        rules.combine([zl, zb, ze[0]], rules.eft_coefficients()).argmax(-1)
    combine = (time.perf_counter() - t0) / reps
    return timed[0], timed[1], loop, combine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeats", type=int, default=5, help="rounds; each runs every approach once")
    ap.add_argument("--breakdown", action="store_true", help="also time each model's forwards, own loop vs fused")
    ap.add_argument("--only", default=None,
                    help="comma-separated labels (e.g. 'modelops eft'): run only these besides the floor, so each "
                    "round is shorter and drifts less")  # fmt: skip
    ap.add_argument("--shape", choices=("small", "real"), default="small",
                    help="small: 40M / 4M models; real: a 135M Llama's shape and two 6-layer cuts of it")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(1)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from modelops.decode import CoDecoder, FusionRule, native
    from modelops.decode.models import Member

    kernel = native.library()  # built (or loaded from the cache) before anything is timed
    used = "native kernel" if kernel and native.enabled() else "eager torch passes (the kernel: MODELOPS_NATIVE=1)"
    print(f"fused DLF's search: {used}")

    if args.shape == "real":
        args.vocab = 49152
        large = llama(576, 30, 1536, args.vocab, 0, kv_heads=3, tied=True)
        base, expert = cut(large, 6, 1), cut(large, 6, 2, noise=0.01)
    else:
        large = llama(512, 2, 1536, args.vocab, 0)
        base = llama(64, 2, 256, args.vocab, 1)
        expert = llama(64, 2, 256, args.vocab, 2)
    print(f"large {n_params(large):.1f}M params, small base / expert {n_params(base):.1f}M, vocab {args.vocab}")
    tok = tokenizer_for_vocab(args.vocab)
    members = [
        Member("large", "large", large, tok),
        Member("base", "base", base, tok),
        Member("expert", "expert", expert, tok),
    ]
    eft = CoDecoder(members, FusionRule("eft"))
    dlf = CoDecoder(members, FusionRule("dlf"))

    eft_par = CoDecoder(members, FusionRule("eft"), parallel=True)
    search_time = TimedSearch(dlf)
    print(
        f"greedy, {args.new_tokens} new tokens, prompt {args.prompt_len} tokens, {args.repeats} rounds; each round runs "
        "every approach once; ratio = median over rounds of (approach ÷ that round's floor), [min, max]"
    )
    for batch in (int(b) for b in args.batches.split(",")):
        g = torch.Generator().manual_seed(batch)
        ids = torch.randint(3, args.vocab, (batch, args.prompt_len), generator=g)
        rows, n = ids.tolist(), args.new_tokens
        trio = [large, base, expert]
        runs = {  # label: (function, arguments); the first three (and the next three) add up to a floor
            "large": (own_decode, (large, ids, n)),
            "base": (own_decode, (base, ids, n)),
            "expert": (own_decode, (expert, ids, n)),
            "large, in-place cache": (own_decode, (large, ids, n, True)),
            "base, in-place cache": (own_decode, (base, ids, n, True)),
            "expert, in-place cache": (own_decode, (expert, ids, n, True)),
            "interleaved own loops": (interleaved_own, (trio, ids, n)),
            "naive lock-step": (naive_lockstep, (trio, ids, n)),
            "modelops eft": (fused_decode, (eft, rows, n)),
            "modelops eft --parallel-models": (fused_decode, (eft_par, rows, n)),
            "modelops dlf": (fused_decode, (dlf, rows, n)),
        }
        if args.only:
            wanted = [w.strip() for w in args.only.split(",")]
            runs = {k: v for i, (k, v) in enumerate(runs.items()) if i < 3 or k in wanted}
        times: dict[str, list[float]] = {name: [] for name in runs}
        search: list[tuple[float, ...]] = []  # per round: in the DLF decode, random logits, per-α loop, eager passes
        for _ in range(args.repeats):
            for name, (fn, fn_args) in runs.items():
                search_time.reset()
                times[name].append(fn(*fn_args))
            inside = search_time.total / n
            batched, eager, loop, _ = dlf_cost(batch, args.vocab, reps=10)
            search.append((inside, batched, loop, eager))
        names = list(runs)
        in_place = [k for k in names if k.endswith(", in-place cache")]
        times = {
            "floor: own loops, DynamicCache": [sum(t) for t in zip(*(times[k] for k in names[:3]), strict=True)],
            **({"floor: own loops, in-place cache": [sum(t) for t in zip(*(times[k] for k in in_place), strict=True)]}
               if len(in_place) == 3 else {}),
            **{k: times[k] for k in names[3:] if k not in in_place},
        }  # fmt: skip
        floor = times["floor: own loops, DynamicCache"]
        print(f"batch {batch}: {'approach':<34} {'best s':>7}  ÷ floor")
        for name, ts in times.items():
            ratios = sorted(t / f for t, f in zip(ts, floor, strict=True))
            print(
                f"         {name:<34} {min(ts):>7.2f}  {statistics.median(ratios):.3f} "
                f"[{ratios[0]:.3f}, {ratios[-1]:.3f}]"
            )
        if args.breakdown:
            breakdown(trio, eft, ids, n, args.repeats)
        if "modelops eft" not in times or "modelops dlf" not in times:
            continue
        steps = [t / n for t in times["modelops eft"]]  # that round's fused EFT step
        print(
            f"         DLF weight search ÷ that round's fused EFT step (median {statistics.median(steps) * 1e3:.1f} ms): "
            f"on random logits {share(search, steps, 1)}; inside the DLF decode {share(search, steps, 0)}; "
            f"eager passes (no kernel) on random logits {share(search, steps, 3)}; a per-α loop {share(search, steps, 2)}"
        )


class ForwardClock:
    """Adds up the wall time of every forward of the models it hooks, per model."""

    def __init__(self, models) -> None:
        self.spent, self._start = [0.0] * len(models), [0.0] * len(models)
        for i, m in enumerate(models):
            m.register_forward_pre_hook(lambda *_, i=i: self._begin(i))
            m.register_forward_hook(lambda *_, i=i: self._end(i))

    def _begin(self, i: int) -> None:
        self._start[i] = time.perf_counter()

    def _end(self, i: int) -> None:
        self.spent[i] += time.perf_counter() - self._start[i]

    def reset(self) -> None:
        self.spent = [0.0] * len(self.spent)


def breakdown(trio, eft, ids: torch.Tensor, n: int, repeats: int) -> None:
    """Median over rounds of each model's forward ms per token, alone and in the fused loop, and the rest."""
    clock = ForwardClock(trio)
    own: list[list[float]] = []  # per round: each model's forward time, then the three loops' time outside them
    fused: list[list[float]] = []
    for _ in range(repeats):
        clock.reset()
        total = sum(own_decode(m, ids, n, True) for m in trio)
        own.append([*clock.spent, total - sum(clock.spent)])
        clock.reset()
        total = fused_decode(eft, ids.tolist(), n)
        fused.append([*clock.spent, total - sum(clock.spent)])
    ms = [(statistics.median(r[k] for r in own) * 1e3 / n, statistics.median(r[k] for r in fused) * 1e3 / n)
          for k in range(4)]  # fmt: skip
    labels = ("large forward", "base forward", "expert forward", "outside the forwards")
    cells = "; ".join(f"{lab} {a:.2f} / {b:.2f} ({b / a:.2f}x)" for lab, (a, b) in zip(labels, ms, strict=True))
    own_sum, fused_sum = sum(a for a, _ in ms), sum(b for _, b in ms)
    print(f"         breakdown, ms per token, own loops (in-place cache) / fused EFT: {cells}; "
          f"total {own_sum:.2f} / {fused_sum:.2f} ({fused_sum / own_sum:.3f}x)")  # fmt: skip


def share(search: list[tuple[float, ...]], steps: list[float], k: int) -> str:
    """Median over rounds of (search time k ÷ that round's EFT step), with its range."""
    r = sorted(x[k] / st for x, st in zip(search, steps, strict=True))
    ms = statistics.median(x[k] for x in search) * 1e3
    return f"{ms:.2f} ms = {statistics.median(r):.1%} [{r[0]:.1%}, {r[-1]:.1%}]"


class TimedSearch:
    """Wraps a decoder's DLF search to add up the time spent in it."""

    def __init__(self, decoder) -> None:
        self.inner, self.total = decoder._dlf, 0.0
        decoder._dlf = self

    def reset(self) -> None:
        self.total = 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.inner(*args, **kwargs)
        self.total += time.perf_counter() - start
        return out


if __name__ == "__main__":
    main()
