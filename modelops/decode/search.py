"""Weak-to-strong search: chunk-level beam search CBS(W, K, L) and best-of-N (METHODS.md §2.4).

The large model samples; the small tuned/untuned pair only scores. Score of a (partial) response:
Σ_t [log π_S+(y_t | x, y_<t) − log π_S−(y_t | x, y_<t)], cumulative, no length normalisation, the stop token
included. Rows are prompts × beams in one batch; every model keeps its own KV cache, reordered together when
beams are chosen (`Runner.select` with repeated rows). After each chunk the small models are fed only the new
tokens (incremental scoring: parent score + this chunk's log-ratio). Finished rows leave the live batch and
stay in their prompt's pool of candidates with their final score; at every selection the top W of the pool
(finished and live together) are kept, the live ones among them get K successors each, and a prompt is done
when its top W are all finished. The answer is the best candidate of the pool.

Best-of-N = CBS(1, N, ∞) and plain sampling = CBS(1, 1, ∞). Each prompt samples from its own generator,
seeded `seed + prompt index`, so results do not depend on the batch size, and CBS(1, 1, ∞) reproduces the
lock-step sampler's tokens for the same seed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from modelops.decode.loops import RowOutput, StopChecker, left_pad
from modelops.decode.models import Member
from modelops.decode.overlap import Overlap, run_all
from modelops.decode.runner import Runner
from modelops.decode.sampling import SamplingConfig, first_argmax, make_generator, warp
from modelops.decode.textsync import Detok, SmallSide, detok_push, shares_vocabulary
from modelops.decode.vocab import align, stop_token_ids
from modelops.errors import ModelopsError

logger = logging.getLogger(__name__)

SEARCH_DEFAULTS = {"temperature": 0.7, "top_k": 50, "top_p": 1.0}  # the paper's sampling for CBS and BoN
DEFAULT_SHAPE = (4, 4, 5)  # W, K, L


def search_sampling(max_new_tokens: int = 128, seed: int | None = None, **overrides: Any) -> SamplingConfig:
    """A SamplingConfig with the search defaults (T 0.7, top-k 50, top-p 1.0)."""
    return SamplingConfig(max_new_tokens=max_new_tokens, seed=seed, **{**SEARCH_DEFAULTS, **overrides})


@dataclass
class SearchResult:
    """The chosen response of one prompt. `token_ids` are the large model's new ids, the stop token included."""

    text: str
    token_ids: list[int]
    score: float
    finish_reason: str
    num_tokens: int
    stop_text: str | None = None
    candidates: list[SearchResult] | None = None  # every finished candidate, with keep_candidates=True


@dataclass
class _Beam:
    prompt: int  # index within the batch
    out: RowOutput
    detok: Detok | None = None
    text: str = ""  # stable response text (text-level small models only)
    score: float = 0.0
    done: bool = False

    def fork(self) -> _Beam:
        out = RowOutput(list(self.out.token_ids), self.out.finish_reason, self.out.stop_text)
        return _Beam(self.prompt, out, self.detok, self.text, self.score, self.done)


@dataclass
class _Setup:
    large: Member
    base: Member
    expert: Member
    text_level: tuple[bool, bool]  # per small model (base, expert)
    stopper: StopChecker
    sampling: SamplingConfig
    beam_width: int
    successors: int
    chunk_len: int
    keep_candidates: bool
    full_rescore: bool
    stats: dict[str, Any] = field(default_factory=dict)
    overlap: Overlap | None = None  # score with the base here and the expert on a worker thread


