"""Each zoo model's own held-out scores (greedy decoding), recorded in the manifest.

Exact-match tasks report three numbers so knowledge and format can be told apart (docs/zoo.md):
`exact` (answer then `<eos>`: the tuned format), `answer` (right answer, ended by `<eos>` or `.`: what a base
knows), `first_token`. The review task reports the gold reward and the fluency rate beside it.
"""

from __future__ import annotations

from typing import Any

from modelops.runtime.generate import generate
from modelops.zoo.world import FLUENCY_PENALTY, reward

MAX_NEW = {"facts": 4, "addition": 5, "review": 8}


def score_task(model: Any, tok: Any, task: str, rows: list[dict]) -> dict[str, float]:
    """Greedy scores of one model on one task's held-out rows."""
    prompts = [tok(r["prompt"]).input_ids for r in rows]
    outs = generate(model, prompts, max_new=MAX_NEW[task], eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    if task == "review":
        texts = [tok.decode(o, skip_special_tokens=True) for o in outs]
        ended = [bool(o) and o[-1] == tok.eos_token_id for o in outs]
        rewards = [
            reward(r["prompt"], t) if e else reward(r["prompt"], t + " ...")
            for r, t, e in zip(rows, texts, ended, strict=True)
        ]
        on_topic = [float(x != FLUENCY_PENALTY and x == int(x)) for x in rewards]  # off-topic costs 0.5
        return {
            "reward": _mean(rewards),
            "on_topic": _mean(on_topic),
            "fluency": _mean([float(x != FLUENCY_PENALTY) for x in rewards]),
            "n": len(rows),
        }
    dot = tok.convert_tokens_to_ids(".")
    exact, answer, first = [], [], []
    for r, o in zip(rows, outs, strict=True):
        ref = tok(r["reference"], add_special_tokens=False).input_ids
        exact.append(float(o == [*ref, tok.eos_token_id]))
        answer.append(float(o[: len(ref)] == ref and len(o) > len(ref) and o[len(ref)] in (tok.eos_token_id, dot)))
        first.append(float(bool(o) and o[0] == ref[0]))
    return {"exact": _mean(exact), "answer": _mean(answer), "first_token": _mean(first), "n": len(rows)}


def score_model(model: Any, tok: Any, evals: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    return {task: score_task(model, tok, task, rows) for task, rows in evals.items()}


def _mean(xs: list[float]) -> float:
    return round(sum(xs) / len(xs), 4) if xs else float("nan")
