"""Interrupted fused decodes keep their finished rows and resume: real runs are killed (SIGKILL) or stopped (SIGINT,
SIGTERM) in a subprocess after some rows, then continued with --resume; the result must equal an uninterrupted
run's file, greedy and seeded."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from decode_fixtures import prompts as make_prompts
from resume_fixtures import run_until
from typer.testing import CliRunner

from modelops.checkpoint.rows import ResumableRows, partial_rows_path
from modelops.cli.main import app
from modelops.errors import OutputError

N_PROMPTS = 12


def _args(fam: dict[str, Path], src: Path, out: Path, *extra: str) -> list[str]:
    return [
        "fuse-decode", "--large", str(fam["large"]), "--small-base", str(fam["base"]), "--expert",
        str(fam["expert2"]), "--rule", "eft", "--prompts", str(src), "--out", str(out), "--max-new-tokens", "6",
        "--batch-size", "3", "-q", *extra,
    ]  # fmt: skip


def _run_until(args: list[str], stop: str, after_rows: int) -> subprocess.CompletedProcess[str]:
    """The CLI stopped by SIG`stop` once `after_rows` rows are in the partial file."""
    return run_until(args, stop, module="modelops.checkpoint.rows", method="ResumableRows.add", calls=after_rows)


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "p.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(make_prompts(12))))
    return path


SAMPLED = ("--temperature", "0.9", "--seed", "5")
SPECULATIVE = ("--speculative", "2", "--speculative-schedule", "heuristic", *SAMPLED)
CBS = ("--rule", "cbs", "--beam-width", "2", "--successors", "2", "--chunk-len", "2", *SAMPLED)


@pytest.mark.parametrize(
    ("stop", "code", "sampling"),
    [("KILL", -9, ()), ("INT", 130, ()), ("TERM", 143, SAMPLED), ("INT", 130, SPECULATIVE), ("KILL", -9, CBS)],
    ids=["greedy-kill", "greedy-int", "sampled-term", "speculative-int", "cbs-kill"],
)
def test_a_stopped_decode_resumes_to_the_same_rows(decode_family, prompt_file, tmp_path, stop, code, sampling):
    """Every loop keeps its rows as they finish: lock-step, speculative (seeded: keyed per prompt and position,
    with each row's own draft lengths) and the search."""
    reference = tmp_path / "ref.jsonl"
    res = CliRunner().invoke(app, _args(decode_family, prompt_file, reference, *sampling))
    assert res.exit_code == 0, res.output
    out = tmp_path / "out.jsonl"
    proc = _run_until(_args(decode_family, prompt_file, out, *sampling), stop, after_rows=4)
    assert proc.returncode == code, proc.stderr
    assert not out.exists()
    partial = partial_rows_path(out)
    lines = partial.read_text().splitlines()
    assert json.loads(lines[0])["modelops_partial"]["complete"] is False
    assert len(lines) - 1 >= 4  # every row finished before the stop is on disk
    if stop != "KILL":
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("Interrupted: ") and "finished row(s) kept" in last and "--resume" in last
    res = CliRunner().invoke(app, [*_args(decode_family, prompt_file, out, *sampling), "--resume"])
    assert res.exit_code == 0, res.output
    assert "resumed_rows" in res.output
    got, want = ([json.loads(x) for x in f.read_text().splitlines()] for f in (out, reference))
    for row in want:  # a search's scores are sums over other batch shapes: equal to float rounding
        if "score" in row:
            row["score"] = pytest.approx(row["score"], rel=1e-5)
    assert got == want  # same rows, prompt order, same tokens
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [f"q{i}" for i in range(N_PROMPTS)]
    assert not partial.exists()


def test_a_changed_resume_is_refused_in_one_line(decode_family, prompt_file, tmp_path):
    out = tmp_path / "out.jsonl"
    proc = _run_until(_args(decode_family, prompt_file, out), "INT", after_rows=2)
    assert proc.returncode == 130, proc.stderr
    res = CliRunner().invoke(app, [*_args(decode_family, prompt_file, out, "--weight", "0.5"), "--resume"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1].startswith("Error: cannot resume")
    assert "recipe" in res.output and "--resume" in res.output
    assert partial_rows_path(out).exists() and not out.exists()  # nothing mixed, nothing lost


@pytest.mark.parametrize("loop", [(), ("--speculative", "3", "--speculative-schedule", "heuristic")])
def test_seeded_rows_do_not_depend_on_the_batch(decode_family, prompt_file, tmp_path, loop):
    """A prompt draws from its own stream: batch 1 and batch 5 sample the same tokens."""
    outs = []
    for batch in ("1", "5"):
        out = tmp_path / f"b{batch}.jsonl"
        args = _args(decode_family, prompt_file, out, "--temperature", "1.0", "--seed", "3", *loop)
        args[args.index("--batch-size") + 1] = batch
        assert CliRunner().invoke(app, args).exit_code == 0
        outs.append(out.read_text())
    assert outs[0] == outs[1]
    texts = {json.loads(x)["text"] for x in outs[0].splitlines()}
    assert len(texts) > 1  # really sampled, not one repeated row


def test_torn_last_line_is_dropped_and_order_restored(tmp_path):
    target = tmp_path / "r.jsonl"
    with pytest.raises(KeyboardInterrupt), ResumableRows(target, key={"recipe": 1}) as sink:
        sink.add({"id": 2, "text": "b"})
        sink.add({"id": 0, "text": "a"})
        raise KeyboardInterrupt
    with partial_rows_path(target).open("a") as fh:
        fh.write('{"id": 1, "te')  # the row being written when the process died
    with ResumableRows(target, key={"recipe": 1}, resume=True) as sink:
        assert sorted(sink.done) == [0, 2]
        sink.add({"id": 1, "text": "c"})
        rows = sink.finish([0, 1, 2])
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert [json.loads(x)["text"] for x in target.read_text().splitlines()] == ["a", "c", "b"]
    with pytest.raises(OutputError, match="exists; pass --overwrite"), ResumableRows(target, key={}):
        pass


def test_mismatch_names_the_part_that_differs(tmp_path):
    target = tmp_path / "r.jsonl"
    with pytest.raises(KeyboardInterrupt), ResumableRows(target, key={"recipe": 1, "seed": 0}) as sink:
        sink.add({"id": 0})
        raise KeyboardInterrupt
    with (
        pytest.raises(OutputError, match=r"different seed;"),
        ResumableRows(target, key={"recipe": 1, "seed": 1}, resume=True),
    ):
        pass


def test_the_output_may_not_be_the_prompts_or_a_folder(tmp_path):
    from modelops.checkpoint.rows import check_rows_target

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a"}\n')
    with pytest.raises(OutputError, match="is the prompts file itself"):
        check_rows_target(prompts, inputs=[prompts], overwrite=True)
    with pytest.raises(OutputError, match="is a folder; give a file name"):
        check_rows_target(tmp_path, overwrite=True)
    check_rows_target(tmp_path / "new.jsonl")  # a new file is fine
    assert prompts.read_text() == '{"prompt": "a"}\n'
