"""Write a checkpoint one tensor at a time.

The shard layout (names, index) comes from huggingface_hub's shard splitter run on the planned sizes, so it
matches what transformers writes. Each shard's safetensors header is known before any data is
computed, so the file is written sequentially — header first, then each tensor's bytes as it is produced — and
peak memory is one tensor, not one shard. Files produced this way are read back by `safe_open` in the tests.

The bytes go to the file from a background thread (the write call releases the GIL), so the disk writes one
block while the next is read and computed: at a 7B shape this is what brings a streamed merge near the disk's
ceiling (docs/benchmarks.md). At most `WRITE_BEHIND_BYTES` wait in the queue (or one larger tensor), and a
shard is drained before it is fsynced and reported, so a shard reported done is on disk whole.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from modelops.checkpoint.reader import SAFETENSORS_INDEX, dtype_size
from modelops.errors import CheckpointError

if TYPE_CHECKING:
    import torch

_TORCH_TO_ST = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


WRITE_BEHIND_BYTES = 64 << 20


class _WriteBehind:
    """One thread that appends queued byte blocks to their files in order; the first error is re-raised to the
    producer at its next call."""

    def __init__(self, limit: int = WRITE_BEHIND_BYTES) -> None:
        self._limit = limit
        self._items: deque[tuple[BinaryIO, memoryview, object]] = deque()
        self._pending = 0
        self._error: BaseException | None = None
        self._stopping = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="modelops-writer", daemon=True)
        self._thread.start()

    def submit(self, file: BinaryIO, data: memoryview, owner: object) -> None:
        """Queue `data` for `file`; `owner` (the tensor the bytes live in) is kept alive until written."""
        with self._cond:
            while self._items and self._pending + data.nbytes > self._limit and self._error is None:
                self._cond.wait()
            self._raise()
            self._items.append((file, data, owner))
            self._pending += data.nbytes
            self._cond.notify_all()

    def drain(self) -> None:
        """Wait until every queued block is in its file."""
        with self._cond:
            while self._items and self._error is None:
                self._cond.wait()
            self._raise()

    def stop(self) -> None:
        """End the thread, dropping what is still queued (after an error, or once drained)."""
        with self._cond:
            self._stopping = True
            self._items.clear()
            self._cond.notify_all()
        self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                file, data, _ = self._items[0]
            try:
                file.write(data)
            except BaseException as exc:  # handed to the producer, which raises it
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                return
            with self._cond:
                self._items.popleft()
                self._pending -= data.nbytes
                self._cond.notify_all()


@dataclass(frozen=True)
class TensorSpec:
    """A tensor that will be written: its name, shape and stored dtype (torch dtype name)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        n = dtype_size(self.dtype)
        for d in self.shape:
            n *= d
        return n


def parse_size(size: int | str) -> int:
    """'5GB' / '500MB' / '10KiB' / 1234 -> bytes (decimal units like huggingface_hub, binary with 'i')."""
    if isinstance(size, int):
        return size
    text = size.strip().upper().replace(" ", "")
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    unit = next((u for u in units if text.endswith(u)), "")
    number, mult = (text[: -len(unit)], units[unit]) if unit else (text, 1)
    try:
        value = int(float(number) * mult)
    except ValueError:
        raise CheckpointError(f"shard size {size!r} is not a size; use e.g. 5GB, 500MB or a number of bytes") from None
    if value <= 0:
        raise CheckpointError(f"shard size {size!r} must be positive")
    return value


def plan_shards(specs: list[TensorSpec], max_shard_size: int | str) -> dict[str, list[TensorSpec]]:
    """Assign tensors to shard files exactly as huggingface_hub names and groups them (from sizes alone)."""
    from huggingface_hub import split_state_dict_into_shards_factory

    by_name = {s.name: s for s in specs}
    split = split_state_dict_into_shards_factory(
        by_name,
        get_storage_size=lambda s: s.nbytes,
        filename_pattern="model{suffix}.safetensors",
        max_shard_size=parse_size(max_shard_size),
    )
    return {fname: [by_name[n] for n in names] for fname, names in split.filename_to_tensors.items()}


