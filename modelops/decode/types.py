"""What the decode loops hand back to callers, below every loop so that each can build it without importing another."""

from __future__ import annotations

from collections.abc import Callable
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


class RowResults:
    """Each prompt's Generation, built once from its loop's output (decoding the text is not free), handed to
    `report` as soon as the prompt finishes, and listed in prompt order at the end (`ordered`)."""

    def __init__(self, make: Callable[[int, Any], Generation], report: Callable[[Generation], None] | None) -> None:
        self.make, self.report = make, report
        self.made: dict[int, Generation] = {}

    def get(self, k: int, out: Any) -> Generation:
        if k not in self.made:
            self.made[k] = self.make(k, out)
        return self.made[k]

    @property
    def on_row(self) -> Callable[[int, Any], None] | None:
        """What a loop calls when prompt k is finished (None when nobody is told)."""
        if self.report is None:
            return None
        report = self.report
        return lambda k, out: report(self.get(k, out))

    def ordered(self, outs: list[Any]) -> list[Generation]:
        return [self.get(k, out) for k, out in enumerate(outs)]
