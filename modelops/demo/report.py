"""What every demo preset reports: one line per claim, with what was measured and the verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelops.api import Claim


@dataclass
class DemoLine:
    """One row of the demo table."""

    section: str  # weights | decode
    claim: str  # the paper / operation and what it claims
    task: str
    values: str  # "system value, system value, …"
    verdict: str
    seconds: float
    claims: list[Claim] = field(default_factory=list)  # what the verdict was computed from (to pool seeds)
    sampled: bool = False  # its systems sample, so a sampling seed changes it

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "claims": [c.to_dict() for c in self.claims]}


@dataclass
class DemoReport:
    zoo: Path
    preset: str
    lines: list[DemoLine] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def tally(self) -> str:
        """How the claims came out ("5 hold, 2 fail, 7 inconclusive"), the setup line left out."""
        from modelops import api

        return api.tally([line.verdict for line in self.lines if line.section != "setup"])

    def caveat(self) -> str:
        """What the tally can and cannot say at this size."""
        n = self.details.get("rows_per_task")
        size = f" at n = {n} prompts per task" if n else ""
        if self.preset == "tiny":
            return "Each check compares the written model's logits with the same math done in memory."
        if self.preset == "full":
            return (
                f"Each verdict is a paired bootstrap test{size} (one-sided 95%); inconclusive means too close to call."
            )
        return (
            f"This preset is small{size}: most gaps are not significant, so inconclusive verdicts are expected and say "
            "nothing against the papers; `--preset full` (and several seeds) is what can decide them."
        )
