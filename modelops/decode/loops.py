"""The lock-step sampler and teacher-forced scoring. They use runners and a fusion callable, nothing else.

`fuse(logits)` maps the members' (B, W_m) logits to ((B, V) fused logits, (B, T) weights or None); the loops
never know which paper a rule came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from modelops.decode.overlap import Overlap, run_all
from modelops.decode.sampling import SamplingConfig, choose, first_argmax, row_uniforms
from modelops.runtime.generate import left_pad
from modelops.runtime.runner import Runner

Fuse = Callable[[list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class RowOutput:
    """What one prompt produced: new token ids, why it stopped, and the per-step weights if the rule has them."""

    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # eos | stop | length
    stop_text: str | None = None
    weights: list[list[float]] = field(default_factory=list)
    score: float | None = None


def response_text(tokenizer: Any, out: RowOutput) -> str:
    """A row's text: its ids decoded without the stop token, cut before the stop string that ended it."""
    ids = out.token_ids[:-1] if out.finish_reason == "eos" else out.token_ids
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if out.finish_reason == "stop" and out.stop_text and out.stop_text in text:
        text = text[: text.find(out.stop_text)]
    return text


class StopChecker:
    """Per-row stop: any stop id (the union of all models' EOS / end-of-turn ids), a stop string, max tokens."""

    def __init__(self, stop_ids: set[int], stop_strings: list[str], tokenizer: Any, max_new_tokens: int) -> None:
        self.stop_ids = stop_ids
        self.stop_strings = [s for s in stop_strings if s]
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        # only the tail can hold a new match: tokens are at least one character long
        self.tail = max((len(s) for s in self.stop_strings), default=0) + 8

    def check(self, out: RowOutput) -> bool:
        """Update `out.finish_reason`; True when the row is done."""
        if out.token_ids and out.token_ids[-1] in self.stop_ids:
            out.finish_reason = "eos"
            return True
        if self.stop_strings:
            text = self.tokenizer.decode(out.token_ids[-self.tail :], skip_special_tokens=True)
            for s in self.stop_strings:
                if s in text:
                    out.finish_reason, out.stop_text = "stop", s
                    return True
        if len(out.token_ids) >= self.max_new_tokens:
            out.finish_reason = "length"
            return True
        return False


def take_waiting(queue: list[int], n_live: int, rows: int, refill: bool, runners: list[Runner]) -> list[int]:
    """The waiting prompts (popped from the end of `queue`) to prefill now: enough to fill the batch up to `rows`,
    when it is empty, or when `refill` is on and every runner's cache can take rows mid-decode."""
    free = min(rows - n_live, len(queue))
    if not free or (n_live and not (refill and all(r.can_admit for r in runners))):
        return []
    return [queue.pop() for _ in range(free)]


def lockstep_generate(
    runners: list[Runner],
    fuse: Fuse,
    prompts: list[list[list[int]]],
    sampling: SamplingConfig,
    stopper: StopChecker,
    pad_id: int,
    generator: torch.Generator | None = None,
    overlap: Overlap | None = None,
    rows: int | None = None,
    refill: bool = True,
    on_done: Callable[[int], None] | None = None,
    stats: dict[str, Any] | None = None,
    row_keys: list[int] | None = None,
    on_row: Callable[[int, RowOutput], None] | None = None,
    ahead: bool | None = None,
) -> list[RowOutput]:
    """Decode every prompt, at most `rows` at a time: every model sees its own prompt, then the same fused tokens.

    `prompts[m][i]` are model m's ids for prompt i. Cost per step: one cached forward per model plus one fused
    combination. A finished row leaves every cache; with `refill` (and caches that can take rows) the next
    prompts are prefilled and join the running batch in its place (continuous batching), else the next group
    starts once the batch is empty. `overlap`: the small models run beside the large. `on_done(k)`: k rows ended.
    `stats` gets steps, admissions (prefills that joined a running batch) and occupancy (live rows ÷ `rows`).
    `row_keys` (one per prompt): sampled rows draw from a stream keyed by the prompt and its token position, not
    by batch position, so a prompt samples the same tokens in any batch. `on_row(i, out)`: prompt i is finished.
    `ahead` (default: on an accelerator): launch step t+1's forwards before the host reads step t's tokens and
    checks the stops, so the device computes while Python works; rows that finished then leave with that step's
    slot. On a CPU nothing runs asynchronously, and a finished row's extra step would only cost time.
    """
    n_rows = len(prompts[0])
    if not n_rows:
        return []
    rows = min(rows or n_rows, n_rows)
    for runner, ids in zip(runners, prompts, strict=True):  # one KV allocation for the whole decode
        runner.room = (rows, kv_slots(max(map(len, ids)) + stopper.max_new_tokens, refill and rows < n_rows))
    outputs = [RowOutput() for _ in range(n_rows)]
    queue = list(range(n_rows - 1, -1, -1))  # popped from the end: prompt order
    live: list[int] = []  # the prompt index of each batch row
    logits: list[torch.Tensor] = []
    steps = row_steps = admissions = 0
    while True:
        new = take_waiting(queue, len(live), rows, refill, runners)
        if new:
            admitted = admit_all(runners, [[p[i] for i in new] for p in prompts], pad_id, overlap)
            admissions += bool(live)
            logits = admitted if not live else [torch.cat(pair) for pair in zip(logits, admitted, strict=True)]
            live += new
        steps, row_steps = steps + 1, row_steps + len(live)
        fused, weights = fuse(logits)
        uniforms = None
        if row_keys is not None and not sampling.greedy:
            keys = torch.tensor([row_keys[r] for r in live], dtype=torch.int64)
            steps_done = torch.tensor([len(outputs[r].token_ids) for r in live], dtype=torch.int64)
            uniforms = row_uniforms(keys, steps_done).to(fused.device)
        tokens = choose(fused, sampling, generator, uniforms)
        if ahead is None:
            ahead = tokens.device.type != "cpu"
        if ahead:  # the host copies are queued before the forwards, so reading them waits for them only
            host = [t.to("cpu", non_blocking=True) for t in (tokens, weights) if t is not None]
            copied = torch.cuda.Event() if tokens.is_cuda else None
            if copied is not None:
                copied.record()
            launched = run_all([partial(runner.step, tokens) for runner in runners], overlap)
            if copied is not None:
                copied.synchronize()
            tokens_cpu, weights_cpu = host[0].tolist(), host[1].tolist() if weights is not None else None
        else:
            tokens_cpu = tokens.tolist()
            weights_cpu = weights.tolist() if weights is not None else None
        done = []
        for j, row in enumerate(live):
            out = outputs[row]
            out.token_ids.append(tokens_cpu[j])
            if weights_cpu is not None:
                out.weights.append(weights_cpu[j])
            done.append(stopper.check(out))
            if done[-1] and on_row is not None:
                on_row(row, out)
        if any(done):
            if on_done:
                on_done(sum(done))
            if all(done) and not queue:
                if stats is not None:
                    stats.update(steps=steps, admissions=admissions, occupancy=row_steps / (steps * rows))
                return outputs
            keep = torch.tensor([not d for d in done])
            idx = torch.nonzero(keep)[:, 0]
            for runner in runners:
                runner.select(idx)
            live, tokens = [r for r, d in zip(live, done, strict=True) if not d], tokens[idx.to(tokens.device)]
            if ahead:
                launched = [x[idx.to(x.device)] for x in launched]
        if ahead:
            logits = launched if live else []
        else:
            logits = run_all([partial(runner.step, tokens) for runner in runners], overlap) if live else []


