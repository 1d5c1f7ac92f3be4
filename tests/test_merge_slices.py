"""Layer surgery and gradients: `slices:` recipes and mergekit's depth rules, checked against tensors assembled by
hand and against transformers loading the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import llama, logits_of, save
from merge_reference import gradient, layer_of, ties_by_hand

from modelops.api import merge
from modelops.merge import recipe_from_dict

IDS = torch.tensor([[1, 5, 9, 33, 17, 4, 60]])


def test_frankenmerge_stacks_and_renumbers_layers(deep_family, load_state, tmp_path: Path) -> None:
    """mergekit's 44-layer example scaled: layers [0, 5) of m1 then [3, 8) of m2 give a 10-layer model whose
    embeddings come from m1 (first slice) and final norm and head from m2 (last slice)."""
    recipe = {
        "slices": [
            {"sources": [{"model": str(deep_family["m1"]), "layer_range": [0, 5]}]},
            {"sources": [{"model": str(deep_family["m2"]), "layer_range": [3, 8]}]},
        ],
        "merge_method": "passthrough",
        "dtype": "float32",
    }
    out = tmp_path / "stacked"
    merge(recipe_from_dict(recipe), out)
    got, a, b = load_state(out), load_state(deep_family["m1"]), load_state(deep_family["m2"])
    want = {k: v for k, v in a.items() if layer_of(k) is None and "embed" in k}
    want |= {k: v for k, v in b.items() if layer_of(k) is None and "embed" not in k}
    for k in range(10):
        src, layer = (a, k) if k < 5 else (b, k - 5 + 3)
        prefix = f"model.layers.{layer}."
        want |= {f"model.layers.{k}." + n[len(prefix) :]: v for n, v in src.items() if n.startswith(prefix)}
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 10
    # transformers builds the 10-layer model from the config and computes the same logits as the hand-made state
    from transformers import AutoModelForCausalLM

    ref = llama(10)
    ref.load_state_dict(want)
    assert torch.allclose(logits_of(out, IDS), ref(IDS).logits, atol=1e-5)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.generate(IDS, max_new_tokens=3, do_sample=False).shape == (1, IDS.shape[1] + 3)


def test_passthrough_scale_damps_one_slice(deep_family, load_state, tmp_path: Path) -> None:
    recipe = {
        "slices": [
            {"sources": [{"model": str(deep_family["m1"]), "layer_range": [0, 4]}]},
            {"sources": [{"model": str(deep_family["m1"]), "layer_range": [2, 8], "parameters": {"scale": 0.5}}]},
        ],
        "merge_method": "passthrough",
    }
    merge(recipe_from_dict(recipe), tmp_path / "o")
    got, a = load_state(tmp_path / "o"), load_state(deep_family["m1"])
    assert torch.equal(got["model.layers.3.mlp.up_proj.weight"], a["model.layers.3.mlp.up_proj.weight"])
    assert torch.equal(got["model.layers.4.mlp.up_proj.weight"], a["model.layers.2.mlp.up_proj.weight"] * 0.5)
    assert torch.equal(got["lm_head.weight"], a["lm_head.weight"] * 0.5)  # the last slice's model and scale


def test_mergekit_ties_example_gradients_follow_depth_rules(deep_family, load_state, tmp_path: Path) -> None:
    """mergekit's published TIES config: a gradient is interpolated at layer i/(n−1); every tensor outside the
    layers (embeddings, final norm, lm_head) is at depth 0; filter lists fall back to the entry without filter."""
    recipe = {
        "models": [
            {"model": str(deep_family["m1"]), "parameters": {"density": [1, 0.7, 0.1], "weight": 1.0}},
            {"model": str(deep_family["m2"]), "parameters": {"density": 0.5, "weight": [0, 0.3, 0.7, 1]}},
            {
                "model": str(deep_family["m3"]),
                "parameters": {"density": 0.33, "weight": [{"filter": "mlp", "value": 0.5}, {"value": 0}]},
            },
        ],
        "merge_method": "ties",
        "base_model": str(deep_family["base"]),
        "parameters": {"normalize": True, "int8_mask": True},
        "dtype": "float32",
    }
    merge(recipe_from_dict(recipe), tmp_path / "ties")
    got = load_state(tmp_path / "ties")
    base, ms = load_state(deep_family["base"]), [load_state(deep_family[f"m{i}"]) for i in (1, 2, 3)]

    for name, value in got.items():
        layer = layer_of(name)
        t = layer / 7 if layer is not None else 0.0
        densities = [gradient([1, 0.7, 0.1], t), 0.5, 0.33]
        weights = [1.0, gradient([0, 0.3, 0.7, 1], t), 0.5 if "mlp" in name else 0.0]
        want = ties_by_hand(base[name], [m[name] for m in ms], weights, densities)
        assert torch.allclose(value.double(), want, atol=1e-6), name
    # depth 0 outside the layers: m2's weight gradient gives 0 there, so the head is m1's TIES-trimmed delta alone
    head_w = [1.0, 0.0, 0.0]
    want_head = ties_by_hand(base["lm_head.weight"], [m["lm_head.weight"] for m in ms], head_w, [1.0, 0.5, 0.33])
    assert torch.allclose(got["lm_head.weight"].double(), want_head, atol=1e-6)


def test_slice_parameters_and_a_slice_base(deep_family, load_state, tmp_path: Path) -> None:
    """A slice's own parameters apply to its layers; depth restarts in each slice (one layer: t = 1)."""
    recipe = {
        "slices": [
            {
                "sources": [
                    {"model": str(deep_family["m1"]), "layer_range": [0, 4]},
                    {"model": str(deep_family["m2"]), "layer_range": [0, 4]},
                ],
                "parameters": {"t": [0.0, 1.0]},
            },
            {
                "sources": [
                    {"model": str(deep_family["m1"]), "layer_range": [7, 8]},
                    {"model": str(deep_family["m2"]), "layer_range": [7, 8]},
                ],
                "parameters": {"t": [0.2, 0.6]},
            },
        ],
        "merge_method": "slerp",
        "base_model": str(deep_family["m1"]),
    }
    merge(recipe_from_dict(recipe), tmp_path / "s")
    got, a, b = load_state(tmp_path / "s"), load_state(deep_family["m1"]), load_state(deep_family["m2"])
    key = "mlp.down_proj.weight"
    assert torch.equal(got[f"model.layers.0.{key}"], a[f"model.layers.0.{key}"])  # t = 0: the base
    assert torch.allclose(got[f"model.layers.3.{key}"], b[f"model.layers.3.{key}"], atol=1e-6)  # t = 1
    # the second slice is one layer: depth 1, so t = 0.6, from layer 7 of both models, written as layer 4
    x, y = a[f"model.layers.7.{key}"].double(), b[f"model.layers.7.{key}"].double()
    theta = torch.acos((x / x.norm() * y / y.norm()).sum())
    want = (torch.sin(0.4 * theta) * x + torch.sin(0.6 * theta) * y) / torch.sin(theta)
    assert torch.allclose(got[f"model.layers.4.{key}"].double(), want, atol=1e-6)
    assert torch.equal(got["model.embed_tokens.weight"], a["model.embed_tokens.weight"])  # depth 0 → t = 0


