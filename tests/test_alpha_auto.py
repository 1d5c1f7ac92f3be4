"""`extrapolate --alpha auto`: the in-memory sweep equals evaluating each written checkpoint, and only the winner is written."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from decode_fixtures import llama, make_tokenizer, nudged, save_with_tokenizer
from safetensors.torch import load_file
from typer.testing import CliRunner

from modelops.cli.main import app
from modelops.eval.harness import evaluate_model_folder
from modelops.eval.tasks import load_task

runner = CliRunner()
GRID = "-0.5,0,0.5,1,2"


def family(root: Path) -> tuple[Path, Path, Path]:
    tok = make_tokenizer()
    sft = llama(3)
    dpo = nudged(sft, 4, scale=0.08)
    task = root / "task.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1}"}) + "\n" for i in range(12)))
    return save_with_tokenizer(sft, root / "sft", tok), save_with_tokenizer(dpo, root / "dpo", tok), task


def test_sweep_matches_written_checkpoints_and_writes_only_the_winner(tmp_path):
    sft, dpo, task_file = family(tmp_path)
    metric = "reward:decode_fixtures:word_reward"
    out = tmp_path / "auto"
    res = runner.invoke(app, ["extrapolate", "--sft", str(sft), "--dpo", str(dpo), "--alpha", "auto", "--alpha-grid", GRID,
                              "--eval", str(task_file), "--metric", metric, "--out", str(out), "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    recipe = (out / "modelops_recipe.yaml").read_text()
    import yaml

    search = yaml.safe_load(recipe)["modelops"]["metrics"]["alpha_search"]
    curve = {p["alpha"]: p["mean"] for p in search["curve"]}
    assert sorted(curve) == [-0.5, 0.0, 0.5, 1.0, 2.0]
    assert len(set(curve.values())) > 2  # α matters here, so picking the best is a real choice

    # independent: write each α with the plain command, then evaluate the folder
    task = load_task(str(task_file), metric)
    for alpha in curve:
        folder = tmp_path / f"a{alpha}"
        r = runner.invoke(
            app,
            ["extrapolate", "--sft", str(sft), "--dpo", str(dpo), "--alpha", str(alpha), "--out", str(folder), "-q"],
        )
        assert r.exit_code == 0, r.output
        assert abs(evaluate_model_folder(folder, task, device="cpu") - curve[alpha]) < 1e-5, alpha
    best = max(curve.items(), key=lambda kv: (kv[1], -abs(kv[0])))[0]
    assert search["best_alpha"] == best
    written, expected = load_file(out / "model.safetensors"), load_file(tmp_path / f"a{best}" / "model.safetensors")
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[k], expected[k]) for k in written)
    assert "alpha_search" in (out / "README.md").read_text()
    assert (out / "alpha_curve.png").read_bytes()[:4] == b"\x89PNG" and "](alpha_curve.png)" in (
        out / "README.md"
    ).read_text()
    assert not [p for p in tmp_path.iterdir() if "modelops-tmp" in p.name]


def test_alpha_auto_needs_an_eval_task(tmp_path):
    sft, dpo, _ = family(tmp_path)
    res = runner.invoke(
        app, ["extrapolate", "--sft", str(sft), "--dpo", str(dpo), "--alpha", "auto", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "--eval" in res.output
    res = runner.invoke(
        app, ["extrapolate", "--sft", str(sft), "--dpo", str(dpo), "--alpha", "x", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "not a number" in res.output


def test_reweighter_finds_a_tied_weight_saved_under_its_other_name(tmp_path):
    from conftest import build_model, perturbed, save

    from modelops.api.alpha import Reweighter

    sft = build_model(tie=True)  # save_pretrained stores only model.embed_tokens.weight
    dpo = perturbed(sft, 5)
    save(sft, tmp_path / "sft")
    assert "lm_head.weight" not in load_file(tmp_path / "sft" / "model.safetensors")
    before = {n: p.detach().clone() for n, p in dpo.named_parameters()}
    Reweighter(dpo, str(tmp_path / "sft")).set_alpha(0.5)
    ref = dict(sft.named_parameters())
    for name, param in dpo.named_parameters():
        expected = before[name] + 0.5 * (before[name] - ref[name].detach())
        torch.testing.assert_close(param.detach(), expected)
    assert dpo.lm_head.weight is dpo.model.embed_tokens.weight
