"""One model's plain decode loop over the `Runner`: left-padded batches, greedy or sampled, stop at <eos>.

What the zoo scores its models with and samples its DPO pairs from. Every row stays in the batch until the whole
batch is done (no `Runner.select`): a sampled step draws one token for every row, finished or not, so the draws a
generator makes depend only on the batch, and a seeded sample is the same whatever finished when.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from modelops.runtime.runner import Runner


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (B, T), padded on the left so every row's last token is at the end."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


@torch.inference_mode()
def generate(
    model: Any,
    prompts: list[list[int]],
    *,
    max_new: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    batch: int = 256,
) -> list[list[int]]:
    """Greedy (temperature 0) or sampled continuations, `batch` prompts at a time; each includes its <eos> when
    one was produced. Sampling is `multinomial(softmax(logits / temperature))`, one draw per row per step."""
    out: list[list[int]] = []
    runner = Runner(model, fallback_id=pad_id)
    for b0 in range(0, len(prompts), batch):
        logits = runner.prefill(*left_pad(prompts[b0 : b0 + batch], pad_id))  # (B, V)
        rows: list[list[int]] = [[] for _ in range(len(logits))]
        done = torch.zeros(len(logits), dtype=torch.bool)
        for _ in range(max_new):
            if temperature > 0:
                probs = torch.softmax(logits / temperature, -1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                nxt = logits.argmax(-1)
            nxt = nxt.cpu()
            for i in torch.nonzero(~done).flatten().tolist():
                rows[i].append(int(nxt[i]))
            done |= nxt == eos_id
            if bool(done.all()):
                break
            logits = runner.step(nxt)
        runner.reset()
        out.extend(rows)
    return out