def test_stacking_rebuilds_per_layer_config_lists(tmp_path: Path, load_state) -> None:
    """A model whose config lists one entry per layer (Qwen2's layer_types) gets the list of the layers it keeps."""
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=2,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).eval()
    src = save(model, tmp_path / "q")
    assert json.loads((src / "config.json").read_text())["layer_types"][2] == "sliding_attention"
    recipe = {
        "slices": [
            {"sources": [{"model": str(src), "layer_range": [2, 4]}]},
            {"sources": [{"model": str(src), "layer_range": [0, 3]}]},
        ],
        "merge_method": "passthrough",
    }
    merge(recipe_from_dict(recipe), tmp_path / "o")
    cfg_out = json.loads((tmp_path / "o" / "config.json").read_text())
    assert cfg_out["num_hidden_layers"] == 5
    assert cfg_out["layer_types"] == ["sliding_attention"] * 2 + ["full_attention"] * 2 + ["sliding_attention"]
    stacked = AutoModelForCausalLM.from_pretrained(tmp_path / "o")
    assert stacked.config.layer_types == cfg_out["layer_types"]
    stacked(IDS)  # runs with its mixed attention layers


def test_missing_layer_is_one_clear_line(deep_family, tmp_path: Path) -> None:
    from modelops.errors import CheckpointError

    recipe = {
        "slices": [{"sources": [{"model": str(deep_family["m1"]), "layer_range": [6, 10]}]}],
        "merge_method": "passthrough",
    }
    with pytest.raises(CheckpointError, match="has no layer 8"):
        merge(recipe_from_dict(recipe), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_untouched_inputs(deep_family) -> None:
    """Nothing above wrote into an input folder."""
    for path in deep_family.values():
        assert sorted(p.name for p in path.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
