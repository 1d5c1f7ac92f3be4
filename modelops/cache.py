"""Where modelops keeps what it builds once per machine (the zoo, the DLF kernel)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$MODELOPS_CACHE`, else `~/.cache/modelops`."""
    return Path(os.environ.get("MODELOPS_CACHE") or "~/.cache/modelops").expanduser()
