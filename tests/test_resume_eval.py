"""An interrupted evaluation keeps every finished row of every (system, task) and resumes: real runs are stopped in a
subprocess after some rows, then continued with --resume; the results must equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eval_fixtures import causal_lm, make_tokenizer, save
from resume_fixtures import run_until
from typer.testing import CliRunner

from modelops.cli.main import app

PROMPTS = [f"w{i} w{i + 3} w{(5 * i) % 40}" for i in range(7)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evalresume")
    tok = make_tokenizer()
    task = root / "em.jsonl"
    task.write_text("".join(json.dumps({"prompt": p, "reference": "w1"}) + "\n" for p in PROMPTS))
    reward = root / "rw.jsonl"
    reward.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:5]))
    return {"a": save(causal_lm(0), root / "a", tok), "b": save(causal_lm(1), root / "b", tok), "em": task,
            "rw": reward}  # fmt: skip


def _args(s: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "eval", "--task", str(s["em"]), "--task", str(s["rw"]), "--metric", "reward:eval_fixtures:word_count",
        "--model", str(s["a"]), "--model", str(s["b"]), "--max-new-tokens", "5", "--batch-size", "2",
        "--temperature", "0.8", "--seed", "3", "--bootstrap", "50", "--out", str(out), "-q", *extra,
    ]  # fmt: skip


def _run_until(args: list[str], stop: str, after_rows: int) -> subprocess.CompletedProcess[str]:
    """The CLI stopped by SIG`stop` once `after_rows` records are kept (over all pairs)."""
    return run_until(args, stop, module="modelops.checkpoint.rows", method="ResumableRows.add", calls=after_rows)


def _results(out: Path) -> tuple[list[dict], dict[str, str]]:
    data = json.loads((out / "results.json").read_text())
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in data["results"]]
    gens = {p.name: p.read_text() for p in sorted(out.glob("generations_*.jsonl"))}
    return rows, gens


@pytest.mark.parametrize(("stop", "code", "after"), [("INT", 130, 9), ("KILL", -9, 4)])
def test_a_stopped_eval_resumes_to_the_same_results(setup, tmp_path, monkeypatch, stop, code, after) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    reference = tmp_path / "ref"
    res = CliRunner().invoke(app, _args(setup, reference))
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    proc = _run_until(_args(setup, out), stop, after)
    assert proc.returncode == code, proc.stderr
    assert not out.exists()
    if stop == "INT":  # 9 rows: system a's 7 + 5 rows are past the first pair, inside the second
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("Interrupted: 9 finished row(s) kept in ") and "--resume" in last
    res = CliRunner().invoke(app, [*_args(setup, out), "--resume"])
    assert res.exit_code == 0, res.output
    assert _results(out) == _results(reference)
    assert not list(tmp_path.glob(".out.modelops-partial*"))


def test_a_changed_eval_is_refused_in_one_line(setup, tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    out = tmp_path / "out"
    proc = _run_until(_args(setup, out), "INT", 3)
    assert proc.returncode == 130, proc.stderr
    args = _args(setup, out, "--resume")
    args[args.index("--seed") + 1] = "4"
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1].startswith("Error: cannot resume") and "sampling" in res.output


KILL_RANK_1 = """
import os, signal
if os.environ.get("RANK") == "1":  # torchrun's second worker dies after keeping {rows} rows
    import modelops.checkpoint.rows as rows
    real, seen = rows.ResumableRows.add, [0]
    def add(self, row):
        real(self, row)
        seen[0] += 1
        if seen[0] == {rows}:
            os.kill(os.getpid(), signal.SIGKILL)
    rows.ResumableRows.add = add
"""


def test_an_eval_of_two_processes_resumes_from_both(setup, tmp_path, monkeypatch) -> None:
    """Each process keeps its own rows; after one of two is killed (torchrun then stops the other), a resume in one
    process reads every process's file: it computes only the rows no file holds, and gives the one-process results."""
    from modelops.checkpoint.rows import ResumableRows

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    reference = tmp_path / "ref"
    assert CliRunner().invoke(app, _args(setup, reference)).exit_code == 0
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_RANK_1.format(rows=3))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "modelops.cli.eval", *_args(setup, out, "--device", "cpu", "--num-processes", "2")[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{hook}{os.pathsep}{Path(__file__).parent}"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and not out.exists()
    kept = {p.name: len(p.read_text().splitlines()) - 1 for p in (tmp_path / ".out.modelops-partial").glob("*.jsonl")}
    assert any(".rank1." in name and n == 3 for name, n in kept.items()), kept  # the killed process's rows
    added = []
    real_add = ResumableRows.add
    monkeypatch.setattr(ResumableRows, "add", lambda self, row: added.append(row) or real_add(self, row))
    res = CliRunner().invoke(app, [*_args(setup, out), "--resume"])  # one process now
    assert res.exit_code == 0, res.output
    assert len(added) == 2 * (len(PROMPTS) + 5) - sum(kept.values())  # every kept row, of either process, reused
    (got, got_gens), (want, want_gens) = _results(out), _results(reference)
    assert got == want and got_gens == want_gens
    assert not list(tmp_path.glob(".out.modelops-partial*"))
