"""Sliding-window models (Mistral, Gemma 3) in the co-decoder: past the window, with left padding and with
speculative rollbacks that differ per row, against transformers' own generate and fresh full forwards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from decode_fixtures import VOCAB, config_family, family_decoder, hf_greedy, make_tokenizer, prompts

from modelops.decode import FusionRule, SamplingConfig
from modelops.decode.loops import StopChecker
from modelops.decode.speculative import SpeculativeBatch, speculative_generate

WINDOW = 6  # prompts are 2-13 tokens and rows decode 20 more: every row passes the window


def config(arch: str, hidden: int):
    import transformers

    common = dict(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2, sliding_window=WINDOW,
                  max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    if arch == "mistral":
        return transformers.MistralConfig(**common)
    # Gemma 3: sliding and full layers mixed
    return transformers.Gemma3TextConfig(
        **common, head_dim=hidden // 4, layer_types=["sliding_attention", "full_attention"]
    )


@pytest.fixture(scope="module", params=["mistral", "gemma3"])
def sliding_family(request, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp(request.param)
    tok = make_tokenizer()
    return config_family(root, lambda hidden: config(request.param, hidden), tok, 0.05)


def test_weight_zero_decodes_like_transformers_past_the_window(sliding_family):
    texts = prompts(6, seed=2)
    dec = family_decoder(sliding_family, FusionRule("eft", weights=[0.0]))
    assert max(len(p) for p in dec._prompt_ids(texts)[0]) > WINDOW
    gens = dec.generate(texts, SamplingConfig(max_new_tokens=20), batch_size=6)
    assert [g.token_ids for g in gens] == hf_greedy(sliding_family["large"], texts, 20)


def test_rows_joining_a_running_batch_decode_like_transformers(sliding_family):
    texts = prompts(6, seed=2)
    dec = family_decoder(sliding_family, FusionRule("eft", weights=[0.0]))
    full = hf_greedy(sliding_family["large"], texts, 20)
    stop_id = full[0][4]  # a word row 0 says early: that row ends there and a prompt takes its place
    expected = [row[: row.index(stop_id) + 1] if stop_id in row else row for row in full]
    sampling = SamplingConfig(max_new_tokens=20, stop=[dec.tokenizer.decode([stop_id])])
    gens = dec.generate(texts, sampling, batch_size=2)
    assert dec.last_stats["admissions"] > 0
    assert [g.token_ids for g in gens] == expected


def test_speculative_greedy_equals_plain_with_per_row_rollbacks(sliding_family):
    dec = family_decoder(sliding_family, FusionRule("eft"))
    texts = prompts(6, seed=2)
    sampling = SamplingConfig(max_new_tokens=24)
    spec, stats = speculative_generate(dec, texts, sampling, 3, batch_size=6)
    plain = dec.generate(texts, sampling, batch_size=6)
    assert [g.token_ids for g in spec] == [g.token_ids for g in plain]
    assert 0 < stats.accepted < stats.drafted  # rows accepted and rejected: rollbacks differed between rows


def test_rolled_back_caches_equal_a_fresh_forward(sliding_family):
    """After sampled rounds with per-row rollbacks, every model's next logits equal a forward over the row's
    prompt and emitted tokens alone (no padding, no rollback: transformers' own sliding window)."""
    dec = family_decoder(sliding_family, FusionRule("eft"))
    texts = prompts(5, seed=7)
    sampling = SamplingConfig(max_new_tokens=100, temperature=1.0, seed=4)
    stopper = StopChecker(set(), [], dec.tokenizer, sampling.max_new_tokens)
    runners = dec.runners()
    batch = SpeculativeBatch(runners, dec.fuse, dec.width, sampling, stopper, 3, torch.Generator().manual_seed(4))
    prompt_ids = dec._prompt_ids(texts)
    assert batch.start(prompt_ids, dec.pad_id)
    for _ in range(8):
        assert batch.round()
    lengths = [len(o.token_ids) for o in batch.outputs]
    assert len(set(lengths)) > 1 and min(lengths) > WINDOW  # rollbacks differed; every row past the window
    for m, runner in enumerate(runners):
        nxt = runner.step(batch.pending)
        for row, out in enumerate(batch.outputs):
            ids = torch.tensor([prompt_ids[m][row] + out.token_ids])
            with torch.no_grad():
                fresh = runner.model(ids).logits[0, -1].float()
            torch.testing.assert_close(nxt[row], fresh, atol=1e-4, rtol=1e-4)


def test_search_with_prompts_joining_scores_like_full_forwards_past_the_window(sliding_family):
    from transformers import AutoModelForCausalLM

    from modelops.decode.search import chunk_beam_search

    dec = family_decoder(sliding_family, FusionRule("eft"))
    texts = prompts(5, seed=4)
    sampling = SamplingConfig(max_new_tokens=16, temperature=0.9, top_k=40, seed=3)
    kw = {"beam_width": 2, "successors": 2, "chunk_len": 4, "sampling": sampling, "keep_candidates": True}
    kw["stop_ids"] = {2, *range(5, VOCAB, 8)}  # rows end at different times, so searches end at different chunks
    stats: dict = {}
    joined = chunk_beam_search(*dec.members, texts, batch_size=2, stats=stats, **kw)
    alone = chunk_beam_search(*dec.members, texts, batch_size=1, **kw)
    assert stats["admissions"] >= 1
    assert [[c.token_ids for c in r.candidates] for r in joined] == [[c.token_ids for c in r.candidates] for r in alone]
    small = {role: AutoModelForCausalLM.from_pretrained(sliding_family[role]).eval() for role in ("base", "expert")}

    def logprob(role: str, prompt_ids: list[int], resp: list[int]) -> float:
        with torch.no_grad():
            logp = torch.log_softmax(small[role](torch.tensor([prompt_ids + resp])).logits[0].double(), -1)
        return float(sum(logp[len(prompt_ids) - 1 + t, y] for t, y in enumerate(resp)))

    past = 0
    for text, res in zip(texts, joined, strict=True):
        p_ids = dec.members[1].render(text)
        for cand in res.candidates:
            past += len(p_ids) + len(cand.token_ids) > WINDOW
            want = logprob("expert", p_ids, cand.token_ids) - logprob("base", p_ids, cand.token_ids)
            assert cand.score == pytest.approx(want, abs=2e-4)
    assert past >= 5
