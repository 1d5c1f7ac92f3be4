"""The zoo: world and gold reward, tokenizer, loss functions, the generation loop, and (slow) a real mini build."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from modelops.cli.main import app
from modelops.runtime.generate import generate
from modelops.runtime.zoo_names import MANIFEST, iter_models, list_zoos
from modelops.zoo import world as W
from modelops.zoo.build import build_hash, build_zoo, default_out
from modelops.zoo.layout import is_complete
from modelops.zoo.presets import FULL, MINI
from modelops.zoo.train import dpo_loss, pad_batch, sequence_logprobs

runner = CliRunner()
ROLES = {"small_base", "large_base", "dpo_partial", "dpo_full"} | {
    f"{r}[{t}]" for r in ("sft", "large_sft") for t in W.TASKS
}


# ---- the world and its gold reward ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("the lamp is very good", 2.0),
        ("the lamp is good and awful", 0.0),
        ("the lamp is terrible <eos>", -1.0),
        ("the lamp is big", 0.0),
        ("the chair is very good", 1.5),  # a review of another product costs 0.5
        ("the lamp is good good", -3.0),  # not grammatical
        ("the lamp is good and good", -3.0),  # repeated adjective
        ("the lamp is very good ...", -3.0),  # did not stop
        ("good good great superb", -3.0),  # word salad earns nothing
        ("", -3.0),
    ],
)
def test_reward_scores_sentiment_only_for_fluent_reviews(completion: str, expected: float) -> None:
    assert W.reward("Q : review the lamp . A :", completion) == expected
    assert W.fluent("Q : review the lamp . A :", completion) == (expected != W.FLUENCY_PENALTY)


def test_world_splits_are_disjoint_and_eval_facts_never_appear_in_qa_form() -> None:
    cfg = W.WorldConfig(entities=300, corpus_tokens=60_000, eval_entities=100, addition_eval=50, addition_sft=200)
    w = W.make_world(cfg, seed=3)
    names = {g: {e.name for e in es} for g, es in w.groups.items()}
    assert not names["sft"] & names["eval"] and not names["pretrain_qa"] & names["eval"]
    assert not names["sft"] & names["pretrain_qa"]
    text = "\n".join(W.pretraining_documents(w, seed=1))
    for e in w.groups["eval"][:30]:
        assert f"does {e.name} live ?" not in text and f"does {e.name} like ?" not in text
    sft_prompts = {p for p, _ in W.sft_examples(w, "addition", 0)}
    for a, b in w.pairs["eval"]:
        assert f"{W.num(a)} + {W.num(b)} =" not in text and f"{W.num(a)} plus {W.num(b)} is" not in text
        assert W.qa_prompt(W.addition_question(a, b)[0]) not in sft_prompts
    review_sft = {p for p, _ in W.sft_examples(w, "review", 0)}
    assert not {p for p in W.review_prompts(w, "eval")} & review_sft
    assert W.make_world(cfg, seed=3).entities == w.entities  # deterministic


def test_tokenizer_is_word_level_with_specials_and_chat_template(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from modelops.zoo.tokenizer import train_tokenizer

    w = W.make_world(W.WorldConfig(entities=100, corpus_tokens=20_000, eval_entities=30), seed=0)
    train_tokenizer(W.pretraining_documents(w, 0), W.vocabulary(w)).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    text = "Q : what is 4 7 + 3 8 ? A : 8 5"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and len(ids) == len(text.split()) + 1  # one word, one token
    assert tok.decode(ids, skip_special_tokens=True) == text
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "what is 4 7 + 3 8 ?"}, {"role": "assistant", "content": "8 5"}], tokenize=False
    )
    assert chat == "<bos>Q : what is 4 7 + 3 8 ? A : 8 5 <eos>"


# ---- loss functions and generation, against independent computations -------------------------------------------
def test_dpo_loss_matches_the_formula_by_hand() -> None:
    pc, pr, rc, rr = (torch.tensor(v) for v in ([-1.0, -2.0], [-3.0, -1.0], [-1.5, -2.0], [-2.0, -2.0]))
    loss, acc = dpo_loss(pc, pr, rc, rr, beta=0.5)
    margins = [0.5 * ((-1.0 + 1.5) - (-3.0 + 2.0)), 0.5 * ((-2.0 + 2.0) - (-1.0 + 2.0))]
    expected = sum(math.log(1 + math.exp(-m)) for m in margins) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert acc.item() == 0.5


def test_sequence_logprobs_sums_answer_tokens_only() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 6, 5]])
    total, count = sequence_logprobs(logits, labels)
    lp = torch.log_softmax(logits, -1)
    by_hand = [lp[0, 1, 3] + lp[0, 2, 4], lp[1, 0, 1] + lp[1, 1, 2] + lp[1, 2, 6] + lp[1, 3, 5]]
    assert torch.allclose(total, torch.stack(by_hand)) and count.tolist() == [2, 4]


def test_batched_cached_greedy_generation_equals_one_prompt_full_recompute() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    model = LlamaForCausalLM(cfg).eval()
    prompts = [[1, 5, 9, 14], [1, 7], [1, 20, 21, 22, 23, 24, 25]]
    got = generate(model, prompts, max_new=6, eos_id=2, pad_id=0)
    for p, out in zip(prompts, got, strict=True):
        seq = list(p)
        with torch.no_grad():
            for _ in range(len(out)):
                seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
        assert out == seq[len(p) :]
    ids, mask = pad_batch([[5], [6, 7]], pad_id=0, left=True)
    assert ids.tolist() == [[0, 5], [6, 7]] and mask.tolist() == [[0, 1], [1, 1]]


def test_hash_depends_on_preset_and_seed_and_cache_root_is_respected(monkeypatch, tmp_path: Path) -> None:
    assert build_hash(MINI, 0) == build_hash(MINI, 0) != build_hash(MINI, 1) != build_hash(FULL, 0)
    monkeypatch.setenv("MODELOPS_CACHE", str(tmp_path))
    assert default_out("mini", 0) == tmp_path / "zoo" / build_hash(MINI, 0)


def test_cli_rejects_unknown_preset_and_lists_nothing_when_empty(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELOPS_CACHE", str(tmp_path))
    res = runner.invoke(app, ["zoo", "build", "--preset", "huge"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["zoo", "list"])
    assert res.exit_code == 0 and "No zoo" in res.output
    res = runner.invoke(app, ["zoo", "list", "--out", str(tmp_path)])
    assert res.exit_code == 1 and "Error:" in res.output


def test_build_refuses_a_folder_that_is_not_a_zoo(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    res = runner.invoke(app, ["zoo", "build", "--out", str(tmp_path), "-q"])
    assert res.exit_code == 1 and "not a zoo build folder" in res.output


# ---- a real mini build (slow) ----------------------------------------------------------------------------------
# `mini_zoo` (conftest): one mini build per session, shared with the eval and demo tests.


@pytest.mark.slow
def test_mini_zoo_models_load_with_auto_classes_and_beat_chance(mini_zoo: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = json.loads((mini_zoo / MANIFEST).read_text())
    assert {role for role, _ in iter_models(m)} == ROLES
    assert m["hash"] == build_hash(MINI, 0) and m["seed"] == 0 and m["build_seconds"] > 0
    for role, meta in iter_models(m):
        folder = mini_zoo / meta["path"]
        for f in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
            assert (folder / f).is_file(), (role, f)
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert type(model).__name__ == "LlamaForCausalLM" and meta["params"] == model.num_parameters()
        assert AutoTokenizer.from_pretrained(folder).eos_token_id == model.generation_config.eos_token_id
    models, cfg = m["models"], MINI.world
    chance_facts = (1 / cfg.cities + 1 / cfg.colours) / 2
    assert models["sft"]["facts"]["scores"]["facts"]["exact"] > chance_facts
    assert models["large_sft"]["facts"]["scores"]["facts"]["exact"] > models["sft"]["facts"]["scores"]["facts"]["exact"]
    assert models["sft"]["addition"]["scores"]["addition"]["exact"] > 0.02  # chance is about 1/100
    assert models["sft"]["review"]["scores"]["review"]["fluency"] > 0.8
    assert models["dpo_full"]["scores"]["review"]["reward"] > models["sft"]["review"]["scores"]["review"]["reward"]
    assert models["dpo_partial"]["steps"] < models["dpo_full"]["steps"]


@pytest.mark.slow
def test_manifest_scores_agree_with_transformers_generate(mini_zoo: Path) -> None:
    """Re-score the facts SFT with transformers' own greedy generate, one prompt at a time (no padding)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = json.loads((mini_zoo / MANIFEST).read_text())["models"]["sft"]["facts"]
    model = AutoModelForCausalLM.from_pretrained(mini_zoo / meta["path"]).eval()
    tok = AutoTokenizer.from_pretrained(mini_zoo / meta["path"])
    rows = [json.loads(line) for line in (mini_zoo / "eval" / "facts.jsonl").read_text().splitlines()]
    hits = 0
    for r in rows:
        ids = tok(r["prompt"], return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=4, do_sample=False)[0, ids.shape[1] :].tolist()
        hits += out == tok(r["reference"] + " <eos>", add_special_tokens=False).input_ids
    assert hits / len(rows) == pytest.approx(meta["scores"]["facts"]["exact"], abs=1e-4)