def chunk_beam_search(
    large: Member,
    base: Member,
    expert: Member,
    prompts: Sequence[str],
    *,
    beam_width: int = 4,
    successors: int = 4,
    chunk_len: int | None = 5,
    sampling: SamplingConfig | None = None,
    batch_size: int = 8,
    seed: int | None = None,
    text_level: bool | None = None,
    keep_candidates: bool = False,
    full_rescore: bool = False,
    stats: dict[str, Any] | None = None,
    on_batch: Callable[[int], None] | None = None,
    overlap: Overlap | None = None,
) -> list[SearchResult]:
    """CBS(W=beam_width, K=successors, L=chunk_len) for every prompt, `batch_size` prompts per batch.

    `chunk_len` None means ∞ (one chunk of max_new_tokens). `sampling` defaults to `search_sampling()`; `seed`
    overrides its seed. `text_level`: None picks per small model (ids when it shares the large model's
    vocabulary, text otherwise); True forces text re-tokenization. `full_rescore` re-feeds the whole response
    every chunk instead (the reference implementation's cost; for benchmarks only). `stats` is filled with
    counters (chunks, large steps, small tokens fed, seconds). `overlap` (`--parallel-models`): the two small
    models score each chunk on two threads (targets are tokenized first, here); the results are the same.
    """
    sampling = sampling or search_sampling()
    if seed is not None:
        sampling = SamplingConfig(**{**vars(sampling), "seed": seed})
    sampling.validate()
    for name, value in (("beam_width", beam_width), ("successors", successors), ("batch_size", batch_size)):
        if value < 1:
            raise ModelopsError(f"{name} must be >= 1, got {value}")
    if chunk_len is not None and chunk_len < 1:
        raise ModelopsError(f"chunk_len must be >= 1 (or None for ∞), got {chunk_len}")
    if sampling.greedy and beam_width * successors > 1:
        logger.warning("search with temperature 0 samples identical candidates; use --temperature 0.7 --top-k 50")
    shared = tuple(shares_vocabulary(large.tokenizer, m.tokenizer) for m in (base, expert))
    text = (not shared[0] or bool(text_level), not shared[1] or bool(text_level))
    members = [large] + [m for m, same in zip((base, expert), shared, strict=True) if same]
    stop_ids = stop_token_ids([m.tokenizer for m in members], [m.model for m in members])
    stopper = StopChecker(stop_ids, sampling.stop, large.tokenizer, sampling.max_new_tokens)
    setup = _Setup(
        large, base, expert, text, stopper, sampling, beam_width, successors,
        chunk_len or sampling.max_new_tokens, keep_candidates, full_rescore,
        stats if stats is not None else {}, overlap,
    )  # fmt: skip
    for key in ("chunks", "large_steps", "rows_sampled", "small_tokens_fed", "seconds"):
        setup.stats.setdefault(key, 0)
    setup.stats["base_input"], setup.stats["expert_input"] = ("text" if t else "ids" for t in text)
    start = time.perf_counter()
    results: list[SearchResult] = []
    for lo in range(0, len(prompts), batch_size):
        batch = list(prompts[lo : lo + batch_size])
        seeds = [None if sampling.seed is None else sampling.seed + lo + i for i in range(len(batch))]
        results += _search_batch(setup, batch, seeds)
        if on_batch:
            on_batch(len(batch))
    setup.stats["seconds"] += time.perf_counter() - start
    return results


def best_of_n(
    large: Member, base: Member, expert: Member, prompts: Sequence[str], *, n: int = 16, **kwargs: Any
) -> list[SearchResult]:
    """Best-of-N = CBS(1, N, ∞): N full samples per prompt, the best by the small models' log-ratio."""
    return chunk_beam_search(large, base, expert, prompts, beam_width=1, successors=n, chunk_len=None, **kwargs)


def _sample(logits: torch.Tensor, prompt_of_row: list[int], sampling: SamplingConfig, gens: list[Any]) -> torch.Tensor:
    """Next token per row; each prompt's rows (contiguous) draw from that prompt's generator."""
    if sampling.greedy:
        return first_argmax(logits)
    probs = warp(logits, sampling).softmax(-1)
    out = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    lo = 0
    while lo < len(prompt_of_row):
        hi = lo
        while hi < len(prompt_of_row) and prompt_of_row[hi] == prompt_of_row[lo]:
            hi += 1
        out[lo:hi] = torch.multinomial(probs[lo:hi], 1, generator=gens[prompt_of_row[lo]])[:, 0]
        lo = hi
    return out


