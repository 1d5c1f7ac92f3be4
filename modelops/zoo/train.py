"""Plain-torch training loops for the zoo: pre-training, SFT (loss on the answer only), DPO with an SFT term.

Generation (scores, DPO samples) is not here: it goes through the shared runner (`modelops.runtime.generate`).

Tensor functions (`sequence_logprobs`, `dpo_loss`) are pure; loops take token ids and a `tick(loss)` callback
(progress), and never print. Everything runs on one CPU thread and is deterministic for a seed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

Tick = Callable[[float], None]  # called once per optimiser step with the step's loss


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    layers: int
    heads: int = 4
    mlp_ratio: float = 2.75


def make_model(size: ModelSize, vocab_size: int, specials: dict[str, int], seed: int) -> Any:
    """A randomly initialised LlamaForCausalLM (untied embeddings: every weight is explicit for surgery)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=size.hidden,
        intermediate_size=int(size.hidden * size.mlp_ratio),
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=specials["bos"],
        eos_token_id=specials["eos"],
        pad_token_id=specials["pad"],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        bos_token_id=specials["bos"], eos_token_id=specials["eos"], pad_token_id=specials["pad"],
        max_new_tokens=16, do_sample=False,
    )  # fmt: skip
    return model


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% of lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)


def _step(opt: torch.optim.Optimizer, model: torch.nn.Module, loss: torch.Tensor, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def pretrain(
    model: Any, stream: torch.Tensor, *, steps: int, batch: int, seq_len: int, lr: float, seed: int, tick: Tick
) -> float:
    """Next-token loss on random windows of one long token stream. Returns the mean loss of the last 5%."""
    g = torch.Generator().manual_seed(seed)
    opt = _optimizer(model, lr)
    model.train()
    tail: list[float] = []
    for step in range(steps):
        starts = torch.randint(0, len(stream) - seq_len - 1, (batch,), generator=g)
        x = torch.stack([stream[s : s + seq_len] for s in starts.tolist()])  # (B, T)
        loss = model(input_ids=x, labels=x).loss
        _step(opt, model, loss, _lr_at(step, steps, lr, warmup=max(1, steps // 20)))
        tail = ([*tail, loss.item()])[-max(1, steps // 20) :]
        tick(loss.item())
    model.eval()
    return sum(tail) / len(tail)


def pad_batch(seqs: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), both (B, T_max)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def _answer_batch(
    prompts: list[list[int]], answers: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt+answer ids, mask, and labels that are -100 everywhere but the answer tokens."""
    ids, mask = pad_batch([p + a for p, a in zip(prompts, answers, strict=True)], pad_id, left=False)
    labels = torch.full_like(ids, -100)
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
    return ids, mask, labels


def sft(
    model: Any,
    examples: list[tuple[list[int], list[int]]],
    *,
    steps: int,
    batch: int,
    lr: float,
    pad_id: int,
    seed: int,
    tick: Tick,
) -> float:
    """Supervised fine-tuning with the loss on the answer tokens only (answers end with <eos>)."""
    g = torch.Generator().manual_seed(seed)
    opt = _optimizer(model, lr)
    model.train()
    tail: list[float] = []
    for step in range(steps):
        idx = torch.randint(0, len(examples), (batch,), generator=g).tolist()
        ids, mask, labels = _answer_batch([examples[i][0] for i in idx], [examples[i][1] for i in idx], pad_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        _step(opt, model, loss, _lr_at(step, steps, lr, warmup=max(1, steps // 20)))
        tail = ([*tail, loss.item()])[-max(1, steps // 10) :]
        tick(loss.item())
    model.eval()
    return sum(tail) / len(tail)


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of log p(label) over positions whose label is not -100.

    logits (B, T, V) predict labels (B, T) shifted by one, as in transformers' causal LM loss.
    """
    logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != -100
    lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (lp * keep).sum(-1), keep.sum(-1)


def dpo_loss(
    pi_chosen: torch.Tensor,
    pi_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023): -log σ(β[(π_c - ref_c) - (π_r - ref_r)]), mean over pairs; and pair accuracy."""
    margin = beta * ((pi_chosen - ref_chosen) - (pi_rejected - ref_rejected))  # (B,)
    return -F.logsigmoid(margin).mean(), (margin > 0).float().mean()


@dataclass
class DpoResult:
    loss: float
    pair_accuracy: float
    snapshots: dict[int, dict[str, torch.Tensor]]
    snapshot_losses: dict[int, float]  # mean loss over the steps just before each snapshot


def dpo(
    policy: Any,
    reference: Any,
    pairs: list[tuple[list[int], list[int], list[int]]],
    *,
    steps: int,
    batch: int,
    lr: float,
    beta: float,
    nll_weight: float,
    pad_id: int,
    seed: int,
    snapshot_at: tuple[int, ...],
    tick: Tick,
) -> DpoResult:
    """DPO on (prompt, chosen, rejected) pairs plus `nll_weight` × per-token NLL of the chosen answer.

    The NLL term keeps greedy task accuracy from collapsing (docs/zoo.md). State dicts are copied after the
    steps listed in `snapshot_at` (the "partly trained" checkpoint).
    """
    g = torch.Generator().manual_seed(seed)
    opt = _optimizer(policy, lr)
    policy.train()
    reference.eval()
    snaps: dict[int, dict[str, torch.Tensor]] = {}
    snap_losses: dict[int, float] = {}
    tail: list[tuple[float, float]] = []
    for step in range(steps):
        idx = torch.randint(0, len(pairs), (batch,), generator=g).tolist()
        prompts = [pairs[i][0] for i in idx] * 2
        answers = [pairs[i][1] for i in idx] + [pairs[i][2] for i in idx]
        ids, mask, labels = _answer_batch(prompts, answers, pad_id)  # chosen rows first, then rejected
        with torch.no_grad():
            ref_lp, _ = sequence_logprobs(reference(input_ids=ids, attention_mask=mask).logits, labels)
        pi_lp, counts = sequence_logprobs(policy(input_ids=ids, attention_mask=mask).logits, labels)
        loss, acc = dpo_loss(pi_lp[:batch], pi_lp[batch:], ref_lp[:batch], ref_lp[batch:], beta)
        loss = loss + nll_weight * (-(pi_lp[:batch] / counts[:batch]).mean())
        _step(opt, policy, loss, _lr_at(step, steps, lr, warmup=max(1, steps // 20)))
        tail = ([*tail, (loss.item(), acc.item())])[-max(1, steps // 10) :]
        tick(loss.item())
        if step + 1 in snapshot_at:
            snaps[step + 1] = {k: v.detach().clone() for k, v in policy.state_dict().items()}
            snap_losses[step + 1] = sum(t[0] for t in tail) / len(tail)
    policy.eval()
    return DpoResult(sum(t[0] for t in tail) / len(tail), sum(t[1] for t in tail) / len(tail), snaps, snap_losses)
