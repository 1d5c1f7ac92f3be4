"""The orderings' verdicts on hand-made results, and `modelops demo --preset mini` end to end (slow)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from modelops.cli.main import app
from modelops.eval.metrics import Summary
from modelops.eval.orderings import Comparison, holds, verdict
from modelops.eval.report import TaskResult


def cell(name: str, mean: float, low: float, high: float) -> TaskResult:
    return TaskResult(name, "t", "exact", Summary(100, mean, low, high))


def test_relations_mean_what_they_say():
    a, b = cell("a", 0.50, 0.45, 0.55), cell("b", 0.52, 0.47, 0.57)
    assert holds(a, b, "<") and holds(a, b, "≤") and holds(a, b, "≲")
    assert not holds(b, a, "<") and not holds(b, a, "≤")
    assert holds(b, a, "≲")  # within the intervals' overlap
    far = cell("far", 0.10, 0.08, 0.12)
    assert not holds(b, far, "≲")
    tie = cell("tie", 0.50, 0.45, 0.55)
    assert holds(a, tie, "≤") and not holds(a, tie, "<")


def test_verdict_names_every_failing_pair():
    c = Comparison("paper", "t", ["x", "y", "z"], ["<", "≤"])
    assert verdict(c, [cell("x", 0.1, 0, 0.2), cell("y", 0.5, 0.4, 0.6), cell("z", 0.9, 0.8, 1)]) == "holds"
    v = verdict(c, [cell("x", 0.6, 0.5, 0.7), cell("y", 0.5, 0.4, 0.6), cell("z", 0.4, 0.3, 0.5)])
    assert v.startswith("fails:") and "x (0.6) < y (0.5)" in v and "y (0.5) ≤ z (0.4)" in v


@pytest.mark.slow
def test_demo_mini_runs_every_operation_and_ordering(tmp_path, mini_zoo_cache, monkeypatch):
    monkeypatch.setenv("MODELOPS_CACHE", str(mini_zoo_cache))  # the session's mini build: a cache hit
    res = CliRunner().invoke(app, ["demo", "--limit", "24", "--workdir", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "demo-mini-s0.json").read_text())
    claims = " | ".join(line["claim"] for line in data["lines"])
    for needle in ("ExPO", "merge", "extract-lora", "EFT", "DLF", "fixed", "Weak-to-strong", "speculative"):
        assert needle in claims, needle
    assert all(line["verdict"] for line in data["lines"])
    assert "identical tokens" in data["lines"][-1]["verdict"]
    outputs = tmp_path / "zoo-mini-s0"
    folders = ["merge-ties-facts+addition", "lora-large-facts-r16", "lora-large-facts-r16-applied"]
    folders += [p.name for p in outputs.glob("expo-dpo_full-a*")]
    assert len(folders) >= 4
    for folder in folders:
        assert (outputs / folder / "modelops_recipe.yaml").is_file(), folder
    assert len(data["details"]["expo_curve[dpo_full] (dev half)"]) >= 5
