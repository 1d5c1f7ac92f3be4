"""Progress on stderr (rich, transient): bytes for weight writers, rows for decoding, one bar per (system, task) for
evaluation, one per model for the zoo build. Quiet runs get none."""

from __future__ import annotations

from typing import Any


class _Bar:
    """A transient rich progress bar on stderr, or nothing when quiet; subclasses pick the columns."""

    def __init__(self, total: int, description: str, quiet: bool) -> None:
        self.total, self.description, self.quiet = total, description, quiet
        self._progress: Any = None
        self._task: Any = None

    def _columns(self) -> list[Any]:
        raise NotImplementedError

    def __enter__(self) -> Any:
        if not self.quiet:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            columns = [TextColumn("{task.description}"), BarColumn(), *self._columns()]
            self._progress = Progress(*columns, console=Console(stderr=True), transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total)
        return self

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


class ByteProgress(_Bar):
    """Bytes written, with speed and time left; called as progress(tensor_name, nbytes)."""

    def _columns(self) -> list[Any]:
        from rich.progress import DownloadColumn, TimeRemainingColumn, TransferSpeedColumn

        return [DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]

    def __call__(self, name: str, nbytes: int) -> None:
        self.advance(nbytes)


class CountProgress(_Bar):
    """Items done of a total (prompts, rows), with elapsed time."""

    def _columns(self) -> list[Any]:
        from rich.progress import MofNCompleteColumn, TimeElapsedColumn

        return [MofNCompleteColumn(), TimeElapsedColumn()]


class TaskBars:
    """One transient rich bar per (system, task) on stderr: rows done of this process's share."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=True)  # fmt: skip
        self.tasks: dict[str, int] = {}

    def __call__(self, desc: str, done: int, total: int) -> None:
        if desc not in self.tasks:
            if not self.tasks:
                self.bar.start()
            self.tasks[desc] = self.bar.add_task(desc, total=total)
        self.bar.update(self.tasks[desc], completed=done)

    def close(self) -> None:
        if self.tasks:
            self.bar.stop()


class ZooProgress:
    """One bar per model with steps, loss and ETA (stderr); a line per finished model."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), console=self.console, transient=True,
        )  # fmt: skip
        self.task: Any = None

    def start(self, name: str, total: int) -> None:
        if self.task is None:
            self.bar.start()
        else:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(name, total=total, loss="-")

    def tick(self, loss: float) -> None:
        self.bar.update(self.task, advance=1, loss=f"{loss:.3f}")

    def finish(self, name: str, meta: dict) -> None:
        self.bar.console.print(f"  {name}: {meta['params']:,} params, {score_text(meta)}, {meta['seconds']:.0f} s")

    def close(self) -> None:
        if self.task is not None:
            self.bar.stop()


def score_text(meta: dict) -> str:
    """The model's score on its own task (all tasks for bases)."""
    scores = meta.get("scores", {})
    task = meta.get("task")
    parts = []
    for t, s in scores.items():
        if task and t != task:
            continue
        parts.append(f"{t} reward {s['reward']:+.2f} fluent {s['fluency']:.0%}" if "reward" in s else
                     f"{t} exact {s['exact']:.1%} answer {s['answer']:.1%}")  # fmt: skip
    return "; ".join(parts)
