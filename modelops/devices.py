"""Device choice in one place: CUDA when present and asked for (or auto), CPU otherwise."""

from __future__ import annotations

from modelops.errors import ModelopsError


def pick_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelopsError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise ModelopsError(f"--device {name!r}: expected cpu, cuda, cuda:N or auto")
    return name
