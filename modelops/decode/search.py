"""Weak-to-strong search: chunk-level beam search CBS(W, K, L) and best-of-N (docs/methods.md §2.4).

The large model samples; the small tuned/untuned pair only scores. Score of a (partial) response:
Σ_t [log π_S+(y_t | x, y_<t) − log π_S−(y_t | x, y_<t)], cumulative, no length normalisation, the stop token
included. Rows are prompts × beams in one batch; every model keeps its own KV cache, reordered together when
beams are chosen (`Runner.select` with repeated rows). After each chunk the small models are fed only the new
tokens (incremental scoring: parent score + this chunk's log-ratio). Finished rows leave the live batch and
stay in their prompt's pool of candidates with their final score; at every selection the top W of the pool
(finished and live together) are kept, the live ones among them get K successors each, and a prompt is done
when its top W are all finished. The answer is the best candidate of the pool.

Best-of-N = CBS(1, N, ∞) and plain sampling = CBS(1, 1, ∞). With L = ∞ nothing is selected before the end,
so the small models score every `score_every` tokens (the same sums, in pieces) and rows never fork. Each
prompt samples from its own stream, keyed by the seed and the prompt's id (row j > 0 of a prompt by the pair
(id, j)), at each token position, so results do not depend on the batch size or on which prompts share a batch, a resumed run
samples what the uninterrupted one did, and CBS(1, 1, ∞) reproduces the lock-step sampler's tokens.

Continuous batching: at most `batch_size` prompts are searched at once; at each chunk boundary a prompt that is
done hands its place to the next waiting one, whose prompt is prefilled on its own and whose W·K rows join every
model's running batch (`Runner.admit`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from modelops.decode.beams import Beam, SearchResult, best_result, select_next
from modelops.decode.engine import LockstepDecoder
from modelops.decode.loops import RowOutput, StopChecker, take_waiting
from modelops.decode.models import Member
from modelops.decode.overlap import Overlap, run_all
from modelops.decode.sampling import SamplingConfig, first_argmax, prompt_key, row_uniforms, sample_rows, warp
from modelops.decode.textsync import Detok, SmallSide, detok_push, shares_vocabulary
from modelops.decode.types import Generation, RowResults
from modelops.decode.vocab import align, stop_token_ids
from modelops.errors import ModelopsError
from modelops.runtime.generate import left_pad
from modelops.runtime.runner import Runner

logger = logging.getLogger(__name__)

SEARCH_DEFAULTS = {"temperature": 0.7, "top_k": 50, "top_p": 1.0}  # the paper's sampling for CBS and BoN
DEFAULT_SHAPE = (4, 4, 5)  # W, K, L
SCORE_EVERY = 16  # L = ∞: tokens between scorings (and admissions)


def search_sampling(max_new_tokens: int = 128, seed: int | None = None, **overrides: Any) -> SamplingConfig:
    """A SamplingConfig with the search defaults (T 0.7, top-k 50, top-p 1.0)."""
    return SamplingConfig(max_new_tokens=max_new_tokens, seed=seed, **{**SEARCH_DEFAULTS, **overrides})


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
    forks: bool  # False for L = ∞: rows are scored every chunk_len tokens but never selected before the end
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
    continuous: bool = True,
    score_every: int = SCORE_EVERY,
    stop_ids: set[int] | None = None,
    ids: Sequence[Any] | None = None,
    on_result: Callable[[int, SearchResult], None] | None = None,
) -> list[SearchResult]:
    """CBS(W=beam_width, K=successors, L=chunk_len) for every prompt, at most `batch_size` prompts at a time.

    `chunk_len` None means ∞ (no selection before the end; the small models score every `score_every` tokens).
    `sampling` defaults to `search_sampling()`; `seed` overrides its seed. `text_level`: None picks per small
    model (ids when it shares the large model's vocabulary, text otherwise); True forces text re-tokenization.
    `continuous`: a finished prompt's place goes to the next one at the next chunk boundary (False: fixed groups
    of `batch_size`; the results are the same). `full_rescore` re-feeds the whole response every chunk instead
    (the reference implementation's cost; for benchmarks only). `stats` is filled with counters (chunks, large
    steps, small tokens fed, admissions, occupancy, seconds). `overlap` (`--parallel-models`): the two small
    models score each chunk on two threads; the results are the same. `stop_ids` replaces the union of the EOS /
    end-of-turn ids of the models that share the large model's vocabulary. `on_batch(k)`: k more prompts done;
    `on_result(p, result)`: prompt p's result, as soon as it is finished.
    """
    sampling = sampling or search_sampling()
    if seed is not None:
        sampling = SamplingConfig(**{**vars(sampling), "seed": seed})
    sampling.validate()
    checks = (("beam_width", beam_width), ("successors", successors), ("batch_size", batch_size))
    for name, value in (*checks, ("score_every", score_every)):
        if value < 1:
            raise ModelopsError(f"{name} must be >= 1, got {value}")
    if chunk_len is not None and chunk_len < 1:
        raise ModelopsError(f"chunk_len must be >= 1 (or None for ∞), got {chunk_len}")
    if sampling.greedy and beam_width * successors > 1:
        logger.warning("search with temperature 0 samples identical candidates; use --temperature 0.7 --top-k 50")
    shared = tuple(shares_vocabulary(large.tokenizer, m.tokenizer) for m in (base, expert))
    text = (not shared[0] or bool(text_level), not shared[1] or bool(text_level))
    if stop_ids is None:
        members = [large] + [m for m, same in zip((base, expert), shared, strict=True) if same]
        stop_ids = stop_token_ids([m.tokenizer for m in members], [m.model for m in members])
    stopper = StopChecker(stop_ids, sampling.stop, large.tokenizer, sampling.max_new_tokens)
    setup = _Setup(
        large, base, expert, text, stopper, sampling, beam_width, successors,
        chunk_len or min(score_every, sampling.max_new_tokens), chunk_len is not None, keep_candidates,
        full_rescore, stats if stats is not None else {}, overlap,
    )  # fmt: skip
    for key in ("chunks", "large_steps", "rows_sampled", "small_tokens_fed", "admissions", "seconds"):
        setup.stats.setdefault(key, 0)
    setup.stats["base_input"], setup.stats["expert_input"] = ("text" if t else "ids" for t in text)
    start = time.perf_counter()
    row_ids = list(ids) if ids is not None else list(range(len(prompts)))
    keys = None if sampling.seed is None else RowKeys(sampling.seed, row_ids)
    results = _search(setup, list(prompts), keys, batch_size, continuous, on_batch, on_result)
    setup.stats["seconds"] += time.perf_counter() - start
    return results


def best_of_n(
    large: Member, base: Member, expert: Member, prompts: Sequence[str], *, n: int = 16, **kwargs: Any
) -> list[SearchResult]:
    """Best-of-N = CBS(1, N, ∞): N full samples per prompt, the best by the small models' log-ratio."""
    return chunk_beam_search(large, base, expert, prompts, beam_width=1, successors=n, chunk_len=None, **kwargs)


