"""Keeping the small models in step with the large one for weak-to-strong search (docs/methods.md §2.4).

Two ways to hand the large model's new tokens to a small model:
- ids: the small model shares the large model's vocabulary and receives the same token ids;
- text: the tokenizers differ (or the large model is reached only as text). The large model's tokens are
  decoded incrementally, an incomplete UTF-8 tail (a byte-fallback split shows up as U+FFFD) is held back
  until the next chunk, and the whole response text is re-tokenized for the small tokenizer each chunk. Only
  the tokens after the common prefix with what the small cache already holds are fed (after a per-row
  rollback), so the cost stays incremental except for a boundary token or two.

`SmallSide` owns one small model's `Runner` and per-row streams, and turns each chunk into per-token log-probs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from modelops.decode.models import Member
from modelops.decode.vocab import align
from modelops.errors import ModelopsError
from modelops.runtime.generate import left_pad
from modelops.runtime.runner import Runner

logger = logging.getLogger(__name__)

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 6  # prompt tokens kept as decoding context, so the first response piece keeps its leading space


@dataclass(frozen=True)
class Detok:
    """Incremental detokenization state of one row: `ids` = a little prompt context + the response ids.

    Text is produced as decode(ids[prefix:]) − decode(ids[prefix:read]), the usual windowed trick: decoding
    a window with some left context keeps leading spaces and merges that a decode of new ids alone would lose.
    """

    ids: tuple[int, ...]
    prefix: int
    read: int

    @classmethod
    def start(cls, prompt_ids: list[int]) -> Detok:
        ctx = tuple(prompt_ids[-CONTEXT_TOKENS:])
        return cls(ctx, 0, len(ctx))


def detok_push(tokenizer: Any, state: Detok, new_ids: list[int], final: bool = False) -> tuple[Detok, str]:
    """Add tokens; return (new state, stable new text). An incomplete UTF-8 tail waits unless `final`."""
    ids = state.ids + tuple(new_ids)
    before = tokenizer.decode(list(ids[state.prefix : state.read]), skip_special_tokens=True)
    after = tokenizer.decode(list(ids[state.prefix :]), skip_special_tokens=True)
    if len(after) > len(before) and (final or not after.endswith(REPLACEMENT)):
        return Detok(ids, state.read, len(ids)), after[len(before) :]
    return Detok(ids, state.prefix, state.read), ""


def _common_prefix(a: Any, b: Any) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def shares_vocabulary(a: Any, b: Any) -> bool:
    """True when two tokenizers are interchangeable for token ids (the logit rules' check)."""
    from modelops.decode.vocab import VocabularyMismatch, check_shared_vocabulary

    if a is b:
        return True
    try:
        check_shared_vocabulary({"large": a, "small": b})
    except VocabularyMismatch:
        return False
    return True


@dataclass
class Stream:
    """What one small model's cache holds for one row, and the log-prob of each held token.

    `lp[i]` is log π(held[i] | held[:i]) or None for prompt tokens; the row's log-likelihood of the response is
    the sum of lp over positions >= `boundary` (the first position that differs from the rendered prompt).
    Lists are replaced, never mutated, so forked rows may share them.
    """

    held: list[int]
    lp: list[float | None]
    boundary: int
    prompt_ids: list[int]
    prompt_text: str
    add_special: bool

    def logprob(self) -> float:
        return float(sum(x for x in self.lp[self.boundary :] if x is not None))


class SmallSide:
    """One small model in a search: its runner, a stream per live row, and the last next-token log-probs."""

    def __init__(self, member: Member, text_mode: bool, full_rescore: bool = False) -> None:
        self.member = member
        self.tokenizer = member.tokenizer
        self.runner = Runner(member.model, member.role)
        self.text_mode = text_mode
        self.full_rescore = full_rescore  # benchmark only: re-feed the whole response every chunk
        self.width = len(self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))
        self.eos_id = self.tokenizer.eos_token_id
        self.streams: list[Stream] = []
        self.last: torch.Tensor | None = None  # (B, V) log-probs of the next token per row
        self.tokens_fed = 0

    def admit(self, prompts: list[str]) -> None:
        """Prefill new prompts on their own and append their rows after the live ones (the first call, or the
        first after `reset`, starts the batch)."""
        ids = [self.member.render(p) for p in prompts]
        logp = self._logp(self.runner.admit(*left_pad(ids, self.pad_id)))
        self.last = logp if self.last is None or not self.streams else torch.cat([self.last, logp])
        for p, row in zip(prompts, ids, strict=True):
            text, special = self.member.render_text(p)
            self.streams.append(Stream(list(row), [None] * len(row), len(row), list(row), text, special))

    def reset(self) -> None:
        self.runner.reset()
        self.streams, self.last = [], None

    def select(self, rows: list[int]) -> None:
        assert self.last is not None
        idx = torch.tensor(rows, dtype=torch.long)
        self.runner.select(idx)
        self.last = self.last[idx.to(self.last.device)]
        self.streams = [self.streams[i] for i in rows]

    def _logp(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(align(logits, self.width, float("-inf")), -1)

    def target(self, row: int, new_ids: list[int], text: str, eos: bool) -> list[int]:
        """The ids this row's cache should hold after the chunk."""
        s = self.streams[row]
        if not self.text_mode:
            return s.held + list(new_ids)
        ids = list(self.tokenizer(s.prompt_text + text, add_special_tokens=s.add_special)["input_ids"])
        if eos and self.eos_id is not None:
            ids.append(int(self.eos_id))
        return ids

    def advance(self, targets: list[list[int]]) -> None:
        """Bring every row's cache to `targets[row]`: roll back past the common prefix, feed the rest in one forward.

        A row that keeps its whole held prefix is scored from the stored next-token log-probs; a row whose
        boundary tokens changed re-feeds the last common token to get the log-probs that follow it.
        """
        assert self.last is not None
        feeds, scored_from, rollback = [], [], []
        for s, tgt in zip(self.streams, targets, strict=True):
            common = _common_prefix(s.held, tgt)
            if self.full_rescore:
                common = min(common, len(s.prompt_ids))
            if common == 0:
                raise ModelopsError(
                    f"{self.member.spec}: re-tokenized text no longer starts with the prompt's first token"
                )
            start = len(s.held) if common == len(s.held) else common - 1
            feeds.append(tgt[start:])
            scored_from.append(0 if start == len(s.held) else 1)
            rollback.append(len(s.held) - start)
        self.runner.rollback(rollback)
        k = max(len(f) for f in feeds)
        full = self.last[:, None]  # (B, 1, V): position j of `full` predicts feed token j
        if k:
            ids, _ = left_pad([f + [self.pad_id] * (k - len(f)) for f in feeds], self.pad_id)
            out = self.runner.step(ids)  # (B, k, W)
            self.tokens_fed += sum(len(f) for f in feeds)
            self.runner.rollback([k - len(f) for f in feeds])
            full = torch.cat([full, self._logp(out)], dim=1)  # (B, k+1, V)
        lens = torch.tensor([len(f) for f in feeds], device=full.device)
        self.last = full[torch.arange(full.shape[0], device=full.device), lens]
        if k:
            tok = torch.tensor([f + [0] * (k - len(f)) for f in feeds], device=full.device)
            picked = full[:, :k].gather(-1, tok[..., None])[..., 0].tolist()  # (B, k)
        for r, (s, tgt) in enumerate(zip(self.streams, targets, strict=True)):
            start = len(tgt) - len(feeds[r])
            keep = start + scored_from[r]
            new_lp = picked[r][scored_from[r] : len(feeds[r])] if k else []
            boundary = _common_prefix(s.prompt_ids, tgt) if self.text_mode else s.boundary
            self.streams[r] = Stream(
                list(tgt), s.lp[:keep] + new_lp, boundary, s.prompt_ids, s.prompt_text, s.add_special
            )

    def logprobs(self) -> list[float]:
        return [s.logprob() for s in self.streams]
