"""apply-lora: the streamed merge equals peft's merge_and_unload() on tensors and logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from lora_fixtures import gpt2, llama, load, load_peft, logits, save, tune
from safetensors.torch import load_file, save_file

from modelops import api
from modelops.errors import CheckpointError, ModelopsError
from modelops.lora.extract import ExtractOptions, plan_extraction, run_extraction


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from peft import LoraConfig, get_peft_model

    d = tmp_path_factory.mktemp("lora_apply")
    base, g2, tied = llama(seed=10), gpt2(seed=11), llama(tie=True, seed=12)
    paths = {
        "base": save(base, d / "base"),
        "wide": save(llama(seed=10, intermediate=80), d / "wide"),
        "gpt2": save(g2, d / "gpt2"),
        "tied": save(tied, d / "tied"),
        "tied_tuned": save(tune(tied, seed=13), d / "tied_tuned"),
    }
    # Adapters made by peft itself, with random (non-zero) B so every module really changes.
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj", "lm_head"],
        rank_pattern={"model.layers.1.self_attn.q_proj": 2, "down_proj": 6},
        alpha_pattern={"model.layers.0.self_attn.v_proj": 3},
        use_rslora=True,
        modules_to_save=["model.norm"],
        init_lora_weights=False,
    )
    pm = get_peft_model(llama(seed=10), cfg)
    with torch.no_grad():
        pm.base_model.model.model.norm.modules_to_save["default"].weight.mul_(1.5)
    pm.save_pretrained(d / "peft_llama")
    gcfg = LoraConfig(
        r=3, lora_alpha=5, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, init_lora_weights=False
    )
    get_peft_model(gpt2(seed=11), gcfg).save_pretrained(d / "peft_gpt2")
    paths.update(peft_llama=d / "peft_llama", peft_gpt2=d / "peft_gpt2")
    return paths


def apply(world, base: str, adapter: Path | str, out: Path, **kw) -> Path:
    """Through the public API, which also writes the model card."""
    api.apply_lora(str(world.get(base, base)), str(world.get(adapter, adapter)), out, **kw)
    return out


def assert_equals_merge_and_unload(world, base: str, adapter: Path, out: Path) -> None:
    peft_model, key_warnings = load_peft(world[base], adapter)
    assert key_warnings == []
    merged = peft_model.merge_and_unload()
    ours = load_file(str(out / "model.safetensors"))
    for name, t in ours.items():
        torch.testing.assert_close(t, merged.state_dict()[name], atol=1e-6, rtol=1e-5, msg=name)
    torch.testing.assert_close(logits(load(out)), logits(merged), atol=1e-5, rtol=1e-5)


def test_patterns_rslora_and_modules_to_save_match_peft(world, tmp_path: Path) -> None:
    out = apply(world, "base", "peft_llama", tmp_path / "merged")
    assert_equals_merge_and_unload(world, "base", world["peft_llama"], out)
    assert (out / "config.json").is_file() and (out / "generation_config.json").is_file()
    recipe = yaml.safe_load((out / "modelops_recipe.yaml").read_text())
    assert recipe["modelops"]["operation"] == "apply-lora"
    assert [i["role"] for i in recipe["modelops"]["inputs"]] == ["base", "adapter"]
    assert (out / "README.md").is_file()


def test_gpt2_conv1d_fan_in_fan_out_matches_peft(world, tmp_path: Path) -> None:
    out = apply(world, "gpt2", "peft_gpt2", tmp_path / "merged")
    assert_equals_merge_and_unload(world, "gpt2", world["peft_gpt2"], out)


def test_extract_then_apply_round_trip(world, tmp_path: Path) -> None:
    tuned = save(tune(load(world["base"]), seed=14), tmp_path / "tuned")
    ad = tmp_path / "ad"
    run_extraction(plan_extraction(str(world["base"]), str(tuned), ExtractOptions(rank=4), out=ad), ad)
    out = apply(world, "base", ad, tmp_path / "merged")
    assert_equals_merge_and_unload(world, "base", ad, out)
    torch.testing.assert_close(logits(load(out)), logits(load(tuned)), atol=1e-4, rtol=1e-4)


def test_tied_embedding_lora_is_added_once(world, tmp_path: Path) -> None:
    """peft ties the output LoRA to the embedding LoRA; the merged checkpoint must hold ΔE once, i.e. be the
    tuned model (peft 0.21's own merge_and_unload adds the tied delta twice here, so compare with the truth)."""
    ad = tmp_path / "ad"
    opts = ExtractOptions(rank=4, embeddings="lora")
    run_extraction(plan_extraction(str(world["tied"]), str(world["tied_tuned"]), opts, out=ad), ad)
    out = apply(world, "tied", ad, tmp_path / "merged")
    tuned = load(world["tied_tuned"])
    torch.testing.assert_close(logits(load(out)), logits(tuned), atol=1e-4, rtol=1e-4)
    peft_model, _ = load_peft(world["tied"], ad)
    torch.testing.assert_close(logits(load(out)), logits(peft_model), atol=1e-4, rtol=1e-4)


def test_output_dtype(world, tmp_path: Path) -> None:
    out = apply(world, "base", "peft_llama", tmp_path / "merged", dtype="bfloat16")
    assert {t.dtype for t in load_file(str(out / "model.safetensors")).values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_adapter_for_another_base_is_refused(world, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    with pytest.raises(CheckpointError, match=r"down_proj\.lora_A\.weight is \[6, 64\] but .* needs \[6, 80\]"):
        apply(world, "wide", "peft_llama", out)
    assert not out.exists()


def test_folder_without_config_is_refused(world, tmp_path: Path) -> None:
    bad = tmp_path / "no_config"
    shutil.copytree(world["peft_llama"], bad)
    (bad / "adapter_config.json").unlink()
    with pytest.raises(ModelopsError, match=r"no adapter_config\.json"):
        apply(world, "base", bad, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_keys_without_peft_prefix_are_refused(world, tmp_path: Path) -> None:
    bad = tmp_path / "no_prefix"
    shutil.copytree(world["peft_llama"], bad)
    sd = load_file(str(bad / "adapter_model.safetensors"))
    save_file({k.removeprefix("base_model.model."): v for k, v in sd.items()}, str(bad / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match=r"lacks the 'base_model\.model\.' prefix"):
        apply(world, "base", bad, tmp_path / "merged")
