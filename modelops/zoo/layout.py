"""What the build (`build`) and its steps (`jobs`) both need: a model folder's layout and each role's seed.

Kept below both so that `build` → `jobs` is the only arrow between them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MODEL_META = "zoo_model.json"  # written with the weights, inside the same atomic folder: its presence = finished


def sub_seed(seed: int, role: str) -> int:
    """Each model's randomness depends on (seed, role) only, so resumed and fresh builds are identical."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{role}".encode()).digest()[:4], "little")


def is_complete(folder: Path) -> bool:
    return (folder / MODEL_META).is_file() and (folder / "model.safetensors").is_file()


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
