"""The orderings' verdicts on hand-made results, and `modelops demo --preset mini` end to end (slow)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from modelops.cli.main import app
from modelops.eval.metrics import summarize
from modelops.eval.orderings import Comparison, verdict
from modelops.eval.report import TaskResult


def cell(name: str, values: list[float]) -> TaskResult:
    """A hand-made (system, task) cell with per-prompt records, as the harness makes them."""
    records = [{"index": i, "value": v} for i, v in enumerate(values)]
    return TaskResult(name, "t", "exact", summarize(values), records=records)


def test_a_tie_is_inconclusive_and_noise_is_not_an_ordering():
    tie = [1.0, 0.0] * 12
    c = Comparison("paper", "t", ["a", "b"], ["<"])
    assert verdict(c, [cell("a", tie), cell("b", tie)]).startswith("inconclusive: b − a +0 [+0, +0] vs +0")
    one_more = tie.copy()
    one_more[1] = 1.0  # one prompt in 24 better: not evidence
    assert verdict(c, [cell("a", tie), cell("b", one_more)]).startswith("inconclusive")


def test_every_pair_is_judged_and_a_failure_wins():
    c = Comparison("paper", "t", ["x", "y", "z"], ["<", "≲"], margin=0.05)
    x, y = [0.0] * 60 + [1.0] * 40, [0.0] * 20 + [1.0] * 80
    z_same = y.copy()
    z_same[20:22] = [0.0, 0.0]  # 2 points worse than y: within the 5-point margin
    v = verdict(c, [cell("x", x), cell("y", y), cell("z", z_same)])
    assert v.startswith("holds: y − x +0.4 [") and "z − y -0.02 [" in v and "vs -0.05" in v
    z_worse = [0.0] * 60 + [1.0] * 40  # 40 points worse than y: the second claim fails
    assert verdict(c, [cell("x", x), cell("y", y), cell("z", z_worse)]).startswith("fails:")
    with pytest.raises(ValueError, match="unknown relation"):
        verdict(Comparison("p", "t", ["x", "y"], ["≤"]), [cell("x", x), cell("y", y)])


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
