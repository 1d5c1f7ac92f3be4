"""Tokenizer merging (`tokenizer: {source: union | base | <model>}`): the merged vocabulary, and embedding and
head rows that follow it, checked row by row against hand-picked rows of the inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modelops.api import merge
from modelops.merge import recipe_from_dict

VOCAB_A = ["<pad>", "<eos>", "a", "b", "c", "d"]
VOCAB_B = ["<pad>", "<eos>", "b", "a", "e", "f"]  # shares a, b (other ids), lacks c, d, adds e, f


def _model(folder: Path, vocab: list[str], seed: int) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<pad>"))
    tok.pre_tokenizer = WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=0,
        eos_token_id=1,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def two_vocabs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vocab")
    return {"a": _model(root / "a", VOCAB_A, 1), "b": _model(root / "b", VOCAB_B, 2)}


def test_union_vocabulary_and_rows(two_vocabs, load_state, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = {
        "merge_method": "linear",
        "models": [
            {"model": str(two_vocabs["a"]), "parameters": {"weight": 0.25}},
            {"model": str(two_vocabs["b"]), "parameters": {"weight": 0.75}},
        ],
        "tokenizer": {"source": "union"},
    }
    out = tmp_path / "union"
    merge(recipe_from_dict(recipe), out)
    tok = AutoTokenizer.from_pretrained(out)
    vocab = tok.get_vocab()
    assert vocab == {w: i for i, w in enumerate([*VOCAB_A, "e", "f"])}  # A's order, then what B adds
    assert tok("a e c f")["input_ids"] == [2, 6, 4, 7]
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 8
    got, a, b = load_state(out), load_state(two_vocabs["a"]), load_state(two_vocabs["b"])
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        ia, ib = {w: i for i, w in enumerate(VOCAB_A)}, {w: i for i, w in enumerate(VOCAB_B)}
        for word, row in vocab.items():
            if word in ia and word in ib:  # both have it: the weighted mean of their own rows
                want = 0.25 * a[key][ia[word]] + 0.75 * b[key][ib[word]]
            else:  # only one model has it: that model's row, untouched by the other
                want = a[key][ia[word]] if word in ia else b[key][ib[word]]
            assert torch.allclose(got[key][row], want, atol=1e-6), (key, word)
    for key in got:
        if "embed" not in key and "lm_head" not in key:
            assert torch.allclose(got[key], 0.25 * a[key] + 0.75 * b[key], atol=1e-6)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model(torch.tensor([tok("a e f")["input_ids"]])).logits.shape == (1, 3, 8)


def test_base_vocabulary_takes_nothing_from_a_model_lacking_a_token(two_vocabs, load_state, tmp_path: Path) -> None:
    """tokenizer_source base with TIES: B lacks c and d, so those rows of the merge are the base's own rows."""
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": str(two_vocabs["a"]),
        "models": [{"model": str(two_vocabs["b"]), "parameters": {"weight": 0.5}}],
        "tokenizer_source": "base",
    }
    out = tmp_path / "base"
    merge(recipe_from_dict(recipe), out)
    got, a, b = load_state(out), load_state(two_vocabs["a"]), load_state(two_vocabs["b"])
    emb = "model.embed_tokens.weight"
    assert got[emb].shape == a[emb].shape
    assert torch.equal(got[emb][4], a[emb][4]) and torch.equal(got[emb][5], a[emb][5])  # c, d
    assert torch.allclose(got[emb][2], a[emb][2] + 0.5 * (b[emb][3] - a[emb][2]), atol=1e-6)  # a: B's id 3


def test_vocabulary_padding_rows_are_the_mean(two_vocabs, load_state, tmp_path: Path) -> None:
    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(p), "parameters": {"weight": 1.0}} for p in two_vocabs.values()],
        "tokenizer": {"source": "union", "pad_to_multiple_of": 16},
    }
    out = tmp_path / "pad"
    merge(recipe_from_dict(recipe), out)
    got = load_state(out)["model.embed_tokens.weight"]
    assert got.shape[0] == 16 and json.loads((out / "config.json").read_text())["vocab_size"] == 16
    assert torch.allclose(got[8:], got[:8].mean(dim=0).expand(8, -1), atol=1e-6)


def test_a_model_vocabulary(two_vocabs, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(p), "parameters": {"weight": 1.0}} for p in two_vocabs.values()],
        "tokenizer_source": str(two_vocabs["b"]),
    }
    merge(recipe_from_dict(recipe), tmp_path / "o")
    assert AutoTokenizer.from_pretrained(tmp_path / "o").get_vocab() == {w: i for i, w in enumerate(VOCAB_B)}
