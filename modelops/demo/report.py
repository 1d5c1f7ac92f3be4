"""What every demo preset reports: one line per claim, with what was measured and the verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DemoLine:
    """One row of the demo table."""

    section: str  # weights | decode
    claim: str  # the paper / operation and what it claims
    task: str
    values: str  # "system value, system value, …"
    verdict: str
    seconds: float


@dataclass
class DemoReport:
    zoo: Path
    preset: str
    lines: list[DemoLine] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
