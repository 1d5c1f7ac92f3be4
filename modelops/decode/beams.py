"""Beam bookkeeping for weak-to-strong search: rows, selection of the next generation, the final pick."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelops.decode.loops import RowOutput, response_text
from modelops.decode.textsync import Detok


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
class Beam:
    """One row of a search: its tokens so far, its cumulative score, and its text state."""

    prompt: int  # index among all prompts of the search
    out: RowOutput
    detok: Detok | None = None
    text: str = ""  # stable response text (text-level small models only)
    score: float = 0.0
    done: bool = False

    def fork(self) -> Beam:
        out = RowOutput(list(self.out.token_ids), self.out.finish_reason, self.out.stop_text)
        return Beam(self.prompt, out, self.detok, self.text, self.score, self.done)


def select_next(
    beams: list[Beam], pools: list[list[Beam]], large_pos: dict[int, int], width: int, successors: int, forks: bool
) -> tuple[list[Beam], list[int], list[int]]:
    """The next generation of rows, and where each comes from in the large and small batches.

    Finished rows join their prompt's pool. Per prompt, the top `width` of pool and live rows (pool first on ties)
    are kept and each live one gets `successors` copies; without `forks` (L = ∞) every live row goes on alone.
    `large_pos[i]`: row i's place in the large model's batch (finished rows have already left it).
    """
    by_prompt: dict[int, list[int]] = {}
    for i, b in enumerate(beams):
        by_prompt.setdefault(b.prompt, []).append(i)
    nxt: list[Beam] = []
    large_rows: list[int] = []
    small_rows: list[int] = []
    for p, group in by_prompt.items():
        pools[p] += [beams[i] for i in group if beams[i].done]
        if not forks:
            for i in group:
                if not beams[i].done:
                    nxt.append(beams[i])
                    large_rows.append(large_pos[i])
                    small_rows.append(i)
            continue
        cands = [(b.score, -1) for b in pools[p]] + [(beams[i].score, i) for i in group if not beams[i].done]
        order = sorted(range(len(cands)), key=lambda c: -cands[c][0])  # stable: pool first on ties
        for c in order[:width]:
            i = cands[c][1]
            if i < 0:
                continue
            for _ in range(successors):
                nxt.append(beams[i].fork())
                large_rows.append(large_pos[i])
                small_rows.append(i)
    return nxt, large_rows, small_rows


def best_result(tokenizer: Any, pool: list[Beam], keep_candidates: bool) -> SearchResult:
    """The pool's best candidate (the first of equals), decoded as the lock-step loop decodes a row."""

    def one(b: Beam) -> SearchResult:
        out = b.out
        text = response_text(tokenizer, out)
        return SearchResult(text, list(out.token_ids), b.score, out.finish_reason, len(out.token_ids), out.stop_text)

    best = max(range(len(pool)), key=lambda i: pool[i].score)  # first of equals
    result = one(pool[best])
    if keep_candidates:
        result.candidates = [one(b) for b in pool]
    return result
