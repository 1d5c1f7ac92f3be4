"""The co-decoder against transformers itself and against the rules computed on full forwards."""

from __future__ import annotations

import pytest
import torch
from decode_fixtures import full_logprobs, hf_greedy, load, prompts

from modelops.decode import CoDecoder, FusedLogitsProcessor, FusionRule, SamplingConfig


def tokens_of(decoder: CoDecoder, texts: list[str], max_new: int, batch_size: int) -> list[list[int]]:
    gens = decoder.generate(texts, SamplingConfig(max_new_tokens=max_new), batch_size=batch_size)
    return [g.token_ids for g in gens]


@pytest.mark.parametrize("batch_size", [1, 9])
def test_weight_zero_decodes_exactly_like_the_large_model(decode_family, batch_size):
    texts = prompts(9)
    fam = {k: str(v) for k, v in decode_family.items()}
    decoder = CoDecoder.load(fam["large"], fam["base"], [fam["expert"]], FusionRule("eft", weights=[0.0]))
    ours = tokens_of(decoder, texts, 16, batch_size)
    theirs = (
        hf_greedy(decode_family["large"], texts, 16)
        if batch_size > 1
        else [hf_greedy(decode_family["large"], [t], 16)[0] for t in texts]
    )
    assert ours == theirs
    assert any(len(r) < 16 for r in theirs) and any(len(r) == 16 for r in theirs)  # both stop kinds covered


def test_expert_equal_to_small_base_changes_nothing(decode_family):
    texts = prompts(6, seed=3)
    fam = {k: str(v) for k, v in decode_family.items()}
    decoder = CoDecoder.load(fam["large"], fam["base"], [fam["base"]], FusionRule("eft"))
    assert tokens_of(decoder, texts, 12, 6) == hf_greedy(decode_family["large"], texts, 12)


RULE_CASES = [
    ("eft", {"weights": [1.0]}),
    ("eft", {"weights": [0.5], "gamma": 1.5}),
    ("proxy", {"weights": [2.0]}),
    ("fixed", {"weights": [0.3, 0.7]}),
    ("dlf", {}),
]


@pytest.mark.parametrize(("rule", "kwargs"), RULE_CASES)
def test_scored_logprobs_equal_the_rule_on_full_forwards(decode_family, rule, kwargs):
    text, cont = "w1 w2 w3", "w10 w20 w30 w40"
    experts = ["expert", "expert2"] if rule in ("fixed", "dlf") else ["expert"]
    fam = {k: str(v) for k, v in decode_family.items()}
    decoder = CoDecoder.load(fam["large"], fam["base"], [fam[e] for e in experts], FusionRule(rule, **kwargs))
    ours = torch.tensor(decoder.score([text], [cont])[0])
    cont_ids = decoder.tokenizer(cont, add_special_tokens=False)["input_ids"]
    ll = full_logprobs(decode_family["large"], text, cont_ids)
    lb = full_logprobs(decode_family["base"], text, cont_ids)
    les = [full_logprobs(decode_family[e], text, cont_ids) for e in experts]
    if rule == "dlf":  # independent grid search, position by position
        from test_decode_rules import naive_dlf

        fused_rows = []
        for t in range(len(cont_ids)):
            _, alpha, k = naive_dlf(ll[t], lb[t], [e[t] for e in les], [round(0.1 * i, 1) for i in range(21)])
            fused_rows.append(ll[t] + alpha * (les[k][t] - lb[t]))
        fused = torch.stack(fused_rows)
    elif rule == "fixed":
        fused = ll + sum(w * (e - lb) for w, e in zip(kwargs["weights"], les, strict=True))
    else:
        w, g = kwargs["weights"][0], kwargs.get("gamma", 1.0)
        fused = lb + g * (ll - lb) + w * (les[0] - lb)
    expected = torch.log_softmax(fused, -1).gather(1, torch.tensor(cont_ids)[:, None])[:, 0]
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_scoring_keeps_no_cache_and_only_the_positions_that_predict_a_continuation(decode_family):
    """Every model's scoring forward runs without a KV cache and returns the logits of the longest continuation's
    positions (+1), not the whole (B, T, V); the scores still equal the unbatched ones."""
    fam = {k: str(v) for k, v in decode_family.items()}
    decoder = CoDecoder.load(fam["large"], fam["base"], [fam["expert"]], FusionRule("eft"))
    seen = []
    hooks = [
        m.model.register_forward_hook(lambda mod, args, kwargs, out: seen.append((kwargs, out.logits.shape)),
                                      with_kwargs=True)
        for m in decoder.members
    ]  # fmt: skip
    prompts_, conts = ["w1 w2 w3 w4 w5 w6", "w7"], ["w10 w20", "w30 w40 w50"]
    together = decoder.score(prompts_, conts)
    for hook in hooks:
        hook.remove()
    assert len(seen) == 3 and all(kw["use_cache"] is False and kw["logits_to_keep"] == 4 for kw, _ in seen)
    assert all(shape[:2] == (2, 4) for _, shape in seen)
    alone = [decoder.score([p], [c])[0] for p, c in zip(prompts_, conts, strict=True)]
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=1e-5)


def test_dlf_with_expert_equal_to_base_chooses_alpha_zero_every_step(decode_family):
    fam = {k: str(v) for k, v in decode_family.items()}
    decoder = CoDecoder.load(fam["large"], fam["base"], [fam["base"]], FusionRule("dlf"))
    gens = decoder.generate(prompts(4), SamplingConfig(max_new_tokens=8), batch_size=4)
    for g in gens:
        assert len(g.weights) == g.num_tokens and all(w == [0.0] for w in g.weights)