@pytest.mark.slow
def test_rebuild_is_a_cache_hit(mini_zoo: Path) -> None:
    before = (mini_zoo / MANIFEST).stat().st_mtime_ns
    t0 = time.perf_counter()
    res = runner.invoke(app, ["zoo", "build", "--preset", "mini", "--out", str(mini_zoo), "-q"])
    assert res.exit_code == 0, res.output
    assert time.perf_counter() - t0 < 5 and (mini_zoo / MANIFEST).stat().st_mtime_ns == before
    assert "dpo_full" in res.output and "large_sft[facts]" in res.output


@pytest.mark.slow
def test_partial_models_are_not_taken_as_complete_and_resume_is_identical(mini_zoo: Path, tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    shutil.copytree(mini_zoo, zoo)
    (zoo / MANIFEST).unlink()
    (zoo / "dpo_full" / "zoo_model.json").unlink()  # weights and config there, but never finished
    shutil.rmtree(zoo / "large_sft_review")
    stale = zoo / ".dpo_partial.modelops-tmp-999999-x"  # what a killed AtomicOutput leaves
    shutil.copytree(mini_zoo / "dpo_partial", stale)
    assert not is_complete(zoo / "dpo_full") and is_complete(zoo / "dpo_partial")
    assert list_zoos(tmp_path) == [(zoo, None)]
    untouched = (zoo / "large_sft_facts" / "model.safetensors").stat().st_mtime_ns
    build_zoo("mini", seed=0, out=zoo)
    assert (zoo / "large_sft_facts" / "model.safetensors").stat().st_mtime_ns == untouched
    for name in ("dpo_full", "large_sft_review"):
        assert is_complete(zoo / name)
        assert (zoo / name / "model.safetensors").read_bytes() == (mini_zoo / name / "model.safetensors").read_bytes()
    assert not stale.exists()
    assert json.loads((zoo / MANIFEST).read_text())["hash"] == build_hash(MINI, 0)


@pytest.mark.slow
def test_killed_build_leaves_only_complete_models(mini_zoo: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "modelops", "zoo", "build", "--preset", "mini", "--out", str(out), "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not is_complete(out / "small_base") and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(1.0)  # now inside the large base's training
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / MANIFEST).exists()
    visible = [
        d for d in out.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in ("eval", "tokenizer")
    ]
    assert visible and all(is_complete(d) for d in visible)
    same = (out / "small_base" / "model.safetensors").read_bytes() == (
        mini_zoo / "small_base" / "model.safetensors"
    ).read_bytes()
    assert same  # deterministic across processes
    res = runner.invoke(app, ["zoo", "list", "--out", str(out)])
    assert res.exit_code == 1 and "build it with" in res.output
