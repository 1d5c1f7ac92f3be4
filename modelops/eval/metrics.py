"""Per-row scores and their summary: exact match, choice accuracy, reward, reward model; mean with a bootstrap CI."""

from __future__ import annotations

import logging
import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelops.errors import ModelopsError

logger = logging.getLogger(__name__)

_SPACE = re.compile(r"\s+")
_TRAILING = string.punctuation + "。！？…"


def normalize(text: str) -> str:
    """Strip, lowercase, collapse whitespace, drop trailing punctuation: `" Paris. "` and `"paris"` agree."""
    out = _SPACE.sub(" ", text.strip().lower())
    return out.rstrip(_TRAILING).rstrip()


def exact_match(prediction: str, reference: str, *, normalized: bool = True) -> float:
    if normalized:
        return float(normalize(prediction) == normalize(reference))
    return float(prediction.strip() == reference.strip())


def choice_prediction(logprobs: Sequence[Sequence[float]]) -> int:
    """Index of the choice whose tokens have the highest summed log-prob (first on ties)."""
    sums = [math.fsum(lp) for lp in logprobs]
    return max(range(len(sums)), key=lambda i: (sums[i], -i))


@dataclass
class Summary:
    """Mean of per-row values with a percentile bootstrap interval."""

    n: int
    mean: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"n": self.n, "mean": self.mean, "ci_low": self.low, "ci_high": self.high}


def bootstrap_ci(
    values: Sequence[float], *, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; deterministic for a seed (numpy PCG64)."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1 or resamples < 1:
        return float(x.mean()), float(x.mean())
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for lo in range(0, resamples, 256):  # chunks keep memory at 256 × n
        k = min(256, resamples - lo)
        means[lo : lo + k] = x[rng.integers(0, x.size, size=(k, x.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def summarize(values: Sequence[float], *, resamples: int = 1000, seed: int = 0) -> Summary:
    mean = math.fsum(values) / len(values) if values else float("nan")
    low, high = bootstrap_ci(values, resamples=resamples, seed=seed)
    # the percentile interval of a constant or near-constant sample can miss the mean by rounding only
    return Summary(len(values), mean, min(low, mean), max(high, mean))


def join_prompt(prompt: str, completion: str) -> str:
    """The text a reward model reads: prompt and completion joined by one space unless one side has it."""
    if not prompt or not completion or prompt[-1].isspace() or completion[0].isspace():
        return prompt + completion
    return f"{prompt} {completion}"


class RewardModel:
    """A sequence-classification checkpoint as a scorer of (prompt, completion).

    num_labels 1: the logit is the reward; more labels: the probability of the last label. With a chat template
    the pair is rendered as a user and an assistant turn, otherwise as `join_prompt(prompt, completion)`.
    """

    def __init__(self, path: str | Path, *, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from modelops.checkpoint import Checkpoint

        ckpt = Checkpoint.open(str(path))
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(ckpt.folder, dtype=torch.float32)
            self.tokenizer = AutoTokenizer.from_pretrained(ckpt.folder)
        except (OSError, ValueError) as exc:
            raise ModelopsError(
                f"rm:{path}: not a sequence-classification checkpoint with a tokenizer ({str(exc).splitlines()[0]})"
            ) from None
        self.model.to(device).eval()
        self.device = device
        self.pad_id = self.model.config.pad_token_id
        if self.pad_id is None and self.tokenizer.pad_token_id is not None:
            self.pad_id = self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def texts(self, prompts: Sequence[str], completions: Sequence[str]) -> list[str]:
        if getattr(self.tokenizer, "chat_template", None):
            return [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}, {"role": "assistant", "content": c}], tokenize=False
                )
                for p, c in zip(prompts, completions, strict=True)
            ]
        return [join_prompt(p, c) for p, c in zip(prompts, completions, strict=True)]

    def score(self, prompts: Sequence[str], completions: Sequence[str], *, batch_size: int = 16) -> list[float]:
        import torch

        texts = self.texts(prompts, completions)
        add_special = not getattr(self.tokenizer, "chat_template", None)
        step = batch_size if self.pad_id is not None else 1  # without a pad id the last token can't be found
        out: list[float] = []
        for lo in range(0, len(texts), step):
            ids = [self.tokenizer(t, add_special_tokens=add_special)["input_ids"] for t in texts[lo : lo + step]]
            width = max(len(s) for s in ids)
            batch = torch.full((len(ids), width), self.pad_id or 0, dtype=torch.long)
            mask = torch.zeros_like(batch)
            for i, s in enumerate(ids):  # right padding: the model reads the last non-pad token
                batch[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=batch.to(self.device), attention_mask=mask.to(self.device)).logits
            logits = logits.float().cpu()
            values = logits[:, 0] if logits.shape[-1] == 1 else logits.softmax(-1)[:, -1]
            out += values.tolist()
        return out


def bool_rate(values: Sequence[Any]) -> list[float]:
    return [float(bool(v)) for v in values]
