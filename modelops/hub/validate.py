"""Checks a folder must pass before it is published: it loads, it is complete, and it leaks nothing.

Everything here is local and read-only. Each failure is one `ModelopsError` line naming the file and the fix.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from modelops.checkpoint.output import TMP_MARK
from modelops.checkpoint.resume import PARTIAL_MARK
from modelops.errors import CheckpointError, OutputError

logger = logging.getLogger(__name__)

STRAY_PATTERNS = (
    f"*{TMP_MARK}*",
    f"*{PARTIAL_MARK}*",
    "*.tmp",
    "*.lock",
    "__pycache__",
    "*.pyc",
    ".DS_Store",
    "*.incomplete",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".msgpack", ".h5")
TEXT_SCAN_LIMIT = 50_000_000  # bytes: larger non-weight files are not scanned for leaks
# A Hugging Face token shape, and absolute paths that only make sense on the machine that wrote them.
HF_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{30,}")
LOCAL_PATH_RE = re.compile(r"(?<![\w.\-/~])(?:/(?:tmp|home|root|Users|private/var)/|[A-Za-z]:\\Users\\)")


@dataclass(frozen=True)
class FolderReport:
    """What was checked, for the push summary."""

    kind: str  # "transformers" or "peft"
    files: list[str]  # relative posix paths that will be uploaded
    total_bytes: int
    tensors: int


def validate_folder(folder: Path, *, token: str | None = None) -> FolderReport:
    """Raise on the first problem that would make the uploaded repo broken or leak local data."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OutputError(f"{folder}: not a folder; push expects the output folder of a modelops command")
    files = _list_files(folder)
    _check_stray(folder, files)
    kind, tensors = _check_loadable(folder, files)
    _check_leaks(folder, files, token)
    total = sum((folder / f).stat().st_size for f in files)
    return FolderReport(kind=kind, files=files, total_bytes=total, tensors=tensors)


def _list_files(folder: Path) -> list[str]:
    out = []
    for root, dirs, names in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        dirs[:] = sorted(d for d in dirs if d != ".git" and not (rel_root == Path(".") and d == ".cache"))
        for d in dirs:
            if any(fnmatch.fnmatch(d, p) for p in STRAY_PATTERNS):
                raise OutputError(
                    f"{folder / rel_root / d}: stray temporary folder; remove it (or re-run the command) before pushing"
                )
        out += [(rel_root / n).as_posix() for n in sorted(names)]
    if not out:
        raise OutputError(f"{folder}: the folder is empty; nothing to push")
    return out


def _check_stray(folder: Path, files: list[str]) -> None:
    for f in files:
        name = f.rsplit("/", 1)[-1]
        if any(fnmatch.fnmatch(name, p) for p in STRAY_PATTERNS):
            raise OutputError(
                f"{folder / f}: stray temporary file (left by an interrupted run?); delete it before pushing"
            )


def _check_loadable(folder: Path, files: list[str]) -> tuple[str, int]:
    from modelops.checkpoint import Checkpoint

    top = set(files)
    is_adapter = "adapter_config.json" in top
    kind = "peft" if is_adapter else "transformers"
    cfg_name = "adapter_config.json" if is_adapter else "config.json"
    if cfg_name not in top:
        raise CheckpointError(
            f"{folder}: no config.json (or adapter_config.json for a PEFT adapter); the repo would not load"
        )
    try:
        json.loads((folder / cfg_name).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{folder / cfg_name}: not valid JSON ({exc}); the repo would not load") from None
    ck = Checkpoint.open(folder)  # reads every safetensors header; checks the index names existing shards
    with ck:
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            for name, file in weight_map.items():
                held = ck.tensors.get(name)
                if held is None or held.file != file:
                    where = f"it is in {held.file}" if held else "no listed shard holds it"
                    raise CheckpointError(f"{index}: says {name!r} is in {file} but {where}; the index is stale")
            unlisted = sorted(set(ck.tensors) - set(weight_map))
            if unlisted:
                raise CheckpointError(f"{index}: does not list tensor {unlisted[0]!r}; the index is stale")
        extra = sorted({f for f in top if f.endswith(".safetensors")} - set(ck.weight_files))
        if extra:
            raise CheckpointError(
                f"{folder}: {', '.join(extra[:3])} not listed in the weights index; "
                "delete leftover shards from an earlier run before pushing"
            )
        if is_adapter:
            bad = [n for n in ck.tensors if not n.startswith("base_model.model.")]
            if bad:
                raise CheckpointError(
                    f"{folder}: adapter key {bad[0]!r} lacks the 'base_model.model.' prefix; PEFT would ignore it"
                )
        return kind, len(ck.tensors)


def _check_leaks(folder: Path, files: list[str], token: str | None) -> None:
    home = str(Path.home())
    needles = [s for s in {home, str(folder.resolve()), str(folder.absolute())} if len(s) > 1]
    for f in files:
        path = folder / f
        if f.endswith(WEIGHT_SUFFIXES) or path.stat().st_size > TEXT_SCAN_LIMIT:
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary, not text
        text = data.decode("utf-8", errors="replace")
        if token and token in text:
            raise OutputError(f"{path}: contains your Hugging Face token; remove it before pushing")
        m = HF_TOKEN_RE.search(text)
        if m:
            line = text.count("\n", 0, m.start()) + 1
            raise OutputError(f"{path}:{line}: contains something shaped like a Hugging Face token (hf_...); remove it")
        for needle in needles:
            pos = text.find(needle)
            if pos >= 0:
                line = text.count("\n", 0, pos) + 1
                raise OutputError(f"{path}:{line}: contains the local path {needle}; replace it with a relative name")
        m = LOCAL_PATH_RE.search(text)
        if m:
            line = text.count("\n", 0, m.start()) + 1
            snippet = re.split(r"[\s\"'`,;)\]}]", text[m.start() : m.start() + 60])[0]
            raise OutputError(f"{path}:{line}: contains an absolute local path ({snippet}); replace it before pushing")
