"""Large models spread by accelerate device maps: the CPU-only analogue of spreading over GPUs is offloading part of
the model to the CPU or disk, where accelerate's hooks move weights and inputs at every forward."""

from __future__ import annotations

import json

import torch
from decode_fixtures import prompts
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from modelops.cli.main import app
from modelops.decode import CoDecoder, FusionRule, SamplingConfig
from modelops.decode.models import Member
from modelops.devices import input_device
from modelops.runtime.models import load_causal_lm, memory_beside, weight_bytes

# the embedding, the first layer and the head on disk (their weights are `meta` in the model), the rest on the CPU
EMBEDDING_ON_DISK = {
    "model.embed_tokens": "disk",
    "model.layers.0": "disk",
    "model.layers.1": "cpu",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "disk",
}


def offloaded_family(decode_family, tmp_path) -> list[Member]:
    large = AutoModelForCausalLM.from_pretrained(
        decode_family["large"], device_map=EMBEDDING_ON_DISK, offload_folder=str(tmp_path / "offload")
    ).eval()
    members = [Member("large", "large", large, AutoTokenizer.from_pretrained(decode_family["large"]))]
    for role, key in (("base", "base"), ("expert", "expert")):
        model, tok = load_causal_lm(str(decode_family[key]))
        members.append(Member(role, key, model, tok))
    return members


def test_input_device_sees_through_an_offloaded_embedding(decode_family, tmp_path):
    members = offloaded_family(decode_family, tmp_path)
    large = members[0].model
    assert large.get_input_embeddings().weight.device.type == "meta"  # what the first parameter says
    assert input_device(large) == torch.device("cpu")  # where accelerate's hook computes it
    assert input_device(members[1].model) == torch.device("cpu")


def test_a_large_model_with_its_embedding_offloaded_decodes_and_scores_like_the_plain_one(decode_family, tmp_path):
    fam = {k: str(v) for k, v in decode_family.items()}
    texts = prompts(6)
    sampling = SamplingConfig(max_new_tokens=10)
    plain = CoDecoder.load(fam["large"], fam["base"], [fam["expert"]], FusionRule("eft"))
    spread = CoDecoder(offloaded_family(decode_family, tmp_path), FusionRule("eft"))
    want = plain.generate(texts, sampling, batch_size=3)
    got = spread.generate(texts, sampling, batch_size=3)  # rows finish and the next prompts join
    assert [g.token_ids for g in got] == [g.token_ids for g in want]
    conts = [g.text for g in want]
    for a, b in zip(spread.score(texts, conts), plain.score(texts, conts), strict=True):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-5)


def test_cli_device_map_auto_writes_the_same_results(decode_family, tmp_path):
    fam = {k: str(v) for k, v in decode_family.items()}
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": t}) + "\n" for i, t in enumerate(prompts(4))))
    rows = []
    for extra in ([], ["--device-map", "auto"]):
        out = tmp_path / f"r{len(extra)}.jsonl"
        args = ["--large", fam["large"], "--small-base", fam["base"], "--expert", fam["expert"], "--rule", "eft"]
        args += ["--prompts", str(src), "--out", str(out), "--max-new-tokens", "8", "--device", "cpu", *extra]
        res = CliRunner().invoke(app, ["fuse-decode", "-q", *args])
        assert res.exit_code == 0, res.output
        rows.append([json.loads(line) for line in out.read_text().splitlines()])
    assert rows[0] == rows[1]


def test_the_device_map_leaves_room_for_the_small_models_on_their_device():
    available = {0: 80 << 30, 1: 80 << 30, "cpu": 100 << 30}
    assert memory_beside(available, 5 << 30, "cuda") == {0: 75 << 30, 1: 80 << 30, "cpu": 100 << 30}
    assert memory_beside(available, 5 << 30, "cuda:1") == {0: 80 << 30, 1: 75 << 30, "cpu": 100 << 30}
    assert memory_beside(available, 5 << 30, "cpu")["cpu"] == 95 << 30
    assert memory_beside(available, 90 << 30, "cuda")[0] == 0  # nothing left: the map must go elsewhere
    assert memory_beside({"cpu": 1}, 5, "mps") == {"cpu": 1}  # a device accelerate did not list: unchanged


def test_weight_bytes_are_what_the_loaded_model_holds(decode_family):
    for key in ("base", "expert"):
        model = AutoModelForCausalLM.from_pretrained(decode_family[key])
        held = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}  # tied weights once
        assert weight_bytes(str(decode_family[key])) == sum(held.values())
        numel = sum(p.numel() for p in {p.data_ptr(): p for p in model.parameters()}.values())
        assert weight_bytes(str(decode_family[key]), "bfloat16") == 2 * numel