def _search_batch(setup: _Setup, batch: list[str], seeds: list[int | None]) -> list[SearchResult]:
    large, stats = setup.large, setup.stats
    tok = large.tokenizer
    width = len(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    runner = Runner(large.model, "large")
    prompt_ids = [large.render(p) for p in batch]
    logits = align(runner.prefill(*left_pad(prompt_ids, int(pad))), width, float("-inf"))  # (P, V)
    sides = [
        SmallSide(m, t, setup.full_rescore) for m, t in zip((setup.base, setup.expert), setup.text_level, strict=True)
    ]
    for side in sides:  # in turn: rendering the prompts tokenizes, and the two may share a tokenizer object
        side.prefill(batch)
    any_text = any(setup.text_level)
    rows = [p for p in range(len(batch)) for _ in range(setup.beam_width * setup.successors)]
    runner.select(torch.tensor(rows))
    logits = logits[torch.tensor(rows, device=logits.device)]
    for side in sides:
        side.select(rows)
    beams = [_Beam(p, RowOutput(), Detok.start(prompt_ids[p]) if any_text else None) for p in rows]
    gens = [make_generator(s, runner.device) for s in seeds]
    pools: list[list[_Beam]] = [[] for _ in batch]
    while beams:
        # 1. the large model samples up to L tokens per row; finished rows leave its batch at once
        n = min(setup.chunk_len, setup.sampling.max_new_tokens - len(beams[0].out.token_ids))
        live = list(range(len(beams)))  # beams still in the large model's batch
        new: list[list[int]] = [[] for _ in beams]
        for _ in range(n):
            tokens = _sample(logits, [beams[i].prompt for i in live], setup.sampling, gens)
            stats["rows_sampled"] += len(live)
            keep = []
            for j, (i, t) in enumerate(zip(live, tokens.tolist(), strict=True)):
                beams[i].out.token_ids.append(t)
                new[i].append(t)
                beams[i].done = setup.stopper.check(beams[i].out)
                if not beams[i].done:
                    keep.append(j)
            if len(keep) < len(live):
                live = [live[j] for j in keep]
                if not live:
                    break
                idx = torch.tensor(keep)
                runner.select(idx)
                tokens = tokens[idx.to(tokens.device)]
            logits = align(runner.step(tokens), width, float("-inf"))
            stats["large_steps"] += 1
        # 2. the small models score only this chunk (text-level ones from the newly stable text)
        if any_text:
            for i, b in enumerate(beams):
                assert b.detok is not None
                b.detok, piece = detok_push(tok, b.detok, new[i], final=b.done)
                b.text += piece
        eos = [b.done and b.out.finish_reason == "eos" for b in beams]
        targets = [[side.target(i, new[i], b.text, eos[i]) for i, b in enumerate(beams)] for side in sides]
        calls = [partial(_score, side, ts) for side, ts in zip(sides, targets, strict=True)]
        base_lp, expert_lp = run_all(calls, setup.overlap)
        for i, b in enumerate(beams):
            b.score = expert_lp[i] - base_lp[i]
        stats["chunks"] += 1
        # 3. per prompt: top W of (finished pool + live rows); live winners get K successors each
        beams, large_rows, small_rows = _select(setup, beams, pools, {i: j for j, i in enumerate(live)})
        if beams:
            runner.select(torch.tensor(large_rows))
            logits = logits[torch.tensor(large_rows, device=logits.device)]
            for side in sides:
                side.select(small_rows)
    stats["small_tokens_fed"] += sum(side.tokens_fed for side in sides)
    return [_result(tok, pool, setup.keep_candidates) for pool in pools]


def _score(side: SmallSide, targets: list[list[int]]) -> list[float]:
    """Bring the side's rows to `targets` and return their cumulative scores (one small model's half of a chunk)."""
    side.advance(targets)
    return side.logprobs()


def _select(
    setup: _Setup, beams: list[_Beam], pools: list[list[_Beam]], large_pos: dict[int, int]
) -> tuple[list[_Beam], list[int], list[int]]:
    """The next generation of rows, and where each comes from in the large and small batches."""
    by_prompt: dict[int, list[int]] = {}
    for i, b in enumerate(beams):
        by_prompt.setdefault(b.prompt, []).append(i)
    nxt: list[_Beam] = []
    large_rows: list[int] = []
    small_rows: list[int] = []
    for p, group in by_prompt.items():
        pools[p] += [beams[i] for i in group if beams[i].done]
        cands = [(b.score, -1) for b in pools[p]] + [(beams[i].score, i) for i in group if not beams[i].done]
        order = sorted(range(len(cands)), key=lambda c: -cands[c][0])  # stable: pool first on ties
        for c in order[: setup.beam_width]:
            i = cands[c][1]
            if i < 0:
                continue
            for _ in range(setup.successors):
                nxt.append(beams[i].fork())
                large_rows.append(large_pos[i])
                small_rows.append(i)
    return nxt, large_rows, small_rows


def _result(tokenizer: Any, pool: list[_Beam], keep_candidates: bool) -> SearchResult:
    def one(b: _Beam) -> SearchResult:
        out = b.out
        ids = out.token_ids[:-1] if out.finish_reason == "eos" else out.token_ids
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if out.finish_reason == "stop" and out.stop_text and out.stop_text in text:
            text = text[: text.find(out.stop_text)]
        return SearchResult(text, list(out.token_ids), b.score, out.finish_reason, len(out.token_ids), out.stop_text)

    best = max(range(len(pool)), key=lambda i: pool[i].score)  # first of equals
    result = one(pool[best])
    if keep_candidates:
        result.candidates = [one(b) for b in pool]
    return result


def run_search(
    decoder: Any,
    sampling: SamplingConfig,
    prompts: Sequence[str],
    *,
    ids: Sequence[Any] | None = None,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """`--rule cbs|bon` for a CoDecoder whose members are [large, small base, expert]: Generations + stats.

    The search shape comes from the decoder's rule (`beam_width`, `successors`, `chunk_len`, or `n` for bon).
    """
    from modelops.decode.engine import Generation

    rule = decoder.rule
    if len(decoder.members) != 3:
        raise ModelopsError(f"--rule {rule.name} needs --large, --small-base and exactly one --expert")
    large, base, expert = decoder.members
    if rule.name == "bon":
        shape = {"beam_width": 1, "successors": rule.n, "chunk_len": None}
    else:
        shape = {"beam_width": rule.beam_width, "successors": rule.successors, "chunk_len": rule.chunk_len}
    stats: dict[str, Any] = {}
    results = chunk_beam_search(
        large, base, expert, prompts, sampling=sampling, batch_size=batch_size, stats=stats,
        on_batch=on_batch, overlap=decoder.overlap, **shape,
    )  # fmt: skip
    gens = [
        Generation(
            id=ids[k] if ids is not None else k,
            text=r.text,
            num_tokens=r.num_tokens,
            finish_reason=r.finish_reason,
            score=r.score,
            token_ids=r.token_ids,
        )
        for k, r in enumerate(results)
    ]
    return gens, stats
