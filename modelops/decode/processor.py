"""The co-decoder as a `transformers.LogitsProcessor`, for users who call `large.generate(...)` themselves.

The large model's logits arrive as `scores`; the small models run beside it with their own caches, fed the
same ids. Greedy and sampling only: beam search reorders rows behind the processor's back.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor

from modelops.decode.engine import FusionRule
from modelops.decode.rules import fuse_components
from modelops.decode.vocab import aligned_components, check_shared_vocabulary
from modelops.errors import ModelopsError
from modelops.runtime.runner import Runner


class FusedLogitsProcessor(LogitsProcessor):
    """Replace the large model's scores with the fused rule's logits: ℓ_L + Σ w_i (ℓ_i − ℓ_S−) (or DLF).

    `small_base` and `experts` are loaded causal LMs; pass `tokenizers` to have the shared vocabulary checked,
    and `pad_token_id` so left padding in the first call is recognised (the processor never sees the mask).
    """

    def __init__(
        self,
        small_base: Any,
        experts: list[Any],
        rule: FusionRule | None = None,
        *,
        pad_token_id: int | None = None,
        tokenizers: list[Any] | None = None,
    ) -> None:
        self.rule = rule or FusionRule("eft")
        if self.rule.name not in ("eft", "proxy", "fixed", "dlf"):
            raise ModelopsError(f"FusedLogitsProcessor supports eft, proxy, fixed and dlf, not {self.rule.name}")
        self.width = check_shared_vocabulary({str(i): t for i, t in enumerate(tokenizers)}) if tokenizers else None
        self.runners = [Runner(small_base, "base"), *[Runner(m, "expert") for m in experts]]
        self.coefficients = self.rule.coefficients(len(experts))
        self.dlf = self.rule.dlf_search(len(experts))
        self.pad_token_id = pad_token_id
        self._fed = 0  # ids already given to the small models
        self.weights_trace: list[torch.Tensor] = []

    @torch.inference_mode()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        fresh = input_ids.shape[0] != self.runners[0].batch_size or input_ids.shape[1] != self._fed + 1
        if self._fed == 0 or fresh:  # a new generate() call (or the first): run the prompt
            small = self._prefill(input_ids)
        else:
            small = [r.step(input_ids[:, -1]) for r in self.runners]
        self._fed = input_ids.shape[1]
        width = self.width or min(x.shape[-1] for x in [scores, *small])
        comps = aligned_components([scores.float(), *[s.to(scores.device) for s in small]], width)
        fused, weights = fuse_components(comps, self.coefficients, self.dlf)
        if weights is not None:
            self.weights_trace.append(weights.cpu())
        if fused.shape[-1] < scores.shape[-1]:  # rows that are not real tokens stay unreachable
            pad = fused.new_full((fused.shape[0], scores.shape[-1] - fused.shape[-1]), float("-inf"))
            fused = torch.cat([fused, pad], -1)
        return fused.to(scores.dtype)

    def _prefill(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        if self.pad_token_id is None:
            mask = torch.ones_like(input_ids)
        else:  # left padding: everything before a row's first real token is padding
            mask = (input_ids != self.pad_token_id).long().cummax(-1).values
        return [r.prefill(input_ids, mask) for r in self.runners]

    def reset(self) -> None:
        """Forget the cached prompt; call between `generate` calls (a new prompt batch is detected too)."""
        self._fed = 0
        self.weights_trace = []