def test_dlf_trace_has_one_active_expert_per_step(decode_family):
    fam = {k: str(v) for k, v in decode_family.items()}
    decoder = CoDecoder.load(fam["large"], fam["base"], [fam["expert"], fam["expert2"]], FusionRule("dlf"))
    gens = decoder.generate(prompts(3), SamplingConfig(max_new_tokens=10), batch_size=3)
    steps = [w for g in gens for w in g.weights]
    assert all(sum(1 for x in w if x != 0) <= 1 for w in steps)
    assert any(any(x != 0 for x in w) for w in steps)  # the experts do get used


def test_finished_rows_leave_without_changing_the_others(decode_family):
    texts = prompts(8, seed=5)
    fam = {k: str(v) for k, v in decode_family.items()}
    decoder = CoDecoder.load(fam["large"], fam["base"], [fam["expert"]], FusionRule("eft", weights=[1.5]))
    batched = decoder.generate(texts, SamplingConfig(max_new_tokens=14), batch_size=8)
    single = decoder.generate(texts, SamplingConfig(max_new_tokens=14), batch_size=1)
    assert [g.text for g in batched] == [g.text for g in single]
    assert {g.finish_reason for g in batched} == {"eos", "length"}


def test_stop_strings_end_a_row_and_are_cut_from_the_text(decode_family):
    fam = {k: str(v) for k, v in decode_family.items()}
    decoder = CoDecoder.load(fam["large"])
    free = decoder.generate(["w5 w6"], SamplingConfig(max_new_tokens=10))[0]
    words = free.text.split()
    assert len(words) >= 3
    stopped = decoder.generate(["w5 w6"], SamplingConfig(max_new_tokens=10, stop=[words[2]]))[0]
    assert stopped.finish_reason == "stop" and stopped.text.split() == words[:2]


def test_sampling_is_reproducible_with_a_seed(decode_family):
    fam = {k: str(v) for k, v in decode_family.items()}
    decoder = CoDecoder.load(fam["large"], fam["base"], [fam["expert"]], FusionRule("eft"))
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.9, top_k=20, top_p=0.95, seed=7)
    a = decoder.generate(prompts(4), cfg)
    b = decoder.generate(prompts(4), SamplingConfig(**{**cfg.__dict__}))
    assert [g.text for g in a] == [g.text for g in b]


def test_chat_template_goes_only_to_the_expert(decode_family):
    fam = {k: str(v) for k, v in decode_family.items()}
    decoder = CoDecoder.load(fam["large"], fam["base"], [fam["expert"]], chat_template_for="expert")
    large_ids, expert_ids = decoder.members[0].render("w3"), decoder.members[2].render("w3")
    tok = decoder.tokenizer
    assert tok.convert_ids_to_tokens(large_ids) == ["<s>", "w3"]
    assert expert_ids == tok("user w3 bot")["input_ids"]
    assert decoder.generate(["w3"], SamplingConfig(max_new_tokens=3))[0].num_tokens >= 1


def test_logits_processor_inside_generate_matches_the_co_decoder(decode_family):
    texts = prompts(5, seed=9)
    fam = {k: str(v) for k, v in decode_family.items()}
    for rule in (FusionRule("eft", weights=[1.0]), FusionRule("dlf")):
        decoder = CoDecoder.load(fam["large"], fam["base"], [fam["expert"]], rule)
        ours = tokens_of(decoder, texts, 10, 5)
        large, tok = load(decode_family["large"])
        proc = FusedLogitsProcessor(
            load(decode_family["base"])[0], [load(decode_family["expert"])[0]], rule, pad_token_id=0, tokenizers=[tok]
        )
        enc = tok(texts, return_tensors="pt", padding=True, padding_side="left")
        out = large.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=0, logits_processor=[proc])
        theirs = [r[: r.index(2) + 1] if 2 in r else r for r in out[:, enc.input_ids.shape[1] :].tolist()]
        assert ours == theirs, rule.name


def test_padded_logit_rows_are_never_chosen_and_missing_ids_get_delta_zero(tmp_path, decode_family):
    from decode_fixtures import llama, make_tokenizer, nudged, save_with_tokenizer

    tok = make_tokenizer()  # 96 real tokens
    wide = save_with_tokenizer(llama(5, hidden=64, vocab=128), tmp_path / "wide", tok)  # 32 rows past the tokenizer
    base_model = llama(6, vocab=90)  # lacks ids 90-95
    base = save_with_tokenizer(base_model, tmp_path / "base90", tok)
    expert = save_with_tokenizer(nudged(base_model, 7), tmp_path / "expert90", tok)
    decoder = CoDecoder.load(str(wide), str(base), [str(expert)], FusionRule("eft"))
    gens = decoder.generate(prompts(6), SamplingConfig(max_new_tokens=12, temperature=1.0, seed=0))
    assert all(t < 96 for g in gens for t in g.token_ids)

    text, cont = "w1 w2", "w3 w4 w84 w91"  # ids 7 8 88 95: the last is past the small models' 90 rows
    cont_ids = tok(cont, add_special_tokens=False)["input_ids"]
    assert max(cont_ids) >= 90  # one continuation token the small models do not have
    ours = torch.tensor(decoder.score([text], [cont])[0])
    ll = full_logprobs(wide, text, cont_ids)[:, :96]
    lb, le = full_logprobs(base, text, cont_ids), full_logprobs(expert, text, cont_ids)
    fused = torch.log_softmax(ll, -1).clone()
    fused[:, :90] += le - lb  # the delta exists only where both small models have the token
    expected = torch.log_softmax(fused, -1).gather(1, torch.tensor(cont_ids)[:, None])[:, 0]
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
