"""Speculative up-scaling (docs/methods.md §2.2): the expert drafts, the large model and the small base verify.

One round, per live row, starting from a *pending* token t0 (emitted, but fed to no model yet):

- the drafter (the first expert, S+) is fed t0, d1, …, d_k one token at a time with its own cache; after each
  token it gives its logits, from which the next draft d_{i+1} ~ q_{i+1} = warp(expert) is drawn. Its logits
  after d_k are the expert component of the bonus position;
- every other member (large, small base, further experts) is fed [t0, d1, …, d_k] in ONE forward, giving
  (B, k+1, W) logits; with the drafter's logits this is the fused target p at every position (`fuse`);
- drafts are accepted left to right with probability min(1, p_i(d_i)/q_i(d_i)); the first rejected position
  emits a token from norm(max(0, p − q)); if all k are accepted, a bonus token comes from p at position k+1.
  Greedy: accept while argmax p equals the draft, then emit argmax p. The emitted last token becomes the new
  pending token and every runner forgets the k − n_accepted rejected drafts (`Runner.rollback`, per row).

The first token of a prompt comes from the prefill logits (as in plain decoding), so prefill costs nothing
extra. The output distribution equals plain fused sampling exactly; greedy output is token-identical.

Each row has its own draft length: K every round (schedule `constant`) or adapted (`heuristic`, transformers'
schedule for assisted generation): two more after a round in which the row accepted every draft, one fewer
otherwise, never below one; and never more than the row has room for. A round drafts the longest of its rows'
lengths; a row with a shorter one stops accepting at its own length and draws its next token from p there. A
row's lengths depend only on its own earlier rounds, so either schedule stays exact; and with a seed, each
row's draws come from its prompt's keyed stream at each token position, so its tokens do not depend on the
batch it decodes in (or on a resume).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from modelops.decode.acceptance import greedy_next, greedy_prefix, sampled_next, sampled_prefix
from modelops.decode.engine import LockstepDecoder
from modelops.decode.loops import RowOutput, StopChecker, admit_all, take_waiting
from modelops.decode.overlap import Overlap, run_all
from modelops.decode.sampling import (
    SamplingConfig,
    choose,
    first_argmax,
    prompt_key,
    row_uniforms,
    sample_rows,
    warp,
)
from modelops.decode.spec import check_schedule
from modelops.decode.types import Generation, RowResults
from modelops.decode.vocab import align
from modelops.errors import ModelopsError
from modelops.runtime.runner import Runner

logger = logging.getLogger(__name__)

Fuse = Callable[[list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor | None]]
DRAFTER = 2  # member order: large, small base, experts…; the first expert drafts


@dataclass
class SpeculativeStats:
    """What speculation achieved. A row-round is one live row in one verification round."""

    draft_len: int = 0
    rounds: int = 0  # batched verification rounds (one forward per verifying model each)
    row_rounds: int = 0
    drafted: int = 0  # draft tokens proposed, summed over rows
    accepted: int = 0  # of those, accepted by the rule
    emitted: int = 0  # tokens appended to outputs (after stop truncation; first tokens from prefill included)
    acceptance_rate: float = 0.0  # accepted / drafted
    tokens_per_round: float = 0.0  # (accepted + 1) per row-round: tokens one verification forward yields
    mean_draft_len: float = 0.0  # drafts per row-round (K under the constant schedule, bar a row's last rounds)
    bonus_steps: int = 0  # rounds where some row accepted every draft, so the expert was also fed d_k
    admissions: int = 0  # prefills that joined a running batch (continuous batching)
    seconds: float = 0.0

    def finish(self) -> SpeculativeStats:
        self.acceptance_rate = self.accepted / self.drafted if self.drafted else 0.0
        self.tokens_per_round = (self.accepted + self.row_rounds) / self.row_rounds if self.row_rounds else 0.0
        self.mean_draft_len = self.drafted / self.row_rounds if self.row_rounds else 0.0
        return self


def next_draft_len(k: Any, every_draft_accepted: Any, schedule: str = "constant") -> Any:
    """A row's next draft length: `heuristic` grows it by two while its drafts all pass and shrinks it by one
    when it rejects one (transformers' schedule), so it settles where a full acceptance is about 1 in 3.
    Ints, or tensors of one length per row."""
    if schedule == "constant":
        return k
    check_schedule(schedule, "--speculative-schedule")
    if isinstance(k, torch.Tensor):
        return torch.where(every_draft_accepted, k + 2, (k - 1).clamp(min=1))
    return k + 2 if every_draft_accepted else max(1, k - 1)


# keyed draws: each token position of a row has its own uniforms, one per use
DRAFT, ACCEPT, EMIT, USES = 0, 1, 2, 3


# -- one batch of prompts -----------------------------------------------------------------------------------


class SpeculativeBatch:
    """The state of one batch: runners (live rows only), each row's output, and the pending token per row."""

    def __init__(
        self,
        runners: list[Runner],
        fuse: Fuse,
        width: int,
        sampling: SamplingConfig,
        stopper: StopChecker,
        draft_len: int,
        generator: torch.Generator | None = None,
        stats: SpeculativeStats | None = None,
        overlap: Overlap | None = None,
        schedule: str = "constant",
        keys: list[int] | None = None,
    ) -> None:
        """`keys`: one random-stream key per output row (sampled rows then ignore `generator`)."""
        if len(runners) <= DRAFTER:
            raise ModelopsError("speculative decoding needs a large model, a small base and an expert to draft")
        self.runners, self.fuse, self.width = runners, fuse, width
        self.sampling, self.stopper, self.draft_len, self.generator = sampling, stopper, draft_len, generator
        self.stats = stats or SpeculativeStats(draft_len=draft_len)
        self.overlap = overlap  # the verifiers (large, small base) side by side
        self.schedule = schedule
        self.keys = None if keys is None or sampling.greedy else torch.tensor(keys, dtype=torch.int64)
        self.outputs: list[RowOutput] = []
        self.finished: list[int] = []  # output rows finished since the caller last emptied this list
        self.live = torch.zeros(0, dtype=torch.long)  # original row index of each live row
        self.row_k = torch.zeros(0, dtype=torch.long)  # (B_live,) each row's next draft length (the schedule's)
        self.pending = torch.zeros(0, dtype=torch.long)  # (B_live,) emitted, not yet fed to any runner

    def start(self, prompts: list[list[list[int]]], pad_id: int) -> bool:
        """Prefill every runner with its own prompts; the first token comes from the prefill logits."""
        self.outputs = [RowOutput() for _ in prompts[0]]
        return self.admit(list(range(len(prompts[0]))), prompts, pad_id)

    def admit(self, rows: list[int], prompts: list[list[list[int]]], pad_id: int) -> bool:
        """Prefill the prompts of output rows `rows` (`prompts[m][j]`: model m's ids for rows[j]) and add them to
        the live batch, each with its first token from the prefill logits; True while rows are left."""
        fused, weights = self.fuse(admit_all(self.runners, prompts, pad_id, self.overlap))
        new = torch.tensor(rows, dtype=torch.long)
        first = choose(fused, self.sampling, self.generator, self._uniforms(new, torch.zeros_like(new), EMIT))
        n_old = len(self.live)
        self.live = torch.cat([self.live, new])
        self.row_k = torch.cat([self.row_k, torch.full_like(new, self.draft_len)])
        self.pending = torch.cat([self.pending.to(first.device), first])
        first_cpu = first.tolist()
        weights = None if weights is None else weights.cpu()
        done = [False] * n_old + [
            self._emit(n_old + j, [first_cpu[j]], None if weights is None else weights[j : j + 1])
            for j in range(len(rows))
        ]
        return self._drop(done)

    def _uniforms(self, rows: torch.Tensor, positions: torch.Tensor, use: int) -> torch.Tensor | None:
        """Keyed draws for output rows `rows` at token `positions` (broadcast together), one per use (DRAFT,
        ACCEPT, EMIT) of a position; None when unseeded (the generator draws)."""
        if self.keys is None:
            return None
        return row_uniforms(self.keys[rows], positions * USES + use).to(self.pending.device)

    def round(self) -> bool:
        """Draft, verify, accept, roll back; True while rows are left."""
        emitted = torch.tensor([len(self.outputs[r].token_ids) for r in self.live.tolist()])  # next token's index
        cut = torch.minimum(self.row_k, self.stopper.max_new_tokens - emitted - 1).clamp_(min=0)  # this row's drafts
        k = int(cut.max())  # no row can use more than its remaining tokens
        drafter = self.runners[DRAFTER]
        x = self.pending
        draft_logits, drafts, q_probs = [], [], []
        for i in range(k):
            raw = drafter.step(x)  # (B, W_e): the expert's next-token logits
            draft_logits.append(raw)
            q_logits = align(raw, self.width, float("-inf"))
            if self.sampling.greedy:
                x = first_argmax(q_logits)
            else:
                q = warp(q_logits, self.sampling).softmax(-1)
                x = sample_rows(q, self.generator, self._uniforms(self.live, emitted + i, DRAFT))
                q_probs.append(q)
            drafts.append(x)
        b = x.shape[0]
        drafts_t = torch.stack(drafts, 1) if drafts else self.pending.new_zeros(b, 0)  # (B, k)
        fed = torch.cat([self.pending[:, None], drafts_t], dim=1)  # (B, k+1)
        verifiers = [m for m in range(len(self.runners)) if m != DRAFTER]
        verified = run_all([partial(self.runners[m].step, fed) for m in verifiers], self.overlap)
        outs = dict(zip(verifiers, verified, strict=True))
        # the k draft positions first; the bonus position (the expert fed d_k) only if some row accepts all k
        fused, weights = self._targets(outs, draft_logits, slice(0, k), b)
        cut_d = cut.to(fused.device)
        if self.sampling.greedy:
            n_acc, best = greedy_prefix(fused, drafts_t)
        else:
            p = warp(fused.flatten(0, 1), self.sampling).softmax(-1).view_as(fused) if k else fused
            q = torch.stack(q_probs, 1) if q_probs else fused.new_zeros(b, 0, self.width)
            tests = self._uniforms(self.live[:, None], emitted[:, None] + torch.arange(k), ACCEPT)
            n_acc = sampled_prefix(p, q, drafts_t, self.generator, tests)
        n_acc = torch.minimum(n_acc, cut_d)  # a row's drafts past its own length do not count
        # one copy to the host for the accepted counts and the drafts: the keyed draws, the schedule, the bonus
        # decision and the outputs all read them there
        host = torch.cat([n_acc[:, None].to(drafts_t.dtype), drafts_t], dim=1).cpu()
        n_host, drafts_host = host[:, 0], host[:, 1:]
        bonus = bonus_weights = None
        if bool((n_host == k).any()):
            bonus, bonus_weights = self._targets(outs, [drafter.step(x)], slice(k, k + 1), b)
            bonus = bonus[:, 0]
        if self.sampling.greedy:
            nxt = greedy_next(best, n_acc, bonus)
        else:
            bonus_p = warp(bonus, self.sampling).softmax(-1) if bonus is not None else None
            draws = self._uniforms(self.live, emitted + n_host, EMIT)
            nxt = sampled_next(p, q, n_acc, bonus_p, self.generator, cut_d, draws)
        if bonus_weights is not None:  # dlf: the α chosen at the bonus position too
            weights = bonus_weights if weights is None else torch.cat([weights, bonus_weights], dim=1)
        self.stats.rounds += 1
        self.stats.row_rounds += b
        self.stats.drafted += int(cut.sum())
        self.stats.accepted += int(n_host.sum())
        self.stats.bonus_steps += int(bonus is not None)
        adapted = next_draft_len(self.row_k, n_host == cut, self.schedule)
        self.row_k = torch.where(cut > 0, adapted, self.row_k)  # a round with no room to draft teaches nothing
        n_cpu, drafts_cpu, nxt_cpu = n_host.tolist(), drafts_host.tolist(), nxt.tolist()
        weights = None if weights is None else weights.cpu()  # DLF's α per position: one copy, not one per row
        done = []
        for j in range(b):
            tokens = [*drafts_cpu[j][: n_cpu[j]], nxt_cpu[j]]
            done.append(self._emit(j, tokens, None if weights is None else weights[j]))
        back = (k - n_host).to(torch.long)  # each row forgets its rejected drafts, the same on every runner…
        for m, runner in enumerate(self.runners):
            fed_here = back if m != DRAFTER or bonus is not None else back - 1  # …but the expert skipped d_k
            runner.rollback(fed_here)  # host counts inside the fed window: no read back from the device
        self.pending = nxt
        return self._drop(done)

    def _targets(
        self, verified: dict[int, torch.Tensor], draft_logits: list[torch.Tensor], positions: slice, b: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fused logits (B, P, V) and weights (B, P, T) or None at `positions` of the verified window; the
        expert's logits at those positions are `draft_logits` (one (B, W_e) per position)."""
        n = positions.stop - positions.start
        if n == 0:
            return torch.zeros(b, 0, self.width, device=self.pending.device), None
        expert = torch.stack(draft_logits, 1)
        comps = [
            (expert if m == DRAFTER else verified[m][:, positions]).reshape(b * n, -1) for m in range(len(self.runners))
        ]
        fused, weights = self.fuse(comps)
        return fused.view(b, n, -1), None if weights is None else weights.view(b, n, -1)

    def _emit(self, j: int, tokens: list[int], weights: torch.Tensor | None) -> bool:
        """Append tokens to live row j until a stop; tokens after the stop are discarded."""
        out = self.outputs[int(self.live[j])]
        rows = weights.tolist() if weights is not None else None
        for i, tok in enumerate(tokens):
            out.token_ids.append(tok)
            self.stats.emitted += 1
            if rows is not None:
                out.weights.append(rows[i])
            if self.stopper.check(out):
                return True
        return False

    def _drop(self, done: list[bool]) -> bool:
        """Finished rows leave every runner; True while rows are left."""
        if any(done):
            keep = torch.tensor([not d for d in done])
            idx = torch.nonzero(keep)[:, 0]
            for runner in self.runners:
                runner.select(idx)
            self.finished += self.live[~keep].tolist()
            self.live, self.row_k = self.live[keep], self.row_k[keep]
            self.pending = self.pending[idx.to(self.pending.device)]
        return bool(len(self.live))


def speculative_lockstep(
    runners: list[Runner],
    fuse: Fuse,
    width: int,
    prompts: list[list[list[int]]],
    sampling: SamplingConfig,
    stopper: StopChecker,
    pad_id: int,
    draft_len: int,
    generator: torch.Generator | None = None,
    stats: SpeculativeStats | None = None,
    overlap: Overlap | None = None,
    schedule: str = "constant",
    rows: int | None = None,
    refill: bool = True,
    on_done: Callable[[int], None] | None = None,
    row_keys: list[int] | None = None,
    on_row: Callable[[int, RowOutput], None] | None = None,
) -> list[RowOutput]:
    """Decode every prompt speculatively, at most `rows` at a time; same inputs, outputs and batching as
    `lockstep_generate` (finished rows' places go to waiting prompts when `refill`; `row_keys`: one random-stream
    key per prompt; `on_row(k, out)`: prompt k is finished), plus the draft length (each row's first under the
    heuristic schedule)."""
    batch = SpeculativeBatch(
        runners, fuse, width, sampling, stopper, draft_len, generator, stats, overlap, schedule, row_keys
    )
    n_rows = len(prompts[0])
    rows = min(rows or n_rows, n_rows)
    batch.outputs = [RowOutput() for _ in range(n_rows)]
    queue = list(range(n_rows - 1, -1, -1))  # popped from the end: prompt order
    while queue or len(batch.live):
        before = len(batch.live)
        new = take_waiting(queue, before, rows, refill, runners)
        if new:
            batch.stats.admissions += bool(before)
            batch.admit(new, [[p[i] for i in new] for p in prompts], pad_id)
        else:
            batch.round()
        for k in batch.finished if on_row else ():
            on_row(k, batch.outputs[k])
        batch.finished.clear()
        if on_done and before + len(new) > len(batch.live):
            on_done(before + len(new) - len(batch.live))
    return batch.outputs


def speculative_generate(
    decoder: LockstepDecoder,
    prompts: Sequence[str],
    sampling: SamplingConfig | None = None,
    draft_len: int = 4,
    *,
    ids: Sequence[Any] | None = None,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
    schedule: str = "constant",
    continuous: bool = True,
    on_generation: Callable[[Generation], None] | None = None,
) -> tuple[list[Generation], SpeculativeStats]:
    """Speculative fused generation for every prompt, at most `batch_size` rows at a time (a finished row's place
    goes to the next prompt unless `continuous` is False); `on_generation(g)`: one prompt's result, as soon as it
    is finished. With a seed, each prompt draws from its own stream (keyed by seed and id, as in plain decoding).

    Works for every logit rule whose target is computed per position (eft, proxy, fixed, dlf); with several
    experts the first one drafts and the others verify with the large model and the small base. `schedule`:
    constant (K drafts every round) or heuristic (K to start, then adapted per batch).
    """
    sampling = sampling or SamplingConfig()
    sampling.validate()
    if draft_len < 1:
        raise ModelopsError(f"--speculative must be at least 1 (tokens drafted per round), got {draft_len}")
    next_draft_len(draft_len, True, schedule)  # an unknown schedule fails here, before any model runs
    if decoder.rule.name not in ("eft", "proxy", "fixed", "dlf") or len(decoder.members) <= DRAFTER:
        raise ModelopsError(
            f"--speculative needs a logit rule with an expert to draft (eft, proxy, fixed, dlf), not --rule "
            f"{decoder.rule.name} with {len(decoder.members)} model(s)"
        )
    row_ids = list(ids) if ids is not None else list(range(len(prompts)))
    keys = [prompt_key(sampling.seed, i) for i in row_ids] if sampling.seed is not None else None
    stopper = StopChecker(decoder.stop_ids, sampling.stop, decoder.tokenizer, sampling.max_new_tokens)
    stats = SpeculativeStats(draft_len=draft_len)
    results = RowResults(lambda j, out: decoder._to_generation(row_ids[j], out), on_generation)
    start = time.perf_counter()
    outs = speculative_lockstep(
        decoder.runners(), decoder.fuse, decoder.width, decoder._prompt_ids(prompts), sampling, stopper,
        decoder.pad_id, draft_len, None, stats, decoder.overlap, schedule, rows=batch_size, refill=continuous,
        on_done=on_batch, row_keys=keys, on_row=results.on_row,
    )  # fmt: skip
    gens = results.ordered(outs)
    stats.seconds = time.perf_counter() - start
    stats.finish()
    logger.info(
        "speculative K=%d (%s): acceptance %.3f, %.2f tokens per verification round, %.2f drafts (%d rounds)",
        draft_len,
        schedule,
        stats.acceptance_rate,
        stats.tokens_per_round,
        stats.mean_draft_len,
        stats.rounds,
    )
    return gens, stats
