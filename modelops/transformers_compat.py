"""What moved between transformers releases that modelops supports (pyproject: transformers >= 4.56)."""

from __future__ import annotations

import inspect
from typing import Any


def cache_keyword(model: Any) -> str:
    """The forward argument that takes the KV cache: `cache` in transformers 5.x, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