class RowKeys:
    """The random-stream key of row j of a prompt: the prompt's own (as the lock-step sampler's) for j = 0, and the
    pair (id, j) after it. Cached: rows keep their ranks across most steps."""

    def __init__(self, seed: int, ids: list[Any]) -> None:
        self.seed, self.ids = seed, ids
        self._cache: dict[tuple[int, int], int] = {}

    def __call__(self, prompt: int, rank: int) -> int:
        key = self._cache.get((prompt, rank))
        if key is None:
            pid = self.ids[prompt]
            key = self._cache[(prompt, rank)] = prompt_key(self.seed, pid if rank == 0 else (pid, rank))
        return key


def _sample(logits: torch.Tensor, rows: list[Beam], sampling: SamplingConfig, keys: RowKeys | None) -> torch.Tensor:
    """Next token per row; row j of a prompt (rows of one prompt are contiguous) draws from its keyed stream at its
    token position (unseeded: torch's global generator)."""
    if sampling.greedy:
        return first_argmax(logits)
    probs = warp(logits, sampling).softmax(-1)
    if keys is None:
        return sample_rows(probs)
    row_keys, steps, rank = [], [], 0
    for j, beam in enumerate(rows):
        rank = 0 if j == 0 or rows[j - 1].prompt != beam.prompt else rank + 1
        row_keys.append(keys(beam.prompt, rank))
        steps.append(len(beam.out.token_ids))
    uniforms = row_uniforms(torch.tensor(row_keys), torch.tensor(steps)).to(probs.device)
    return sample_rows(probs, uniforms=uniforms)


