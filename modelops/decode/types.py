"""What the decode loops hand back to callers, below every loop so that each can build it without importing another."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEARCH_RULES = ("cbs", "bon")  # weak-to-strong search: text-level guidance, no shared vocabulary needed


@dataclass
class Generation:
    """One prompt's result, as written to results.jsonl."""

    id: Any
    text: str
    num_tokens: int
    finish_reason: str
    weights: list[list[float]] | None = None
    score: float | None = None
    token_ids: list[int] = field(default_factory=list)  # every new token, the stop token included
