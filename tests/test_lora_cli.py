"""`modelops extract-lora` / `apply-lora` through the real Typer app: outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lora_fixtures import llama, load, logits, save, tune
from typer.testing import CliRunner

from modelops.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lora_cli")
    base = llama(seed=20)
    return {"base": save(base, d / "base"), "tuned": save(tune(base, seed=21), d / "tuned"), "root": d}


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_extract_then_apply(pair, tmp_path: Path) -> None:
    ad, merged = tmp_path / "ad", tmp_path / "merged"
    r = run(
        "extract-lora", "--base", pair["base"], "--tuned", pair["tuned"], "--out", ad, "--rank", 4, "--device", "cpu"
    )
    assert r.exit_code == 0, r.output
    assert "Wrote LoRA adapter (14 modules, rank 4–4" in r.stdout
    assert "LoRA extraction" in r.stderr  # the table goes to stderr
    assert {"adapter_config.json", "adapter_model.safetensors", "extraction_report.json", "README.md"} <= {
        p.name for p in ad.iterdir()
    }
    r = run("apply-lora", "--base", pair["base"], "--adapter", ad, "--out", merged, "-q")
    assert r.exit_code == 0, r.output
    assert r.stderr == ""
    torch.testing.assert_close(logits(load(merged)), logits(load(pair["tuned"])), atol=1e-4, rtol=1e-4)


def test_energy_dry_run_prints_plan_and_writes_nothing(pair, tmp_path: Path) -> None:
    out = tmp_path / "ad"
    r = run("extract-lora", "--base", pair["base"], "--tuned", pair["tuned"], "--out", out, "--energy", "0.9",
            "--max-rank", "8", "--dry-run")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "energy 0.9 (max rank 8)" in r.stdout and "model.layers.1.mlp.down_proj" in r.stdout
    assert not out.exists()
    r = run("extract-lora", "--base", pair["base"], "--tuned", pair["tuned"], "--out", out, "--rank", 4, "--dry-run")
    assert "r=4" in r.stdout and not out.exists()


def test_energy_mode_quiet(pair, tmp_path: Path) -> None:
    out = tmp_path / "ad"
    r = run("extract-lora", "--base", pair["base"], "--tuned", pair["tuned"], "--out", out, "--energy", "0.99", "-q")
    assert r.exit_code == 0, r.output
    report = json.loads((out / "extraction_report.json").read_text())
    assert report["summary"]["max_rank"] == 3  # the fixture's ΔW has rank 3 exactly
    assert report["summary"]["energy_kept"] > 0.99


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rank", "40"], "maximum rank 32 of model.layers.0.self_attn.q_proj"),
        (["--rank", "4", "--modules", "qq_proj"], "no linear module of that name"),
        (["--rank", "4", "--embeddings", "drop"], "--embeddings 'drop'"),
    ],
)
def test_extract_errors_are_one_line_exit_1(pair, tmp_path: Path, args, message) -> None:
    out = tmp_path / "ad"
    r = run("extract-lora", "--base", pair["base"], "--tuned", pair["tuned"], "--out", out, *args)
    assert r.exit_code == 1
    assert message in one_error_line(r)
    assert not out.exists()


def test_rank_and_energy_together_is_a_usage_error(pair, tmp_path: Path) -> None:
    r = run("extract-lora", "--base", pair["base"], "--tuned", pair["tuned"], "--out", tmp_path / "o", "--rank", 4,
            "--energy", "0.9")  # fmt: skip
    assert r.exit_code == 2


def test_apply_errors_are_one_line_exit_1(pair, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    r = run("apply-lora", "--base", pair["base"], "--adapter", pair["tuned"], "--out", out)
    assert r.exit_code == 1
    assert "no adapter_config.json" in one_error_line(r)
    assert not out.exists()