class _Batch:
    """The rows being searched: beams in every model's batch order, the large model's next-token logits, and the
    small sides. Rows of one prompt stay contiguous (`_sample` relies on it)."""

    def __init__(self, setup: _Setup, prompts: list[str]) -> None:
        self.setup, self.prompts = setup, prompts
        tok = setup.large.tokenizer
        self.width = len(tok)
        self.pad = int(tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0))
        self.runner = Runner(setup.large.model, "large")
        self.sides = [
            SmallSide(m, t, setup.full_rescore)
            for m, t in zip((setup.base, setup.expert), setup.text_level, strict=True)
        ]
        self.beams: list[Beam] = []
        self.logits: torch.Tensor | None = None  # (rows, V)

    @property
    def runners(self) -> list[Runner]:
        return [self.runner] + [side.runner for side in self.sides]

    def live_prompts(self) -> int:
        return len({b.prompt for b in self.beams})

    def admit(self, new: list[int]) -> None:
        """Prefill prompts `new` on their own and append W·K rows of each after the live rows, in every model."""
        setup, texts = self.setup, [self.prompts[p] for p in new]
        ids = [setup.large.render(t) for t in texts]
        fresh = align(self.runner.admit(*left_pad(ids, self.pad)), self.width, float("-inf"))
        for side in self.sides:  # in turn: rendering the prompts tokenizes, and the two may share a tokenizer object
            side.admit(texts)
        per_prompt, n_old = setup.beam_width * setup.successors, len(self.beams)
        rows = list(range(n_old)) + [n_old + j for j in range(len(new)) for _ in range(per_prompt)]
        self.logits = torch.cat([self.logits, fresh]) if n_old and self.logits is not None else fresh
        self.reorder(rows, rows)
        detok = any(setup.text_level)
        self.beams += [
            Beam(p, RowOutput(), Detok.start(ids[j]) if detok else None)
            for j, p in enumerate(new)
            for _ in range(per_prompt)
        ]

    def reorder(self, large_rows: list[int], small_rows: list[int]) -> None:
        """Keep, drop or repeat rows: `large_rows` index the large model's live batch, `small_rows` the sides'."""
        if not large_rows:  # every prompt of the batch is done: start from empty caches
            self.runner.reset()
            for side in self.sides:  # its runner too
                side.reset()
            self.logits = None
            return
        assert self.logits is not None
        self.runner.select(torch.tensor(large_rows))
        self.logits = self.logits[torch.tensor(large_rows, device=self.logits.device)]
        for side in self.sides:
            side.select(small_rows)


def _search(
    setup: _Setup,
    prompts: list[str],
    keys: RowKeys | None,
    batch_size: int,
    refill: bool,
    on_done: Callable[[int], None] | None,
    on_result: Callable[[int, SearchResult], None] | None = None,
) -> list[SearchResult]:
    """The search loop; `on_result(p, result)`: prompt p is finished (its place goes to a waiting prompt)."""
    stats, tok = setup.stats, setup.large.tokenizer
    batch = _Batch(setup, prompts)
    pools: list[list[Beam]] = [[] for _ in prompts]
    results: dict[int, SearchResult] = {}
    queue = list(range(len(prompts) - 1, -1, -1))  # popped from the end: prompt order
    row_steps = steps = 0
    while True:
        new = take_waiting(queue, batch.live_prompts(), batch_size, refill, batch.runners)
        if new:
            stats["admissions"] += bool(batch.beams)
            batch.admit(new)
        if not batch.beams:
            break
        beams, runner = batch.beams, batch.runner
        # 1. the large model samples up to L tokens per row; finished rows leave its batch at once
        live = list(range(len(beams)))  # beams still in the large model's batch
        new_ids: list[list[int]] = [[] for _ in beams]
        for _ in range(setup.chunk_len):
            assert batch.logits is not None
            tokens = _sample(batch.logits, [beams[i] for i in live], setup.sampling, keys)
            stats["rows_sampled"] += len(live)
            steps, row_steps = steps + 1, row_steps + len(live)
            keep = []
            for j, (i, t) in enumerate(zip(live, tokens.tolist(), strict=True)):
                beams[i].out.token_ids.append(t)
                new_ids[i].append(t)
                beams[i].done = setup.stopper.check(beams[i].out)  # max_new_tokens included
                if not beams[i].done:
                    keep.append(j)
            if len(keep) < len(live):
                live = [live[j] for j in keep]
                if not live:
                    break
                idx = torch.tensor(keep)
                runner.select(idx)
                tokens = tokens[idx.to(tokens.device)]
            batch.logits = align(runner.step(tokens), batch.width, float("-inf"))
            stats["large_steps"] += 1
        # 2. the small models score only this chunk (text-level ones from the newly stable text)
        _score_chunk(setup, batch, new_ids)
        stats["chunks"] += 1
        # 3. per prompt: top W of (finished pool + live rows); live winners get K successors each
        before = {b.prompt for b in beams}
        batch.beams, large_rows, small_rows = select_next(
            beams, pools, {i: j for j, i in enumerate(live)}, setup.beam_width, setup.successors, setup.forks
        )
        batch.reorder(large_rows, small_rows)
        finished = sorted(before - {b.prompt for b in batch.beams})
        for p in finished:
            results[p] = best_result(tok, pools[p], setup.keep_candidates)
            if on_result is not None:
                on_result(p, results[p])
        if on_done and finished:
            on_done(len(finished))
    stats["small_tokens_fed"] += sum(side.tokens_fed for side in batch.sides)
    stats["occupancy"] = row_steps / max(1, steps * batch_size * setup.beam_width * setup.successors)
    return [results[p] for p in range(len(prompts))]


