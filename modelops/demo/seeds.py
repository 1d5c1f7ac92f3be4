"""`modelops demo --seeds 0,1,2 --sample-seeds 0-2`: every claim over several zoo builds and sampling seeds.

Each zoo seed builds (or reuses) its zoo and runs the whole demo with the first sampling seed; each further
sampling seed re-runs only the claims whose systems sample (the searches), since greedy claims cannot change. The
table, generated here, gives each run's verdict and a pooled one: every run's prompts together, resampled within
each run (a stratified paired bootstrap, one-sided 95%), with how many runs held on their own. A greedy claim is
pooled over zoo seeds only: repeating identical runs would narrow its interval for nothing.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from modelops import api
from modelops.demo.report import DemoLine
from modelops.errors import ModelopsError

TABLE_START = "<!-- modelops demo seeds table: start -->"
TABLE_END = "<!-- modelops demo seeds table: end -->"


def parse_seeds(text: str, option: str = "--seeds") -> list[int]:
    """ "0,1,2", "0-4" or "0-2,7" → the seeds in order, each once."""
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            lo, _, hi = part.partition("-")
            span = range(int(lo), int(hi) + 1) if hi else [int(lo)]
            seeds += [s for s in span if s not in seeds]
    except ValueError:
        raise ModelopsError(f"{option} {text!r}: expected seeds such as 0,1,2 or 0-4") from None
    if not seeds:
        raise ModelopsError(f"{option} {text!r}: expected seeds such as 0,1,2 or 0-4")
    return seeds


@dataclass
class SeedRun:
    """The lines of one (zoo seed, sampling seed) run."""

    zoo_seed: int
    sample_seed: int
    lines: list[DemoLine] = field(default_factory=list)


def run_seeds(
    preset: str,
    zoo_seeds: list[int],
    sample_seeds: list[int],
    *,
    workdir: Path = Path("modelops-demo"),
    limit: int | None = None,
    device: str = "cpu",
    on_line: Callable[[DemoLine], None] | None = None,
    zoo_progress: Any = None,
) -> list[SeedRun]:
    """Every zoo seed × sampling seed (greedy claims once per zoo seed)."""
    from modelops.demo.zoo import decode_lines, run_zoo_demo

    runs = []
    for zoo_seed in zoo_seeds:
        first = run_zoo_demo(preset, seed=zoo_seed, workdir=workdir, limit=limit, device=device, on_line=on_line,
                             zoo_progress=zoo_progress, sample_seed=sample_seeds[0])  # fmt: skip
        runs.append(SeedRun(zoo_seed, sample_seeds[0], [x for x in first.lines if x.section != "setup"]))
        for sample_seed in sample_seeds[1:]:
            lines = decode_lines(first.zoo, limit, device, {}, sample_seed=sample_seed, only_sampled=True)
            for line in lines if on_line else ():
                on_line(replace(line, claim=f"{line.claim} [zoo seed {zoo_seed}, sampling seed {sample_seed}]"))
            runs.append(SeedRun(zoo_seed, sample_seed, lines))
    return runs


@dataclass
class SeedRow:
    """One claim over every run: each run's outcome and effects, and the pooled verdict."""

    claim: str
    task: str
    cells: dict[tuple[int, int], str]  # (zoo seed, sampling seed) -> "holds +0.31"
    outcome: str  # the pooled verdict: holds | fails | inconclusive
    pooled: str  # every pooled claim's effect and bounds
    held: int  # runs whose own verdict holds
    runs: int


def seed_rows(runs: list[SeedRun]) -> list[SeedRow]:
    """The table's rows, in the order the first run measured the claims."""
    found: dict[tuple[str, str], list[tuple[SeedRun, DemoLine]]] = {}
    for run in runs:
        for line in run.lines:
            found.setdefault((line.claim, line.task), []).append((run, line))
    rows = []
    for (claim, task), entries in found.items():
        cells = {(run.zoo_seed, run.sample_seed): _cell(line) for run, line in entries}
        held = sum(line.verdict.startswith("holds") for _, line in entries)
        rows.append(SeedRow(claim, task, cells, *_pooled([line for _, line in entries]), held, len(entries)))
    return rows


def _cell(line: DemoLine) -> str:
    """One run: its outcome and each claim's effect."""
    effects = "/".join(f"{c.verdict().effect:+.2f}" for c in line.claims)
    return f"{line.verdict.split(':', 1)[0]} {effects}".strip()


def _pooled(lines: list[DemoLine]) -> tuple[str, str]:
    if not lines[0].claims:
        return "inconclusive", "no test"
    claims = [api.pooled([line.claims[j] for line in lines]) for j in range(len(lines[0].claims))]
    verdicts = [c.verdict() for c in claims]
    details = "; ".join(
        f"{c.label + ': ' if c.label else ''}{_num(v.effect)} [{_num(v.low)}, {_num(v.high)}] vs {v.threshold:g}"
        for c, v in zip(claims, verdicts, strict=True)
    )
    return api.combine([v.outcome for v in verdicts]), f"n = {max(v.n for v in verdicts)}: {details}"


def _num(x: float) -> str:
    """A signed effect or bound; "n/a" where a ratio had no denominator (an expert that scored nothing)."""
    return "n/a" if x != x else f"{x:+.3g}"


def seed_table(runs: list[SeedRun], *, preset: str, limit: int | None = None) -> str:
    """The Markdown table of every claim over every run, with what it was run on and how it was tested."""
    zoo_seeds = sorted({r.zoo_seed for r in runs})
    sample_seeds = sorted({r.sample_seed for r in runs})
    rows = seed_rows(runs)
    tally = api.tally([row.outcome for row in rows])
    size = f"the first {limit} prompts of each task" if limit else "every prompt of each task"
    intro = (
        f"`modelops demo --preset {preset} --seeds {','.join(map(str, zoo_seeds))} --sample-seeds "
        f"{','.join(map(str, sample_seeds))}`, on {size}. Each cell is one run (zoo seed z, sampling seed s): its "
        "verdict and the effect of each claim in it (a difference of means, or a share for merges, LoRA and speed). "
        "Pooled: the runs' prompts together, resampled within each run (paired bootstrap, one-sided 95%); greedy "
        "claims are pooled over zoo seeds only, since a sampling seed cannot change them. "
        f"Pooled verdicts: {tally}."
    )
    lines = [
        textwrap.fill(intro, width=116, break_long_words=False, break_on_hyphens=False),
        "",
        "| claim | task | " + " | ".join(f"z{z}" for z in zoo_seeds) + " | pooled | runs holding |",
        "|---|---|" + "---|" * len(zoo_seeds) + "---|---|",
    ]
    for row in rows:
        per_zoo = []
        for z in zoo_seeds:
            mine = [(s, text) for (zz, s), text in sorted(row.cells.items()) if zz == z]
            per_zoo.append("<br>".join(f"s{s}: {text}" if len(mine) > 1 else text for s, text in mine) or "–")
        pooled = f"**{row.outcome}** ({row.pooled})"
        cells = [row.claim.replace("|", "/"), row.task, *per_zoo, pooled, f"{row.held}/{row.runs}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def replace_table(path: Path, table: str) -> None:
    """Put `table` between the two marker lines of `path` (README), atomically; one line when they are missing."""
    text = Path(path).read_text(encoding="utf-8")
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise ModelopsError(f"{path}: no '{TABLE_START}' … '{TABLE_END}' lines to put the table between; add them")
    new = text[: start + len(TABLE_START)] + "\n" + table + text[end:]
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", dir=Path(path).parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