class _ShardFile:
    """One safetensors file written sequentially; tensors must arrive in the planned order."""

    def __init__(self, path: Path, specs: list[TensorSpec], metadata: dict[str, str], behind: _WriteBehind) -> None:
        self.path = path
        self._behind = behind
        self.specs = specs
        header: dict[str, object] = {"__metadata__": metadata}
        offset = 0
        for s in specs:
            header[s.name] = {
                "dtype": _TORCH_TO_ST[s.dtype],
                "shape": list(s.shape),
                "data_offsets": [offset, offset + s.nbytes],
            }
            offset += s.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # keep tensor data 8-byte aligned, as safetensors does
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in finish()/abort()
        self._file.write(len(raw).to_bytes(8, "little"))
        self._file.write(raw)
        self._next = 0
        self._partial = 0  # bytes of the current tensor written so far

    def write(self, name: str, tensor: torch.Tensor, *, part: bool = False) -> None:
        """Append a whole tensor, or (part=True) the next block of rows of one; parts must add up exactly. The bytes
        are written later, from the tensor itself: it must not be changed in place afterwards."""
        spec = self.specs[self._next]
        if name != spec.name:
            raise RuntimeError(f"shard writer expected {spec.name!r} next, got {name!r}")
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype != spec.dtype or (not part and tuple(tensor.shape) != spec.shape):
            raise RuntimeError(f"{name}: planned {spec.shape} {spec.dtype}, got {tuple(tensor.shape)} {tensor.dtype}")
        import torch

        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        nbytes = flat.numel() * flat.element_size()
        if self._partial + nbytes > spec.nbytes:
            raise RuntimeError(f"{name}: more data than planned ({self._partial + nbytes} > {spec.nbytes} bytes)")
        if nbytes:
            self._behind.submit(self._file, memoryview(flat.view(torch.uint8).numpy()), flat)
        self._partial += nbytes
        if self._partial == spec.nbytes:
            self._next += 1
            self._partial = 0

    @property
    def tensors_done(self) -> int:
        return self._next

    def finish(self) -> None:
        if self._next != len(self.specs):
            missing = self.specs[self._next].name
            raise RuntimeError(f"{self.path.name}: closed before tensor {missing!r} was written")
        self._behind.drain()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def abort(self) -> None:
        self._file.close()


class CheckpointWriter:
    """Writes planned tensors into `folder` in plan order, then the index when sharded."""

    def __init__(
        self,
        folder: Path,
        specs: list[TensorSpec],
        *,
        max_shard_size: int | str = "5GB",
        metadata: dict[str, str] | None = None,
        done: set[str] | frozenset[str] = frozenset(),
        on_shard: Callable[[str], None] | None = None,
    ) -> None:
        """`done`: shard files already complete in `folder` (a resumed run), skipped; `on_shard(file)` is called
        once each new shard is closed and fsynced."""
        self.folder = folder
        self.shards = plan_shards(specs, max_shard_size)
        self.metadata = {"format": "pt", **(metadata or {})}
        self._all = [(fname, s) for fname, ss in self.shards.items() for s in ss]
        self._queue = [(fname, s) for fname, s in self._all if fname not in done]
        self._on_shard = on_shard
        self._pos = 0
        self._current: _ShardFile | None = None
        self._current_name: str | None = None
        self._behind = _WriteBehind()

    @property
    def order(self) -> list[TensorSpec]:
        """Tensors in the order they must be written."""
        return [s for _, s in self._queue]

    @property
    def total_bytes(self) -> int:
        return sum(s.nbytes for _, s in self._all)

    def write(self, name: str, tensor: torch.Tensor, *, part: bool = False) -> None:
        """Append the next tensor in plan order, whole or (part=True) as consecutive blocks of rows."""
        fname, _ = self._queue[self._pos]
        if fname != self._current_name:
            self._close_current()
            self._current = _ShardFile(self.folder / fname, self.shards[fname], self.metadata, self._behind)
            self._current_name = fname
        assert self._current is not None
        before = self._current.tensors_done
        self._current.write(name, tensor, part=part)
        self._pos += self._current.tensors_done - before

    def _close_current(self) -> None:
        if self._current is not None:
            self._current.finish()
            if self._on_shard is not None and self._current_name is not None:
                self._on_shard(self._current_name)
            self._current = None

    def finish(self) -> list[str]:
        if self._pos != len(self._queue):
            raise RuntimeError(f"writer closed after {self._pos} of {len(self._queue)} tensors")
        self._close_current()
        self._behind.stop()
        files = list(self.shards)
        if len(files) > 1:
            index = {
                "metadata": {"total_size": self.total_bytes},
                "weight_map": {s.name: fname for fname, s in sorted(self._all, key=lambda x: x[1].name)},
            }
            (self.folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
            files.append(SAFETENSORS_INDEX)
        return files

    def abort(self) -> None:
        self._behind.stop()
        if self._current is not None:
            self._current.abort()
