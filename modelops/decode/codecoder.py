"""`CoDecoder`: the public face of the decode half. `generate` runs the loop the rule asks for.

Chunk-level beam search and best-of-N (`search`), speculative up-scaling (`speculative`) and the lock-step
sampler (`engine`) are three loops over the same members and rule. The first two take an engine decoder, so the
choice between them lives here, above all three, and the engine never imports the loops that build on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from modelops.decode.engine import SEARCH_RULES, LockstepDecoder
from modelops.decode.sampling import SamplingConfig
from modelops.decode.search import run_search
from modelops.decode.speculative import speculative_generate
from modelops.decode.types import Generation


class CoDecoder(LockstepDecoder):
    """Several causal LMs sharing a vocabulary (or, for cbs/bon, not), decoded under one fusion rule.

    Members are ordered [large, small base, experts…]; with the rule "single" only the large model runs.
    """

    def generate(
        self,
        prompts: Sequence[str | list[int]],
        sampling: SamplingConfig | None = None,
        *,
        ids: Sequence[Any] | None = None,
        batch_size: int = 8,
        on_batch: Callable[[int], None] | None = None,
        continuous: bool = True,
        on_generation: Callable[[Generation], None] | None = None,
    ) -> list[Generation]:
        """Fused generation for every prompt, at most `batch_size` rows at a time (cbs/bon: prompts, each with
        W·K or N rows). `continuous`: a finished row's place goes to the next prompt at once (cbs/bon: a finished
        prompt's, at the next chunk boundary). `on_batch(k)`: k more prompts are done; `on_generation(g)`: one
        prompt's result as soon as it is finished."""
        sampling = sampling or SamplingConfig()
        sampling.validate()
        if self.rule.name in SEARCH_RULES:
            gens, self.last_stats = run_search(
                self, sampling, prompts, ids=ids, batch_size=batch_size, on_batch=on_batch, continuous=continuous,
                on_generation=on_generation,
            )  # fmt: skip
            return gens
        if self.rule.speculative:
            gens, stats = speculative_generate(
                self, prompts, sampling, self.rule.speculative, ids=ids, batch_size=batch_size, on_batch=on_batch,
                schedule=self.rule.speculative_schedule, continuous=continuous, on_generation=on_generation,
            )  # fmt: skip
            self.last_stats = dict(vars(stats))
            return gens
        return super().generate(
            prompts, sampling, ids=ids, batch_size=batch_size, on_batch=on_batch, continuous=continuous,
            on_generation=on_generation,
        )  # fmt: skip
