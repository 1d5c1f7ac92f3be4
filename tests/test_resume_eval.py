"""An interrupted evaluation keeps every finished row of every (system, task) and resumes: real runs are stopped in a
subprocess after some rows, then continued with --resume; the results must equal an uninterrupted run's."""

from __future__ import annotations

import json
import subprocess
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
