"""Loading a causal LM and its tokenizer: local folder or `org/name@rev`, safetensors only unless asked, no remote
code unless asked. Shared by the co-decoder, eval and the benchmarks."""

from __future__ import annotations

from typing import Any

from modelops.errors import ModelopsError

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16"}


def load_causal_lm(
    spec: str,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    device_map: str | None = None,
    max_memory: dict[int | str, int] | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) for a folder or Hub id; weights format checked before loading.
    `max_memory` caps what a `device_map` may put on each device (accelerate's keys: GPU index or "cpu")."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelops.checkpoint import Checkpoint

    ckpt = Checkpoint.open(spec, allow_pickle=allow_pickle)  # resolves, refuses pickles unless allowed
    folder = ckpt.folder
    if ckpt.config is None:
        raise ModelopsError(f"{spec}: no config.json in {folder}; fuse-decode needs a transformers model folder")
    torch_dtype: Any = "auto"
    if dtype:
        if dtype not in DTYPES:
            raise ModelopsError(f"--dtype {dtype!r}: expected one of float32, bfloat16, float16")
        torch_dtype = getattr(torch, DTYPES[dtype])
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if device_map:
        kwargs["device_map"] = device_map
        if max_memory is not None:
            kwargs["max_memory"] = max_memory
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=not allow_pickle or None, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelopsError(
            f"{spec}: transformers could not load it as a causal LM ({str(exc).splitlines()[0]})"
        ) from None
    if not device_map:
        model.to(device)
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelopsError(
            f"{spec}: no usable tokenizer in {folder} ({str(exc).splitlines()[0]}); save one with the model"
        ) from None
    return model, tokenizer


def weight_bytes(spec: str, dtype: str | None = None, *, allow_pickle: bool = False) -> int:
    """Bytes a model's weights take once loaded: as stored, or at `dtype` (float32, bfloat16, float16)."""
    from modelops.checkpoint import Checkpoint
    from modelops.checkpoint.reader import dtype_size

    ckpt = Checkpoint.open(spec, allow_pickle=allow_pickle)
    if not dtype:
        return ckpt.nbytes
    per = dtype_size(DTYPES.get(dtype, dtype))
    return sum(
        info.numel * (per if info.dtype.startswith(("float", "bfloat")) else dtype_size(info.dtype))
        for info in ckpt.tensors.values()
    )


def memory_beside(available: dict[int | str, int], reserve: int, device: str) -> dict[int | str, int]:
    """accelerate's `max_memory` for the large model's device map with `reserve` bytes kept free on `device`, where
    the small models go: without it the map fills that GPU first and the small models then find no room."""
    key: int | str = (
        "cpu" if device == "cpu" else int(device.partition(":")[2] or 0) if device.startswith("cuda") else device
    )
    if key not in available:
        return dict(available)
    return {**available, key: max(0, available[key] - reserve)}
