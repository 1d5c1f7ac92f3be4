"""A JSONL results file that keeps every finished row when a long run is killed, and resumes from them.

While a run is going, rows are appended to a hidden file beside the target (`.NAME.modelops-partial.jsonl`) and
flushed as each one finishes, so a killed process (SIGKILL, out-of-memory) loses only the rows in flight. The
file's first line is a header recording what the rows depend on (recipe, model fingerprints, sampling, seed,
prompts) and `"complete": false`. At the end the rows are written to the target in prompt order, atomically, and
the partial file goes. `--resume` keeps the rows of an interrupted run whose header matches, and refuses in one
line, naming what differs, when it does not.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from modelops.checkpoint.output import pid_alive
from modelops.errors import Interrupted, OutputError

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".modelops-partial.jsonl"
HEADER_KEY = "modelops_partial"


def partial_rows_path(target: Path) -> Path:
    target = Path(target).expanduser().resolve()
    return target.parent / f".{target.name}{PARTIAL_SUFFIX}"


def check_rows_target(target: Path, *, inputs: Iterable[Path] = (), overwrite: bool = False) -> None:
    """One line for a target that is an input, a folder, or an existing file without --overwrite."""
    target = Path(target)
    for src in inputs:
        if src.exists() and target.exists() and src.resolve() == target.resolve():
            raise OutputError(f"--out {target} is the prompts file itself; choose another output file")
    if target.is_dir():
        raise OutputError(f"--out {target} is a folder; give a file name such as results.jsonl")
    if target.exists() and not overwrite:
        raise OutputError(f"{target} exists; pass --overwrite to replace it (written atomically)")


def differing_parts(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The names of the header parts whose values differ (as JSON, so tuples equal lists)."""
    names = sorted(set(recorded) | set(wanted))
    same = lambda k: json.dumps(recorded.get(k), sort_keys=True) == json.dumps(wanted.get(k), sort_keys=True)  # noqa: E731
    return [k for k in names if not same(k)]


def read_partial(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """(header parts, finished rows, byte length of the whole lines) of a partial file; a torn last line (the row
    being written at the kill) is not counted."""
    header: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = []
    good = 0
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                break
            if header is None:
                if not isinstance(value, dict) or HEADER_KEY not in value:
                    raise OutputError(f"{path}: not a modelops partial results file; delete it to start over")
                header = value[HEADER_KEY]
            else:
                rows.append(value)
            good += len(raw)
    if header is None:
        raise OutputError(f"{path}: empty or damaged partial results file; delete it to start over")
    return header.get("key", {}), rows, good


def matching_rows(path: Path, key: dict[str, Any], target: Path, id_field: str = "id") -> tuple[dict[Any, Any], int]:
    """The finished rows of partial file `path` by id, and the byte length of its whole lines; one line naming
    the parts that differ when its header does not match `key` (the run resuming `target`)."""
    recorded, rows, good = read_partial(path)
    differ = differing_parts(recorded, key)
    if differ:
        raise OutputError(
            f"cannot resume {target}: the interrupted run had a different {', '.join(differ)}; "
            "run without --resume to start over"
        )
    return {row[id_field]: row for row in rows}, good


class ResumableRows:
    """`with ResumableRows(target, key=..., resume=...) as out:` — `out.done` maps the ids already finished;
    `out.add(row)` appends and flushes one finished row; `out.finish(order)` writes the target in that id order.

    On KeyboardInterrupt (Ctrl-C, SIGTERM) the partial file is kept and `Interrupted` says how many rows were
    kept and how to resume; on other errors it is kept as well (its rows are complete and keyed), with a line
    saying so.
    """

    def __init__(
        self,
        target: Path,
        *,
        key: dict[str, Any],
        resume: bool = False,
        overwrite: bool = False,
        inputs: Iterable[Path] = (),
        id_field: str = "id",
    ) -> None:
        self.target = Path(target)
        self.id_field = id_field
        self.key = json.loads(json.dumps(key, sort_keys=True, default=str))
        self.resume, self.overwrite, self.inputs = resume, overwrite, list(inputs)
        self.path = partial_rows_path(self.target)
        self.lock = self.path.with_name(self.path.name + ".pid")
        self.done: dict[Any, dict[str, Any]] = {}
        self._fh: IO[str] | None = None

    def __enter__(self) -> ResumableRows:
        check_rows_target(self.target, inputs=self.inputs, overwrite=self.overwrite)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._claim()
        keep = 0
        if self.path.exists() and self.resume:
            self.done, keep = matching_rows(self.path, self.key, self.target, self.id_field)
        elif self.path.exists():
            logger.info("discarding the unfinished results %s (run with --resume to continue them)", self.path)
        elif self.resume:
            logger.warning("nothing to resume for %s; starting from the beginning", self.target)
        if keep:
            with self.path.open("r+b") as fh:
                fh.truncate(keep)  # drop a torn last line
            self._fh = self.path.open("a", encoding="utf-8")
        else:
            self._fh = self.path.open("w", encoding="utf-8")
            self._write({HEADER_KEY: {"key": self.key, "complete": False}})
        return self

    def _claim(self) -> None:
        """Refuse a partial file that a live run is still writing, then mark it ours."""
        pid = self.lock.read_text().strip() if self.lock.is_file() else ""
        if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
            raise OutputError(f"another modelops run (pid {pid}) is writing {self.target}; wait for it or stop it")
        self.lock.write_text(str(os.getpid()))

    def _write(self, value: dict[str, Any]) -> None:
        assert self._fh is not None
        self._fh.write(json.dumps(value, ensure_ascii=False) + "\n")
        self._fh.flush()  # in the OS's hands: a killed process loses nothing written so far

    def add(self, row: dict[str, Any]) -> None:
        """Record one finished row (it must carry its `id_field`, the prompt's `id` by default)."""
        self._write(row)
        self.done[row[self.id_field]] = row

    def finish(self, order: list[Any]) -> list[dict[str, Any]]:
        """Write every row to the target in `order` (prompt ids), atomically; returns the rows."""
        missing = [i for i in order if i not in self.done]
        if missing:
            raise OutputError(f"{len(missing)} row(s) were never finished (first id {missing[0]!r}); nothing written")
        rows = [self.done[i] for i in order]
        fd, tmp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            os.replace(tmp, self.target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._close()
        self.path.unlink(missing_ok=True)
        return rows

    def keep(self) -> None:
        """Close, leaving the partial file for a later `resume` (its rows stay keyed; no target is written)."""
        self._close()

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.lock.unlink(missing_ok=True)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None or not self.path.exists():
            self._close()
            return
        self._close()
        kept = f"{len(self.done)} finished row(s) kept in {self.path}; run the same command with --resume to continue"
        if issubclass(exc_type, KeyboardInterrupt):
            raise Interrupted(f"Interrupted: {kept}", getattr(exc, "code", 130)) from None
        if self.done:
            logger.warning("stopped: %s", kept)
