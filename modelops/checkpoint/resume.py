"""An output folder that appears only when complete, and whose finished shards survive an interruption.

Weights are written into one hidden folder beside the target (`.NAME.modelops-partial`). Each shard, once
closed and fsynced, is recorded in `resume.json` there with its size and SHA-256, under a key for the plan (the
recipe, the inputs' content fingerprints and the shard layout). A killed or interrupted run leaves that folder;
the same command with `--resume` keeps every recorded shard that still verifies and writes only the rest. A run
without `--resume`, or with a different plan, never mixes: the first starts over, the second is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

from modelops.checkpoint.output import AtomicOutput, pid_alive
from modelops.checkpoint.writer import TensorSpec, plan_shards
from modelops.errors import Interrupted, OutputError

logger = logging.getLogger(__name__)

PARTIAL_MARK = ".modelops-partial"
STATE_FILE = "resume.json"
LOCK_FILE = "owner.pid"


def plan_key(parts: dict[str, Any], specs: list[TensorSpec], shard_size: int | str) -> str:
    """A hash of what a resumed run must share with the interrupted one: the caller's `parts` (recipe, input
    fingerprints...), the shard layout of `specs`, and the modelops version (the math may change between them)."""
    from modelops.version import __version__

    layout = {
        fname: [[s.name, list(s.shape), s.dtype] for s in group]
        for fname, group in plan_shards(specs, shard_size).items()
    }
    key = {**parts, "layout": layout, "version": __version__}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def partial_folder(target: Path) -> Path:
    target = target.expanduser().resolve()
    return target.parent / f".{target.name}{PARTIAL_MARK}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


class ResumableOutput(AtomicOutput):
    """`with ResumableOutput(target, plan_key=..., resume=...) as tmp:` — `done` lists the shards already there.

    On success the folder is renamed into place (as AtomicOutput). On KeyboardInterrupt (Ctrl-C, SIGTERM) it is
    kept for `--resume`; on any other failure it is removed, as its contents may be what failed.
    """

    def __init__(
        self, target: Path, *, plan_key: str, resume: bool = False, overwrite: bool = False, unit: str = "shard"
    ) -> None:
        super().__init__(target, overwrite=overwrite)
        self.unit = unit  # what a recorded file is, for the interruption message
        self.plan_key = plan_key
        self.resume = resume
        self.done: dict[str, dict[str, Any]] = {}  # shard file -> {"bytes", "sha256"}
        self.extra: dict[str, Any] = {}  # running values a resumed run needs (e.g. metrics), saved per shard

    def __enter__(self) -> Path:
        folder = partial_folder(self.target)
        folder.parent.mkdir(parents=True, exist_ok=True)
        if folder.exists():
            self._claim(folder)
            if self.resume:
                self._load(folder)
            else:
                logger.info("discarding the unfinished output %s (run with --resume to continue it)", folder)
                shutil.rmtree(folder)
        elif self.resume:
            logger.warning("nothing to resume for %s; starting from the beginning", self.target)
        folder.mkdir(exist_ok=True)
        (folder / LOCK_FILE).write_text(str(os.getpid()))
        self.tmp = folder
        return folder

    def _claim(self, folder: Path) -> None:
        """Refuse a folder that a live run is still writing."""
        lock = folder / LOCK_FILE
        pid = lock.read_text().strip() if lock.is_file() else ""
        if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
            raise OutputError(f"another modelops run (pid {pid}) is writing {self.target}; wait for it or stop it")

    def _load(self, folder: Path) -> None:
        state_path = folder / STATE_FILE
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        if state.get("plan") != self.plan_key:
            raise OutputError(
                f"cannot resume {self.target}: its unfinished run was for other inputs or another recipe; "
                "run the command without --resume to start over"
            )
        for name, rec in state.get("shards", {}).items():
            path = folder / name
            if path.is_file() and path.stat().st_size == rec["bytes"] and file_sha256(path) == rec["sha256"]:
                self.done[name] = rec
            else:
                logger.warning("%s of the unfinished run does not verify; computing it again", name)
        self.extra = state.get("extra", {}) if self.done else {}
        for p in folder.iterdir():  # everything not verified (a half-written shard, stale files) goes
            if p.name not in self.done and p.name not in (STATE_FILE, LOCK_FILE):
                p.unlink() if p.is_file() else shutil.rmtree(p)

    def record(self, shard: str, extra: dict[str, Any] | None = None) -> None:
        """Note a closed, fsynced shard (and the running values after it) so a later run can keep it."""
        assert self.tmp is not None
        path = self.tmp / shard
        self.done[shard] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        if extra is not None:
            self.extra = extra
        state = {"plan": self.plan_key, "shards": self.done, "extra": self.extra}
        tmp_state = self.tmp / (STATE_FILE + ".new")
        tmp_state.write_text(json.dumps(state, indent=1, sort_keys=True))
        os.replace(tmp_state, self.tmp / STATE_FILE)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.tmp is not None
        if exc_type is None:
            for name in (STATE_FILE, LOCK_FILE):
                (self.tmp / name).unlink(missing_ok=True)
            self.commit()
        elif issubclass(exc_type, KeyboardInterrupt):
            (self.tmp / LOCK_FILE).unlink(missing_ok=True)  # kept for --resume
            raise Interrupted(
                f"Interrupted: {len(self.done)} finished {self.unit}(s) kept in {self.tmp}; run the same command with "
                "--resume to continue",
                getattr(exc, "code", 130),
            ) from None
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
