"""The README's publishing flow for real: extrapolate --alpha auto → eval → push, against the local test Hub."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from decode_fixtures import llama, make_tokenizer, nudged, save_with_tokenizer
from hub_fixtures import hub  # noqa: F401  (module fixture: a live Hub-compatible server)


def test_extrapolate_auto_then_eval_then_push(hub, tmp_path) -> None:  # noqa: F811
    tok = make_tokenizer()
    sft = llama(3)
    sft_dir = save_with_tokenizer(sft, tmp_path / "sft", tok)
    dpo_dir = save_with_tokenizer(nudged(sft, 4, scale=0.08), tmp_path / "dpo", tok)
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 2}"}) + "\n" for i in range(10)))
    metric, out, report = "reward:decode_fixtures:word_reward", tmp_path / "expo-out", tmp_path / "expo-eval"
    env = {"PYTHONPATH": str(Path(__file__).parent)}  # the toy reward lives in tests/decode_fixtures.py

    r = hub.modelops("extrapolate", "--sft", str(sft_dir), "--dpo", str(dpo_dir), "--alpha", "auto", "--alpha-grid",
                     "-0.3,0,0.5,1", "--eval", str(task), "--metric", metric, "--out", str(out), "-q", **env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    best = yaml.safe_load((out / "modelops_recipe.yaml").read_text())["modelops"]["metrics"]["alpha_search"]
    r = hub.modelops("eval", "--task", str(task), "--metric", metric, "--model", str(dpo_dir), "--model", str(out),
                     "--out", str(report), "-q", **env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = {row["system"]: row for row in json.loads((report / "results.json").read_text())["results"]}
    chosen = next(p for p in best["curve"] if p["alpha"] == best["best_alpha"])
    assert abs(rows["expo-out"]["mean"] - chosen["mean"]) < 1e-5  # eval agrees with the α search
    assert abs(rows["dpo"]["mean"] - next(p for p in best["curve"] if p["alpha"] == 0)["mean"]) < 1e-5

    r = hub.modelops("push", str(out), "alice/expo-auto")
    assert r.returncode == 0, r.stderr
    card = hub.download("alice/expo-auto", tmp_path / "pulled") / "README.md"
    text = card.read_text()
    assert "alpha_search" in text and "best_alpha" in text and "expo" in text
