"""Row blocks: methods that need a whole tensor's statistics still do their float32 work a block at a time."""

from __future__ import annotations

from collections.abc import Iterator

BLOCK_ELEMS = 1 << 22  # entries per block (16 MB per float32 temporary)


def row_slices(rows: int, row_elems: int, block_elems: int = BLOCK_ELEMS) -> Iterator[slice]:
    """Consecutive slices of dimension 0 holding at most `block_elems` entries each (at least one row)."""
    per = max(1, block_elems // max(1, row_elems))
    for start in range(0, rows, per):
        yield slice(start, min(rows, start + per))
