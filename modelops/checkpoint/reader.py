"""Read a checkpoint lazily: names, shapes and dtypes from the safetensors headers, data one tensor at a time.

Nothing here loads a whole model. `.bin` pickles are refused unless the caller opts in, and even then they are
loaded with `weights_only=True` and memory-mapped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelops.checkpoint.source import ResolvedSource, resolve_source
from modelops.errors import CheckpointError, SourceError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"

# safetensors header dtype codes -> torch dtype names
_ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


@dataclass(frozen=True)
class TensorInfo:
    """What the header says about one tensor; no data."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name, e.g. "bfloat16"
    file: str  # file name inside the checkpoint folder

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith(("float", "bfloat"))

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_size(self.dtype)


def dtype_size(dtype: str) -> int:
    if dtype in ("float64", "int64"):
        return 8
    if dtype in ("float32", "int32"):
        return 4
    if dtype in ("float16", "bfloat16", "int16"):
        return 2
    return 1


class Checkpoint:
    """A model on disk: its tensor headers, its config, and lazy access to one tensor at a time."""

    def __init__(self, source: ResolvedSource, *, allow_pickle: bool = False) -> None:
        self.source = source
        self.allow_pickle = allow_pickle
        self.folder, self.weight_files, self.kind = _find_weight_files(source, allow_pickle)
        self.tensors: dict[str, TensorInfo] = self._read_headers()
        self._pickles: dict[str, dict[str, torch.Tensor]] = {}

    @classmethod
    def open(cls, spec: str | Path, *, allow_pickle: bool = False) -> Checkpoint:
        return cls(resolve_source(str(spec)), allow_pickle=allow_pickle)

    # -- metadata ---------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.source.display

    @property
    def config(self) -> dict[str, Any] | None:
        path = self.folder / "config.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: config.json is not valid JSON ({exc})") from None

    @property
    def architectures(self) -> list[str] | None:
        cfg = self.config
        return list(cfg.get("architectures") or []) if cfg else None

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    # -- data ---------------------------------------------------------------------------------------------------
    def get(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Read one tensor, or only its rows [start, stop) (a fresh CPU tensor in its stored dtype)."""
        info = self.tensors.get(name)
        if info is None:
            raise CheckpointError(f"{self.name}: no tensor named {name!r}")
        if self.kind == "pickle":
            t = self._pickle_tensors(info.file)[name]
            return t[rows[0] : rows[1]].clone() if rows is not None else t
        from safetensors import safe_open

        # Opened per read and closed at once: a long-lived mmap would keep every page read so far resident
        # (RSS growing with model size). Parsing a header again costs well under a millisecond.
        try:
            with safe_open(str(self.folder / info.file), framework="pt", device="cpu") as handle:
                if rows is not None:
                    return handle.get_slice(name)[rows[0] : rows[1]]
                return handle.get_tensor(name)
        except Exception as exc:  # safetensors raises its own error types for truncated data
            raise CheckpointError(f"{self.folder / info.file}: cannot read tensor {name!r} ({exc})") from None

    def close(self) -> None:
        self._pickles.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------------------
    def _read_headers(self) -> dict[str, TensorInfo]:
        infos: dict[str, TensorInfo] = {}
        for file in self.weight_files:
            entries = (
                _pickle_header(self.folder / file)
                if self.kind == "pickle"
                else read_safetensors_header(self.folder / file)
            )
            for name, (shape, dtype) in entries.items():
                if name in infos:
                    raise CheckpointError(
                        f"{self.folder}: tensor {name!r} is stored twice ({infos[name].file}, {file})"
                    )
                infos[name] = TensorInfo(name, shape, dtype, file)
        if not infos:
            raise CheckpointError(f"{self.folder}: the weight files hold no tensors")
        return infos

    def _pickle_tensors(self, file: str) -> dict[str, torch.Tensor]:
        if file not in self._pickles:
            self._pickles.clear()  # keep at most one pickle shard in memory
            self._pickles[file] = _load_pickle(self.folder / file)
        return self._pickles[file]


def read_safetensors_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Names -> (shape, dtype) from one file's header, validated by safetensors itself."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            out = {}
            for name in f.keys():  # noqa: SIM118 - safe_open handles are not mappings
                sl = f.get_slice(name)
                out[name] = (tuple(sl.get_shape()), _ST_DTYPES.get(sl.get_dtype(), sl.get_dtype().lower()))
            return out
    except Exception as exc:  # SafetensorError for corrupt/truncated headers
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}); the file is corrupt or truncated, re-download it"
        ) from None


def _find_weight_files(source: ResolvedSource, allow_pickle: bool) -> tuple[Path, list[str], str]:
    path = source.path
    if path.is_file():
        if path.suffix == ".safetensors":
            return path.parent, [path.name], "safetensors"
        raise SourceError(f"{path}: not a folder or a .safetensors file")
    index = path / SAFETENSORS_INDEX
    if index.is_file():
        files = _files_from_index(index)
        return path, files, "safetensors"
    single = sorted(p.name for p in path.glob("*.safetensors"))
    if len(single) == 1:
        return path, single, "safetensors"
    if len(single) > 1:
        raise CheckpointError(
            f"{path}: {len(single)} .safetensors files but no {SAFETENSORS_INDEX}; add the index or keep one file"
        )
    pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
    if pickles:
        if not allow_pickle:
            raise CheckpointError(
                f"{path}: only pickle weights ({', '.join(pickles[:3])}); modelops does not unpickle by default. "
                "Convert to safetensors, or pass --allow-pickle if you trust the file (loaded with weights_only=True)"
            )
        pindex = path / PICKLE_INDEX
        files = _files_from_index(pindex) if pindex.is_file() else pickles
        return path, files, "pickle"
    raise CheckpointError(f"{path}: no .safetensors weights in this folder")


def _files_from_index(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: not a valid weights index ({exc})") from None
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not (index.parent / f).is_file()]
    if missing:
        raise CheckpointError(f"{index}: lists shard(s) that are missing: {', '.join(missing)}")
    return files


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot load with weights_only=True ({exc})") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(sd).__name__}")
    return sd


def _pickle_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    sd = _load_pickle(path)
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()}
