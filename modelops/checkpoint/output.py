"""An output folder that appears only when complete.

Everything is written into a hidden temporary folder beside the target and renamed into place at the end, so a
killed run leaves no folder that looks like a finished checkpoint, and `--overwrite` never lets stale shards of
an earlier run survive. Inputs are never written to: the target may not be, contain, or sit inside an input.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from modelops.errors import OutputError

logger = logging.getLogger(__name__)

TMP_MARK = ".modelops-tmp-"

# Non-weight files a transformers checkpoint needs, copied from the input that defines the output's identity.
SUPPORT_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
)


def check_output_location(target: Path, inputs: list[Path], *, overwrite: bool) -> None:
    """Refuse outputs that would touch an input, or clobber a folder without --overwrite."""
    target = target.expanduser().resolve()
    for src in inputs:
        src = src.resolve()
        src_dir = src if src.is_dir() else src.parent
        if target == src_dir or src_dir in target.parents:
            raise OutputError(f"output {target} is inside input {src_dir}; choose an output folder outside every input")
        if target in src_dir.parents:
            raise OutputError(f"input {src_dir} is inside output {target}; choose another output folder")
    if target.exists() and not target.is_dir():
        raise OutputError(f"output {target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise OutputError(f"output folder {target} is not empty; pass --overwrite to replace it")


class AtomicOutput:
    """`with AtomicOutput(target) as tmp:` write into tmp; on success tmp becomes target, on failure it is removed."""

    def __init__(self, target: Path, *, overwrite: bool = False) -> None:
        self.target = target.expanduser().resolve()
        self.overwrite = overwrite
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.target.parent, self.target.name)
        prefix = f".{self.target.name}{TMP_MARK}{os.getpid()}-"
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=self.target.parent))
        return self.tmp

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        self.commit()

    def commit(self) -> None:
        assert self.tmp is not None
        old = None
        if self.target.exists():
            if not self.overwrite and any(self.target.iterdir()):
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise OutputError(f"output folder {self.target} appeared while writing; pass --overwrite to replace it")
            old = self.target.parent / f".{self.target.name}{TMP_MARK}{os.getpid()}-old"
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def remove_stale_temps(folder: Path, name: str = "*") -> None:
    """Temp folders that killed runs left in `folder` for the target `name` (default: for any target) are removed
    once their owner pid is gone. A build that writes many targets sweeps them all, also those it won't rewrite."""
    for p in folder.glob(f".{name}{TMP_MARK}*"):
        pid = p.name.split(TMP_MARK, 1)[1].split("-")[0]
        if p.is_dir() and not (pid.isdigit() and pid_alive(int(pid))):
            logger.info("removing leftover %s from an interrupted run", p)
            shutil.rmtree(p, ignore_errors=True)


def copy_support_files(
    src: Path, dst: Path, *, dtype: str | None = None, config: dict[str, Any] | None = None
) -> list[str]:
    """Copy config/tokenizer/generation files from `src`; set the config's dtype to what was written, and any
    `config` keys (a stacked model's layer count and per-layer lists)."""
    copied = []
    for name in SUPPORT_FILES:
        f = src / name
        if f.is_file():
            shutil.copyfile(f, dst / name)
            copied.append(name)
    cfg_path = dst / "config.json"
    if (dtype or config) and cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        keys = [k for k in ("dtype", "torch_dtype") if k in cfg] or ["dtype"]
        for k in keys if dtype else []:
            cfg[k] = dtype
        cfg.update(config or {})
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return copied


def pid_alive(pid: int) -> bool:
    """Whether the process that owns a temp folder or lock still runs (this process never counts: what it left
    behind is from an earlier run in it that failed to clean up)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
