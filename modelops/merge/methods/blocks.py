"""Row blocks: methods that need a whole tensor's statistics still do their float32 work a block at a time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

BLOCK_ELEMS = 1 << 19  # entries per block (2 MB per float32 temporary: TIES runs ~20% faster than at 16 MB)


def row_slices(rows: int, row_elems: int, block_elems: int = BLOCK_ELEMS) -> Iterator[slice]:
    """Consecutive slices of dimension 0 holding at most `block_elems` entries each (at least one row)."""
    per = max(1, block_elems // max(1, row_elems))
    for start in range(0, rows, per):
        yield slice(start, min(rows, start + per))


def as_rows(tensor: torch.Tensor) -> torch.Tensor:
    """The (rows, cols) view that row blocks cut: the last dimension is a row; 0-D and 1-D tensors are one row."""
    cols = tensor.shape[-1] if tensor.dim() > 1 else max(1, tensor.numel())
    return tensor.reshape(-1, cols)


def gather_rows(blocks: Iterable[torch.Tensor], shape: torch.Size, device: torch.device) -> torch.Tensor:
    """One float32 tensor of `shape` from the row blocks of its (rows, cols) view, filled in place as they come."""
    import torch

    out = torch.empty(shape, dtype=torch.float32, device=device)
    rows, start = as_rows(out), 0
    for block in blocks:
        rows[start : start + block.shape[0]] = block
        start += block.shape[0]
    return out
