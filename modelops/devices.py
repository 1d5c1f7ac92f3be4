"""Device choice in one place: CUDA when present and asked for (or auto), CPU otherwise."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelops.errors import ModelopsError

if TYPE_CHECKING:
    import torch


def pick_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelopsError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise ModelopsError(f"--device {name!r}: expected cpu, cuda, cuda:N or auto")
    return name


def input_device(model: Any) -> torch.device:
    """Where a loaded model takes its input ids: its input embedding's device or, when accelerate offloaded that
    embedding to the CPU or disk (its weight is then on `meta`), the device its hook computes on."""
    import torch

    embedding = model.get_input_embeddings()
    weight = getattr(embedding, "weight", None)
    if weight is not None and weight.device.type != "meta":
        return weight.device
    device = getattr(getattr(embedding, "_hf_hook", None), "execution_device", None)
    if device is not None:
        return torch.device(device)
    return next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
