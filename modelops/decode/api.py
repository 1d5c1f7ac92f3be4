"""One call from a `DecodeSpec` and prompt rows to result rows: what `modelops fuse-decode` and eval use."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelops.decode.codecoder import CoDecoder
from modelops.decode.engine import FusionRule
from modelops.decode.spec import SEARCH_RULES, DecodeSpec
from modelops.decode.types import Generation
from modelops.devices import pick_device

logger = logging.getLogger(__name__)


@dataclass
class DecodeRun:
    """Result rows plus what a user wants to know about the run."""

    rows: list[dict[str, Any]]
    seconds: float
    new_tokens: int
    stats: dict[str, Any] = field(default_factory=dict)


def build_decoder(
    spec: DecodeSpec,
    *,
    device: str = "auto",
    dtype: str | None = None,
    device_map: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    parallel: bool = False,
) -> CoDecoder:
    """The co-decoder for `spec`: every model loaded once, a KV cache each, the rule's fusion. Close it when done.
    `device`: cpu, cuda, cuda:N or auto (the GPU when there is one)."""
    rule = FusionRule.from_spec(spec, spec.rule)
    return CoDecoder.load(
        spec.large,
        spec.small_base if spec.rule != "single" else None,
        spec.experts if spec.rule != "single" else (),
        rule,
        chat_template_for=spec.chat_template_for,
        device=pick_device(device),
        dtype=dtype,
        device_map=device_map,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        check_vocabulary=spec.rule not in SEARCH_RULES,
        parallel=parallel,
    )


def run_decode(
    decoder: CoDecoder,
    spec: DecodeSpec,
    prompt_rows: list[dict[str, Any]],
    *,
    batch_size: int = 8,
    score: bool = False,
    on_batch: Callable[[int], None] | None = None,
    continuous: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> DecodeRun:
    """Generate (or score) every prompt row under the spec's rule; `continuous`: see `CoDecoder.generate`.
    `on_row(row)` gets each result row as soon as it is finished (a scored batch, a generated prompt)."""
    prompts = [r["prompt"] for r in prompt_rows]
    ids = [r["id"] for r in prompt_rows]
    start = time.perf_counter()
    stats: dict[str, Any] = {}
    if score:
        rows = []
        for lo in range(0, len(prompt_rows), batch_size):
            part = prompt_rows[lo : lo + batch_size]
            logps = decoder.score([r["prompt"] for r in part], [r["continuation"] for r in part], batch_size=batch_size)
            for r, lp in zip(part, logps, strict=True):
                rows.append({"id": r["id"], "logprob": float(sum(lp)), "num_tokens": len(lp), "token_logprobs": lp})
                if on_row is not None:
                    on_row(rows[-1])
            if on_batch is not None:
                on_batch(len(part))
        return DecodeRun(rows, time.perf_counter() - start, 0, stats)
    report = (lambda g: on_row(generation_row(g, spec))) if on_row is not None else None
    gens = decoder.generate(
        prompts, spec.sampling, ids=ids, batch_size=batch_size, on_batch=on_batch, continuous=continuous,
        on_generation=report,
    )  # fmt: skip
    stats = dict(decoder.last_stats)
    rows = [generation_row(g, spec) for g in gens]
    return DecodeRun(rows, time.perf_counter() - start, sum(g.num_tokens for g in gens), stats)


def generation_row(gen: Generation, spec: DecodeSpec) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": gen.id,
        "text": gen.text,
        "num_tokens": gen.num_tokens,
        "finish_reason": gen.finish_reason,
    }
    if gen.weights is not None and spec.rule == "dlf":
        row["alpha_trace"] = [alpha_step(w) for w in gen.weights]
    if gen.score is not None:
        row["score"] = gen.score
    return row


def alpha_step(weights: list[float]) -> dict[str, Any]:
    """One DLF step: which expert was active (None when α = 0) and its α; with several active (`--dlf-mode
    joint`), the one with the largest |α| and every expert's weight under "weights"."""
    active = [i for i, w in enumerate(weights) if w != 0.0]
    if not active:
        return {"expert": None, "alpha": 0.0}
    top = max(active, key=lambda i: abs(weights[i]))
    step: dict[str, Any] = {"expert": top, "alpha": round(weights[top], 6)}
    if len(active) > 1:
        step["weights"] = [round(w, 6) for w in weights]
    return step
