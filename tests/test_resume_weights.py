"""Interrupted merges resume: real runs are killed (SIGKILL) or stopped (SIGINT, SIGTERM) in a subprocess, then
continued with --resume; the result must equal an uninterrupted run's files byte for byte."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from resume_fixtures import run_until
from typer.testing import CliRunner

from modelops.api import merge
from modelops.cli.main import app
from modelops.merge import recipe_from_dict


def _args(family: dict[str, Path], out: Path, weight: str = "0.7") -> list[str]:
    return [
        "merge", "--method", "ties", "--base", str(family["base"]), "--model", str(family["ft1"]), "--weight",
        weight, "--density", "0.5", "--model", str(family["ft2"]), "--weight", "0.4", "--density", "0.6",
        "--out", str(out), "--shard-size", "20KB", "-q",
    ]  # fmt: skip


def _run_until(args: list[str], stop: str, after_shards: int) -> subprocess.CompletedProcess[str]:
    """The CLI stopped by SIG`stop` once `after_shards` shards (extract-lora: modules) are recorded."""
    return run_until(args, stop, module="modelops.checkpoint.resume", method="ResumableOutput.record",
                     calls=after_shards)  # fmt: skip


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def reference(llama_family, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ref") / "merged"  # the same name as the tests' outputs (the card shows it)
    res = CliRunner().invoke(app, _args(llama_family, out))
    assert res.exit_code == 0, res.output
    return _files(out)


@pytest.mark.parametrize(("stop", "code"), [("KILL", -9), ("INT", 130), ("TERM", 143)])
def test_a_stopped_merge_resumes_to_identical_bytes(stop, code, llama_family, reference, tmp_path) -> None:
    out = tmp_path / "merged"
    proc = _run_until(_args(llama_family, out), stop, after_shards=2)
    assert proc.returncode == code, proc.stderr
    assert not out.exists()
    if stop != "KILL":  # a handled stop says what it kept and how to go on, in one line
        assert proc.stderr.strip().splitlines()[-1].startswith("Interrupted: 2 finished shard(s) kept in ")
        assert "--resume" in proc.stderr
    from modelops.checkpoint import Checkpoint

    reads = []
    real_get = Checkpoint.get
    Checkpoint.get = lambda self, name, rows=None: reads.append(name) or real_get(self, name, rows)  # type: ignore[method-assign]
    try:
        res = CliRunner().invoke(app, [*_args(llama_family, out), "--resume"])
    finally:
        Checkpoint.get = real_get  # type: ignore[method-assign]
    assert res.exit_code == 0, res.output
    assert "2 shard(s) kept from the interrupted run" in res.output
    assert _files(out) == reference  # weights, index, config, recipe and card: byte for byte
    assert len([k for k in reference if k.endswith(".safetensors")]) > 2
    tensors = json.loads(reference["model.safetensors.index.json"])["weight_map"]
    assert 0 < len(reads) < 3 * len(tensors)  # a fresh run reads every tensor of base, ft1 and ft2 once
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_resume_with_another_recipe_is_refused(llama_family, tmp_path) -> None:
    out = tmp_path / "merged"
    assert _run_until(_args(llama_family, out), "KILL", after_shards=1).returncode == -9
    res = CliRunner().invoke(app, [*_args(llama_family, out, weight="0.9"), "--resume"])
    assert res.exit_code == 1
    assert "cannot resume" in res.output and "without --resume to start over" in res.output
    assert not out.exists()


def test_without_resume_a_new_run_starts_over(llama_family, reference, tmp_path) -> None:
    out = tmp_path / "merged"
    assert _run_until(_args(llama_family, out), "KILL", after_shards=1).returncode == -9
    res = CliRunner().invoke(app, _args(llama_family, out))
    assert res.exit_code == 0 and "kept from the interrupted run" not in res.output
    assert _files(out) == reference


def test_a_damaged_kept_shard_is_written_again(llama_family, reference, tmp_path) -> None:
    out = tmp_path / "merged"
    assert _run_until(_args(llama_family, out), "KILL", after_shards=2).returncode == -9
    partial = next(p for p in tmp_path.iterdir() if p.name.startswith("."))
    first = sorted(partial.glob("*.safetensors"))[0]
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF
    first.write_bytes(bytes(data))
    res = CliRunner().invoke(app, [*_args(llama_family, out), "--resume"])
    assert res.exit_code == 0, res.output
    assert "1 shard(s) kept" in res.output
    assert _files(out) == reference


def test_bf16_expo_survival_metric_is_the_same_after_resume(bf16_pair, tmp_path) -> None:
    """The ExPO rounding measure adds up over shards: a resumed run carries the interrupted run's sums."""
    args = [
        "extrapolate", "--sft", str(bf16_pair["sft"]), "--dpo", str(bf16_pair["dpo"]), "--alpha", "0.3",
        "--shard-size", "20KB", "-q",
    ]  # fmt: skip
    whole = tmp_path / "whole" / "expo"
    assert CliRunner().invoke(app, [*args, "--out", str(whole)]).exit_code == 0
    out = tmp_path / "resumed" / "expo"
    out.parent.mkdir()
    assert _run_until([*args, "--out", str(out)], "KILL", after_shards=3).returncode == -9
    res = CliRunner().invoke(app, [*args, "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    assert _files(out) == _files(whole)


def test_library_resume_flag(llama_family, tmp_path) -> None:
    """`merge(..., resume=True)` with nothing to resume simply runs."""
    recipe = recipe_from_dict(
        {
            "merge_method": "linear",
            "models": [{"model": str(llama_family[k]), "parameters": {"weight": 1.0}} for k in ("ft1", "ft2")],
        }
    )
    merge(recipe, tmp_path / "o", resume=True)
    assert (tmp_path / "o" / "model.safetensors").is_file()


def test_apply_lora_resumes_to_identical_bytes(llama_family, tmp_path) -> None:
    """apply-lora writes a whole model: killed after two shards, --resume finishes it with the same bytes."""
    adapter = tmp_path / "adapter"
    made = CliRunner().invoke(
        app,
        ["extract-lora", "--base", str(llama_family["base"]), "--tuned", str(llama_family["ft1"]), "--out",
         str(adapter), "--rank", "4", "-q"],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    args = ["apply-lora", "--base", str(llama_family["base"]), "--adapter", str(adapter), "--shard-size", "20KB", "-q"]
    whole = tmp_path / "a" / "applied"
    assert CliRunner().invoke(app, [*args, "--out", str(whole)]).exit_code == 0
    out = tmp_path / "b" / "applied"
    out.parent.mkdir()
    assert _run_until([*args, "--out", str(out)], "KILL", after_shards=2).returncode == -9
    res = CliRunner().invoke(app, [*args, "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    assert _files(out) == _files(whole)


@pytest.mark.parametrize(("stop", "code"), [("KILL", -9), ("INT", 130)])
def test_extract_lora_resumes_to_identical_bytes(stop, code, llama_family, tmp_path, monkeypatch) -> None:
    """extract-lora saves each module's factors as it finishes: stopped after three modules, --resume computes
    only the rest (randomised SVD included) and writes the same adapter, byte for byte."""
    args = ["extract-lora", "--base", str(llama_family["base"]), "--tuned", str(llama_family["ft1"]), "--rank", "4",
            "--svd", "randomized", "-q"]  # fmt: skip
    whole = tmp_path / "a" / "adapter"
    assert CliRunner().invoke(app, [*args, "--out", str(whole)]).exit_code == 0
    out = tmp_path / "b" / "adapter"
    out.parent.mkdir()
    proc = _run_until([*args, "--out", str(out)], stop, after_shards=3)
    assert proc.returncode == code, proc.stderr
    assert not out.exists()
    if stop == "INT":
        assert proc.stderr.strip().splitlines()[-1].startswith("Interrupted: 3 finished module(s) kept in ")
    from modelops.lora import extract

    computed, real = [], extract.module_outcome
    monkeypatch.setattr(extract, "module_outcome", lambda *a, **kw: computed.append(a[2].name) or real(*a, **kw))
    res = CliRunner().invoke(app, [*args, "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    n_modules = len(json.loads((whole / "extraction_report.json").read_text())["modules"])
    assert len(computed) < n_modules  # the kept modules were not factorised again
    for name in ("adapter_model.safetensors", "adapter_config.json", "modelops_recipe.yaml"):
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    report = json.loads((out / "extraction_report.json").read_text())
    assert report["modules"] == json.loads((whole / "extraction_report.json").read_text())["modules"]
    assert not [p.name for p in out.iterdir() if p.name.startswith("module-")]
