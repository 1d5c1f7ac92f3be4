"""extract-lora end to end: the adapter is loaded back by peft and compared on logits with the tuned model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from lora_fixtures import gpt2, llama, load, load_peft, logits, save, tune
from safetensors import safe_open

from modelops import api
from modelops.errors import CheckpointError


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lora_pairs")
    base, tied, g2 = llama(), llama(tie=True, seed=1), gpt2(seed=2)
    return {
        "base": save(base, d / "base"),
        "tuned": save(tune(base), d / "tuned"),
        "noisy": save(tune(base, noise=0.02, seed=4), d / "noisy"),
        "tied_base": save(tied, d / "tied_base"),
        "tied_tuned": save(tune(tied, seed=5), d / "tied_tuned"),
        "gpt2_base": save(g2, d / "gpt2_base"),
        "gpt2_tuned": save(tune(g2, seed=6, norms_biases=True), d / "gpt2_tuned"),
        "wide": save(llama(intermediate=80), d / "wide"),
    }


def extract(pairs, out: Path, base="base", tuned="tuned", **kw) -> Path:
    """Through the public API, which also writes the model card."""
    api.extract_lora(str(pairs[base]), str(pairs[tuned]), out, **kw)
    return out


def keys(path: Path) -> dict[str, list[int]]:
    with safe_open(str(path / "adapter_model.safetensors"), "pt") as f:
        return {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118


def test_exact_low_rank_delta_reproduces_tuned_logits_through_peft(pairs, tmp_path: Path) -> None:
    out = extract(pairs, tmp_path / "ad", rank=4)
    model, key_warnings = load_peft(pairs["base"], out)
    assert key_warnings == []
    torch.testing.assert_close(logits(model), logits(load(pairs["tuned"])), atol=1e-4, rtol=1e-4)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["inference_mode"] is True and cfg["r"] == 4 and cfg["lora_alpha"] == 4
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert cfg["modules_to_save"] == ["model.embed_tokens"]  # the changed embedding row, saved whole
    assert cfg["base_model_name_or_path"] == "base"  # absolute local paths are never recorded
    k = keys(out)
    assert all(n.startswith("base_model.model.") for n in k)
    assert k["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"] == [4, 64]
    assert k["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"] == [32, 4]
    report = json.loads((out / "extraction_report.json").read_text())
    assert report["summary"]["modules"] == 14 and report["summary"]["max_rel_error"] < 1e-5
    recipe = yaml.safe_load((out / "modelops_recipe.yaml").read_text())
    assert recipe["modelops"]["operation"] == "extract-lora"
    assert [i["role"] for i in recipe["modelops"]["inputs"]] == ["base", "tuned"]
    assert recipe["modelops"]["metrics"]["modules"] == 14
    assert (out / "README.md").is_file()


def test_reported_errors_match_an_independent_exact_svd(pairs, tmp_path: Path) -> None:
    out = extract(pairs, tmp_path / "ad", base="base", tuned="noisy", rank=3)
    report = {r["module"]: r for r in json.loads((out / "extraction_report.json").read_text())["modules"]}
    base, tuned = load(pairs["base"]).state_dict(), load(pairs["noisy"]).state_dict()
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        for module in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj"):
            delta = tuned[module + ".weight"] - base[module + ".weight"]
            s = torch.linalg.svdvals(delta.double())
            best = float((s[3:].pow(2).sum() / s.pow(2).sum()).sqrt())  # Eckart–Young optimum at rank 3
            B = f.get_tensor(f"base_model.model.{module}.lora_B.weight")
            A = f.get_tensor(f"base_model.model.{module}.lora_A.weight")
            actual = float((delta - B @ A).norm() / delta.norm())
            assert report[module]["rel_error"] == pytest.approx(actual, rel=1e-3)
            assert actual == pytest.approx(best, rel=5e-3)
            assert report[module]["energy"] == pytest.approx(1 - best**2, abs=1e-3)


def test_energy_mode_ranks_go_to_rank_pattern(pairs, tmp_path: Path) -> None:
    out = extract(pairs, tmp_path / "ad", base="base", tuned="noisy", rank=None, energy=0.6, max_rank=12)
    cfg = json.loads((out / "adapter_config.json").read_text())
    base, tuned = load(pairs["base"]).state_dict(), load(pairs["noisy"]).state_dict()
    k = keys(out)
    for name in [n for n in base if n.endswith("proj.weight")]:
        module = name.removesuffix(".weight")
        s2 = torch.linalg.svdvals((tuned[name] - base[name]).double()).pow(2)
        cum = torch.cumsum(s2, 0) / s2.sum()
        want = min(int((cum < 0.6 - 1e-9).sum()) + 1, 12)
        got = cfg["rank_pattern"].get(module, cfg["r"])
        assert got == want and cfg["alpha_pattern"].get(module, cfg["lora_alpha"]) == got
        assert k[f"base_model.model.{module}.lora_A.weight"][0] == got
    _, key_warnings = load_peft(pairs["base"], out)  # peft builds every module at its own rank
    assert key_warnings == []


@pytest.mark.parametrize("embeddings", ["full", "lora"])
def test_tied_embedding_follows_to_the_output_layer(pairs, tmp_path: Path, embeddings: str) -> None:
    out = extract(pairs, tmp_path / "ad", base="tied_base", tuned="tied_tuned", rank=4, embeddings=embeddings)
    model, key_warnings = load_peft(pairs["tied_base"], out)
    assert key_warnings == []
    torch.testing.assert_close(logits(model), logits(load(pairs["tied_tuned"])), atol=1e-4, rtol=1e-4)
    assert json.loads((out / "adapter_config.json").read_text())["ensure_weight_tying"] is True


def test_embeddings_skip_is_reported_not_silent(pairs, tmp_path: Path) -> None:
    out = extract(pairs, tmp_path / "ad", rank=4, embeddings="skip")
    report = json.loads((out / "extraction_report.json").read_text())
    skipped = [r for r in report["modules"] if r["status"] == "skipped"]
    assert [r["module"] for r in skipped] == ["model.embed_tokens"]
    assert any("embed_tokens" in w for w in report["warnings"])
    assert not any("embed_tokens" in k for k in keys(out))


def test_gpt2_conv1d_with_norms_and_biases_saved(pairs, tmp_path: Path) -> None:
    out = extract(pairs, tmp_path / "ad", base="gpt2_base", tuned="gpt2_tuned", rank=4, other="full")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["fan_in_fan_out"] is True and cfg["lora_bias"] is True
    k = keys(out)
    assert k["base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight"] == [4, 32]  # Conv1D stores (in, out)
    assert k["base_model.model.transformer.h.0.mlp.c_fc.lora_B.weight"] == [128, 4]
    model, key_warnings = load_peft(pairs["gpt2_base"], out)
    assert key_warnings == []
    torch.testing.assert_close(logits(model), logits(load(pairs["gpt2_tuned"])), atol=1e-4, rtol=1e-4)


def test_gpt2_changed_norms_are_reported_by_default(pairs, tmp_path: Path) -> None:
    out = extract(pairs, tmp_path / "ad", base="gpt2_base", tuned="gpt2_tuned", rank=4)
    report = json.loads((out / "extraction_report.json").read_text())
    reported = {r["module"] for r in report["modules"] if r["status"] == "reported"}
    assert "transformer.h.0.ln_1.weight" in reported and "transformer.h.1.mlp.c_fc.bias" in reported
    assert any("--other full" in w for w in report["warnings"])


def test_selected_modules_only(pairs, tmp_path: Path) -> None:
    out = extract(pairs, tmp_path / "ad", rank=2, modules="q_proj,v_proj")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert set(cfg["target_modules"]) == {"q_proj", "v_proj"}
    assert {k.split(".")[-3] for k in keys(out) if "lora_" in k} == {"q_proj", "v_proj"}


@pytest.mark.parametrize(
    ("kw", "tuned", "match"),
    [
        ({"rank": 40}, "tuned", r"maximum rank 32 of model\.layers\.0\.self_attn\.q_proj"),
        ({"rank": 4}, "wide", r"down_proj.weight: shape \[32, 64\] in .* but \[32, 80\]"),
        ({"rank": 4, "modules": "nope"}, "tuned", "no linear module of that name"),
        ({"rank": 4}, "gpt2_tuned", "architectures differ"),
    ],
)
def test_bad_input_is_refused_before_writing(pairs, tmp_path: Path, kw, tuned, match) -> None:
    out = tmp_path / "ad"
    with pytest.raises(CheckpointError, match=match):
        extract(pairs, out, tuned=tuned, **kw)
    assert not out.exists() and list(tmp_path.iterdir()) == []