def _score_chunk(setup: _Setup, batch: _Batch, new_ids: list[list[int]]) -> None:
    """Every row's cumulative score after this chunk, from the two small models' incremental forwards."""
    tok = setup.large.tokenizer
    if any(setup.text_level):
        for i, b in enumerate(batch.beams):
            assert b.detok is not None
            b.detok, piece = detok_push(tok, b.detok, new_ids[i], final=b.done)
            b.text += piece
    eos = [b.done and b.out.finish_reason == "eos" for b in batch.beams]
    targets = [[side.target(i, new_ids[i], b.text, eos[i]) for i, b in enumerate(batch.beams)] for side in batch.sides]
    calls = [partial(_score, side, ts) for side, ts in zip(batch.sides, targets, strict=True)]
    base_lp, expert_lp = run_all(calls, setup.overlap)
    for i, b in enumerate(batch.beams):
        b.score = expert_lp[i] - base_lp[i]


def _score(side: SmallSide, targets: list[list[int]]) -> list[float]:
    """Bring the side's rows to `targets` and return their cumulative scores (one small model's half of a chunk)."""
    side.advance(targets)
    return side.logprobs()


def run_search(
    decoder: LockstepDecoder,
    sampling: SamplingConfig,
    prompts: Sequence[str],
    *,
    ids: Sequence[Any] | None = None,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
    continuous: bool = True,
    on_generation: Callable[[Generation], None] | None = None,
) -> tuple[list[Generation], dict[str, Any]]:
    """`--rule cbs|bon` for a decoder whose members are [large, small base, expert]: Generations + stats
    (`on_generation(g)`: one prompt's, as soon as it is finished).

    The search shape comes from the decoder's rule (`beam_width`, `successors`, `chunk_len`, or `n` for bon).
    """
    rule = decoder.rule
    if len(decoder.members) != 3:
        raise ModelopsError(f"--rule {rule.name} needs --large, --small-base and exactly one --expert")
    large, base, expert = decoder.members
    if rule.name == "bon":
        shape = {"beam_width": 1, "successors": rule.n, "chunk_len": None}
    else:
        shape = {"beam_width": rule.beam_width, "successors": rule.successors, "chunk_len": rule.chunk_len}
    stats: dict[str, Any] = {}
    gens = RowResults(
        lambda k, r: Generation(
            id=ids[k] if ids is not None else k, text=r.text, num_tokens=r.num_tokens,
            finish_reason=r.finish_reason, score=r.score, token_ids=r.token_ids,
        ),
        on_generation,
    )  # fmt: skip
    results = chunk_beam_search(
        large, base, expert, prompts, sampling=sampling, batch_size=batch_size, stats=stats,
        on_batch=on_batch, overlap=decoder.overlap, continuous=continuous, ids=ids, on_result=gens.on_row, **shape,
    )  # fmt: skip
    return gens.ordered(results), stats
