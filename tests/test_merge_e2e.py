"""Streamed merges on real tiny checkpoints, checked against the math done in memory on raw tensors and on logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import logits_of, logits_with_state

from modelops.api import expo_recipe, merge
from modelops.merge import recipe_from_dict

IDS = torch.tensor([[1, 5, 9, 33, 17, 4, 60], [1, 2, 3, 4, 5, 6, 7]])


def _expo_ref(sft: dict, dpo: dict, alpha: float) -> dict:
    return {k: dpo[k].double() + alpha * (dpo[k].double() - sft[k].double()) for k in dpo}


def test_extrapolate_matches_formula_and_logits(llama_family, load_state, tmp_path: Path) -> None:
    out = tmp_path / "expo"
    result = merge(expo_recipe(str(llama_family["sft"]), str(llama_family["dpo"]), 0.3), out)
    sft, dpo, got = load_state(llama_family["sft"]), load_state(llama_family["dpo"]), load_state(out)
    want = _expo_ref(sft, dpo, 0.3)
    assert set(got) == set(dpo)
    for k in want:
        assert torch.allclose(got[k].double(), want[k], atol=1e-6), k
    assert torch.allclose(
        logits_of(out, IDS), logits_with_state(out, {k: v.float() for k, v in want.items()}, IDS), atol=1e-4
    )
    assert result.tensors == len(dpo)
    assert (out / "config.json").is_file() and (out / "modelops_recipe.yaml").is_file()
    recipe = yaml.safe_load((out / "modelops_recipe.yaml").read_text())
    assert recipe["merge_method"] == "expo" and recipe["parameters"] == {"alpha": 0.3}
    assert [i["role"] for i in recipe["modelops"]["inputs"]] == ["sft", "dpo"]
    assert not any("/" in i["source"] for i in recipe["modelops"]["inputs"])  # no absolute local paths


def test_expo_identity_through_the_executor(llama_family, load_state, tmp_path: Path) -> None:
    merge(expo_recipe(str(llama_family["sft"]), str(llama_family["dpo"]), 0.5), tmp_path / "a")
    ta = recipe_from_dict(
        {
            "merge_method": "task_arithmetic",
            "base_model": str(llama_family["sft"]),
            "models": [{"model": str(llama_family["dpo"]), "parameters": {"weight": 1.5}}],
        }
    )
    merge(ta, tmp_path / "b")
    a, b = load_state(tmp_path / "a"), load_state(tmp_path / "b")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties"])
def test_multi_model_methods_on_sharded_inputs(method, llama_family, load_state, tmp_path: Path) -> None:
    from modelops.merge.methods import get_method
    from modelops.merge.registry import TensorJob

    params = {"weight": 0.6, "density": 0.5} if method not in ("linear", "task_arithmetic") else {"weight": 0.6}
    data = {
        "merge_method": method,
        "models": [
            {"model": str(llama_family["ft1"]), "parameters": params},
            {"model": str(llama_family["ft2"]), "parameters": {**params, "weight": 0.4}},
        ],
        "seed": 3,
    }
    if method != "linear":
        data["base_model"] = str(llama_family["base"])
    out = tmp_path / method
    merge(recipe_from_dict(data), out, shard_size="25KB")
    got = load_state(out)
    base, ft1, ft2 = (load_state(llama_family[k]) for k in ("base", "ft1", "ft2"))
    spec = get_method(method)
    defaults = {p.name: p.default for p in spec.params if not p.per_model}
    for k in got:
        per_model = {"weight": [0.6, 0.4], "density": [0.5, 0.5]}
        job = TensorJob(k, base[k] if method != "linear" else None, [ft1[k], ft2[k]], per_model, defaults, seed=3)
        assert torch.allclose(got[k], spec.fn(job), atol=1e-6), k
    if method == "task_arithmetic":  # and against the plain formula, independent of the registry
        for k in got:
            want = base[k] + 0.6 * (ft1[k] - base[k]) + 0.4 * (ft2[k] - base[k])
            assert torch.allclose(got[k], want, atol=1e-5)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(got) and len(set(index["weight_map"].values())) > 1
    logits_of(out, IDS)  # loads with transformers


def test_slerp_with_mergekit_gradient_and_filters(llama_family, load_state, tmp_path: Path) -> None:
    from modelops.merge.methods import slerp

    cfg = {
        "slices": [
            {
                "sources": [
                    {"model": str(llama_family["ft1"]), "layer_range": [0, 2]},
                    {"model": str(llama_family["ft2"]), "layer_range": [0, 2]},
                ]
            }
        ],
        "merge_method": "slerp",
        "base_model": str(llama_family["ft1"]),
        "parameters": {
            "t": [{"filter": "self_attn", "value": [0.0, 1.0]}, {"filter": "mlp", "value": 0.8}, {"value": 0.5}]
        },
        "dtype": "float32",
    }
    out = tmp_path / "slerp"
    merge(recipe_from_dict(cfg), out)
    got, a, b = load_state(out), load_state(llama_family["ft1"]), load_state(llama_family["ft2"])
    for k in got:
        if "self_attn" in k:
            t = float(k.split(".")[2])  # layer i of 2: depth i/(2-1)
            assert t in (0.0, 1.0)
        elif "mlp" in k:
            t = 0.8
        else:
            t = 0.5
        assert torch.allclose(got[k], slerp(a[k], b[k], t), atol=1e-6), k
    assert torch.equal(got["model.layers.0.self_attn.q_proj.weight"], a["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(got["model.layers.1.self_attn.q_proj.weight"], b["model.layers.1.self_attn.q_proj.weight"])


def test_tied_embeddings_stay_tied(tied_pair, load_state, tmp_path: Path) -> None:
    out = tmp_path / "tied"
    merge(expo_recipe(str(tied_pair["sft"]), str(tied_pair["dpo"]), 0.4), out)
    got = load_state(out)
    assert "lm_head.weight" not in got and "lm_head.weight" not in load_state(tied_pair["dpo"])
    want = _expo_ref(load_state(tied_pair["sft"]), load_state(tied_pair["dpo"]), 0.4)
    ref_logits = logits_with_state(out, {k: v.float() for k, v in want.items()}, IDS)
    assert torch.allclose(logits_of(out, IDS), ref_logits, atol=1e-4)


def test_gpt2_merge(gpt2_pair, load_state, tmp_path: Path) -> None:
    out = tmp_path / "gpt2"
    merge(
        recipe_from_dict(
            {
                "merge_method": "linear",
                "models": [str(gpt2_pair["a"]), str(gpt2_pair["b"])],
                "parameters": {"weight": 0.5},
            }
        ),
        out,
    )
    a, b, got = load_state(gpt2_pair["a"]), load_state(gpt2_pair["b"]), load_state(out)
    assert set(got) == set(a)
    for k in got:
        assert torch.allclose(got[k], (a[k] + b[k]) / 2, atol=1e-6), k
    logits_of(out, IDS)


def test_expo_with_an_added_token_row(extra_row_pair, load_state, tmp_path: Path, caplog) -> None:
    out = tmp_path / "rows"
    result = merge(expo_recipe(str(extra_row_pair["sft"]), str(extra_row_pair["dpo"]), 0.3), out)
    sft, dpo, got = load_state(extra_row_pair["sft"]), load_state(extra_row_pair["dpo"]), load_state(out)
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        assert got[k].shape[0] == 97
        want = dpo[k][:96] + 0.3 * (dpo[k][:96] - sft[k])
        assert torch.allclose(got[k][:96], want, atol=1e-6)
        assert torch.equal(got[k][96], dpo[k][96])
    assert any("extra row" in w for w in result.warnings)


def test_bf16_output_reports_the_update_that_survives(bf16_pair, load_state, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    result = merge(expo_recipe(str(bf16_pair["sft"]), str(bf16_pair["dpo"]), 0.1), out)
    sft, dpo, got = load_state(bf16_pair["sft"]), load_state(bf16_pair["dpo"]), load_state(out)
    dot = norm = 0.0
    for k in dpo:
        intended = 0.1 * (dpo[k].double() - sft[k].double())
        realised = got[k].double() - dpo[k].double()
        dot += float((intended * realised).sum())
        norm += float((intended * intended).sum())
    assert got["lm_head.weight"].dtype == torch.bfloat16
    assert result.survival == pytest.approx(dot / norm, rel=1e-3)
    assert result.survival < 0.9
    assert any("--dtype float32" in w for w in result.warnings)
    full = merge(expo_recipe(str(bf16_pair["sft"]), str(bf16_pair["dpo"]), 0.1, dtype="float32"), tmp_path / "f32")
    assert full.survival is None and load_state(tmp_path / "f32")["lm_head.weight"].dtype == torch.float32
    assert json.loads((tmp_path / "f32" / "config.json").read_text()).get("dtype") == "float32"


@pytest.mark.parametrize("method", ["nuslerp", "multislerp", "karcher"])
def test_methods_with_an_optional_base_take_config_from_the_base(method, llama_family, tmp_path: Path) -> None:
    """As mergekit: when a base is given its config and tokenizer files are the output's; else the first model's."""
    import shutil

    base = tmp_path / "base"
    shutil.copytree(llama_family["base"], base)
    cfg = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**cfg, "modelops_test_marker": "base"}))
    params = {} if method == "karcher" else {"parameters": {"weight": 0.5}}  # karcher weighs inputs equally
    models = [{"model": str(llama_family[k]), **params} for k in ("ft1", "ft2")]
    merge(recipe_from_dict({"merge_method": method, "base_model": str(base), "models": models}), tmp_path / "o")
    assert json.loads((tmp_path / "o" / "config.json").read_text())["modelops_test_marker"] == "base"
    merge(recipe_from_dict({"merge_method": method, "models": models}), tmp_path / "o2")
    assert "modelops_test_marker" not in json.loads((tmp_path / "o2" / "config.json").read_text())


def test_ties_written_in_row_blocks_matches_a_whole_tensor_formula(tmp_path: Path) -> None:
    """A tensor larger than one row block (2^19 entries) is merged and written block by block, its top-k cut
    applied as each block is rebuilt: the file equals TIES computed on the whole tensor with a stable sort
    (bf16 inputs, so many equal magnitudes sit at the cut)."""
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(0)
    shape = (1100, 512)
    base = torch.randn(shape, generator=g).bfloat16()
    fts = [(base.float() + 0.02 * torch.randint(-3, 4, shape, generator=g)).bfloat16() for _ in range(2)]
    folders = {}
    for name, t in {"base": base, "ft1": fts[0], "ft2": fts[1]}.items():
        folders[name] = tmp_path / name
        folders[name].mkdir()
        save_file({"w": t, "v": t[0].clone()}, folders[name] / "model.safetensors", metadata={"format": "pt"})
    weights, densities = [1.0, 0.5], [0.4, 0.7]
    models = [
        {"model": str(folders[k]), "parameters": {"weight": w, "density": d}}
        for k, w, d in zip(("ft1", "ft2"), weights, densities, strict=True)
    ]
    recipe = {"merge_method": "ties", "base_model": str(folders["base"]), "models": models, "dtype": "float32"}
    merge(recipe_from_dict(recipe), tmp_path / "out")
    got = load_file(tmp_path / "out" / "model.safetensors")["w"]

    b = base.double().reshape(-1)
    weighted = []
    for t, w, dens in zip(fts, weights, densities, strict=True):
        delta = t.double().reshape(-1) - b  # bf16 − bf16 is exact in float32 and float64 alike
        keep = torch.zeros_like(delta, dtype=torch.bool)
        keep[torch.sort(delta.abs(), descending=True, stable=True).indices[: int(dens * delta.numel())]] = True
        weighted.append(w * delta * keep)
    stacked = torch.stack(weighted)
    elected = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
    agree = (torch.sign(stacked) == elected) & (stacked != 0)
    mass = (stacked * agree).sum(0)
    weight = (torch.tensor(weights, dtype=torch.float64)[:, None] * agree).sum(0)
    want = b + mass / torch.where(weight == 0, 1.0, weight)
    assert torch.allclose(got.double().reshape(-1), want, atol=1e-6, rtol=0)
