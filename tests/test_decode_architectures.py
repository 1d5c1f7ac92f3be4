"""The co-decoder on other architectures than Llama, loaded from folders with a byte-level BPE tokenizer.

The word-level tokenizer of the other decode tests cannot stand in here: transformers picks a checkpoint's
tokenizer class from its `model_type` (Qwen2 gets `Qwen2Tokenizer`, which rebuilds a byte-level BPE), so each
family saves a real byte-level BPE trained on a small text, with multi-byte characters, which also exercises
decoding token ids that split a UTF-8 character.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from decode_fixtures import config_family, family_decoder, full_logprobs, hf_greedy

from modelops.decode import FusionRule, SamplingConfig
from modelops.decode.loops import StopChecker, lockstep_generate
from modelops.decode.speculative import speculative_generate

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a café serves crème brûlée and naïve jokes",
    "日本語のテキストと絵文字 🙂 も少し",
    "numbers 0 1 2 3 4 5 6 7 8 9 and more words",
]
PROMPTS = [
    "the",
    "a café",
    "日本語 🙂",
    "the quick brown fox jumps",
    "numbers 0 1 2 3 and",
    "crème brûlée and the lazy",
]
ARCHITECTURES = ["qwen2", "qwen3", "gpt2", "phi3", "gpt_neox", "opt"]


def bpe_tokenizer() -> Any:
    """Byte-level BPE (specials <pad> 0, <s> 1, </s> 2) trained on CORPUS: no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=360, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def config(arch: str, hidden: int, vocab: int) -> Any:
    import transformers

    ids = dict(vocab_size=vocab, pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.2)
    if arch == "gpt2":
        return transformers.GPT2Config(n_embd=hidden, n_layer=2, n_head=4, n_positions=128, **ids)
    if arch == "opt":
        return transformers.OPTConfig(hidden_size=hidden, ffn_dim=2 * hidden, num_hidden_layers=2,
                                      num_attention_heads=4, word_embed_proj_dim=hidden, init_std=0.2,
                                      **{k: v for k, v in ids.items() if k != "initializer_range"})  # fmt: skip
    common = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=128, **ids)  # fmt: skip
    if arch == "gpt_neox":
        return transformers.GPTNeoXConfig(**common)
    classes = {"qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config, "phi3": transformers.Phi3Config}
    return classes[arch](num_key_value_heads=2, **common)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch_family(request, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp(request.param)
    tok = bpe_tokenizer()
    return config_family(root, lambda hidden: config(request.param, hidden, len(tok)), tok, 0.1)


def test_weight_zero_decodes_like_transformers_with_left_padding(arch_family):
    gens = family_decoder(arch_family, FusionRule("eft", weights=[0.0])).generate(
        PROMPTS, SamplingConfig(max_new_tokens=12), batch_size=len(PROMPTS)
    )
    assert [g.token_ids for g in gens] == hf_greedy(arch_family["large"], PROMPTS, 12)


def test_rows_joining_a_running_batch_decode_like_transformers(arch_family):
    """Row 0 stops on a token it says early (a stop id), so later prompts join running batches of 2."""
    dec = family_decoder(arch_family, FusionRule("eft", weights=[0.0]))
    full = hf_greedy(arch_family["large"], PROMPTS, 12)
    stop_id = full[0][3]
    stopper = StopChecker(dec.stop_ids | {stop_id}, [], dec.tokenizer, 12)
    stats: dict = {}
    outs = lockstep_generate(dec.runners(), dec.fuse, dec._prompt_ids(PROMPTS), SamplingConfig(max_new_tokens=12),
                             stopper, dec.pad_id, rows=2, stats=stats)  # fmt: skip
    assert stats["admissions"] > 0
    assert [o.token_ids for o in outs] == [r[: r.index(stop_id) + 1] if stop_id in r else r for r in full]


def test_texts_are_the_tokenizers_decoding_of_the_tokens(arch_family):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(arch_family["large"])
    gens = family_decoder(arch_family, FusionRule("eft")).generate(
        PROMPTS, SamplingConfig(max_new_tokens=16), batch_size=3
    )
    assert [g.text for g in gens] == [tok.decode(g.token_ids, skip_special_tokens=True) for g in gens]
    assert any(len(g.token_ids) > 1 for g in gens)


def test_speculative_greedy_equals_plain_eft(arch_family):
    dec = family_decoder(arch_family, FusionRule("eft"))
    sampling = SamplingConfig(max_new_tokens=16)
    spec, stats = speculative_generate(dec, PROMPTS, sampling, 3, batch_size=len(PROMPTS))
    plain = dec.generate(PROMPTS, sampling, batch_size=len(PROMPTS))
    assert [g.token_ids for g in spec] == [g.token_ids for g in plain]
    assert stats.drafted > 0


def test_scored_eft_logprobs_equal_the_rule_on_full_forwards(arch_family):
    text, cont = "the quick", " brown fox jumps 🙂"
    dec = family_decoder(arch_family, FusionRule("eft"))
    ours = torch.tensor(dec.score([text], [cont])[0])
    cont_ids = dec.tokenizer(cont, add_special_tokens=False)["input_ids"]
    ll, lb, le = (full_logprobs(arch_family[k], text, cont_ids) for k in ("large", "base", "expert"))
    width = min(ll.shape[-1], lb.shape[-1])
    fused = ll[:, :width] + le[:, :width] - lb[:, :width]
    expected = torch.log_softmax(fused, -1).gather(1, torch.tensor(cont_ids)[:, None])[:, 0]
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_the_command_writes_what_transformers_generates(arch_family, tmp_path):
    import json

    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    from modelops.cli.main import app

    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    fam = {k: str(v) for k, v in arch_family.items()}
    res = CliRunner().invoke(app, ["fuse-decode", "-q", "--large", fam["large"], "--small-base", fam["base"],
                                   "--expert", fam["expert"], "--weight", "0", "--prompts", str(src),
                                   "--out", str(tmp_path / "r.jsonl"), "--max-new-tokens", "10"])  # fmt: skip
    assert res.exit_code == 0, res.output
    tok = AutoTokenizer.from_pretrained(arch_family["large"])
    expected = [tok.decode(ids, skip_special_tokens=True) for ids in hf_greedy(arch_family["large"], PROMPTS, 10)]
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == expected