def kv_slots(longest_row: int, joining: bool) -> int:
    """Cache slots a decode needs: the longest row, or 4/3 of it when rows join a running batch (they are
    left-padded to its length, and `Runner.select` crops the padding once it is a quarter of the cache)."""
    return longest_row * 4 // 3 + 1 if joining else longest_row


def admit_all(
    runners: list[Runner], prompts: list[list[list[int]]], pad_id: int, overlap: Overlap | None = None
) -> list[torch.Tensor]:
    """Each runner's last-position logits (B_new, W_m) for new left-padded prompts `prompts[m]` joining its batch."""
    padded = [left_pad(rows, pad_id) for rows in prompts]
    return run_all([partial(r.admit, ids, mask) for r, (ids, mask) in zip(runners, padded, strict=True)], overlap)


def continuation_logprobs(
    runners: list[Runner],
    fuse: Fuse,
    prompts: list[list[list[int]]],
    continuations: list[list[int]],
    pad_id: int,
    chunk_rows: int = 256,
    overlap: Overlap | None = None,
    greedy: list[list[bool]] | None = None,
) -> list[list[float]]:
    """Teacher-forced log p̃(y_t | x, y_<t) of each continuation token: one parallel forward per model.
    `greedy`, when given, gets per token whether it is the fused distribution's argmax (lm-eval's is_greedy)."""
    n_rows = len(continuations)
    gathered: list[torch.Tensor] = []
    padded = [
        left_pad([list(p) + list(c) for p, c in zip(rows, continuations, strict=True)], pad_id) for rows in prompts
    ]
    keep = max((len(c) for c in continuations), default=0) + 1  # the positions that predict a continuation token
    calls = [partial(r.tail_logits, ids, mask, keep) for r, (ids, mask) in zip(runners, padded, strict=True)]
    # one model's (B, keep, W) logits alive at a time, unless they are computed side by side
    forwards = run_all(calls, overlap) if overlap is not None else (call() for call in calls)
    for tail in forwards:  # (B, keep, W) in the model's dtype
        picks = []  # position j predicts token j+1: the continuation is the last len(c) tokens of each row
        for i, c in enumerate(continuations):
            picks.append(tail[i, keep - len(c) - 1 : keep - 1])
        gathered.append(torch.cat(picks).float() if picks else tail.new_zeros((0, tail.shape[-1])).float())
    targets = torch.tensor([t for c in continuations for t in c], dtype=torch.long)
    scores: list[torch.Tensor] = []
    hits: list[torch.Tensor] = []
    for lo in range(0, targets.numel(), chunk_rows):
        part = [g[lo : lo + chunk_rows] for g in gathered]
        fused, _ = fuse(part)
        logp = torch.log_softmax(fused, -1)
        tgt = targets[lo : lo + chunk_rows].to(logp.device)
        scores.append(logp.gather(1, tgt[:, None])[:, 0].cpu())
        if greedy is not None:
            hits.append((first_argmax(fused) == tgt).cpu())
    flat = torch.cat(scores) if scores else torch.zeros(0)
    flags = torch.cat(hits).tolist() if hits else []
    out, pos = [], 0
    for c in continuations:
        out.append(flat[pos : pos + len(c)].tolist())
        if greedy is not None:
            greedy.append(flags[pos : pos + len(c)])
        pos += len(c)
    assert len(out) == n_rows
    return out
