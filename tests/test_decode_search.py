"""Weak-to-strong search (CBS, best-of-N) against plain sampling and against scores from plain model forwards."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from decode_fixtures import make_tokenizer, prompts  # the decode_family fixture comes from conftest.py
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelops.decode import CoDecoder, FusionRule, SamplingConfig
from modelops.decode.search import SearchResult, best_of_n, chunk_beam_search
from modelops.decode.textsync import Detok, detok_push
from modelops.decode.vocab import VocabularyMismatch

SAMPLING = {"temperature": 0.9, "top_k": 40, "top_p": 0.95}
EOS = 2


def members(fam: dict[str, Path], large: Path | None = None, chat: str = "none"):
    decoder = CoDecoder.load(
        str(large or fam["large"]), str(fam["base"]), [str(fam["expert"])], FusionRule("eft"),
        chat_template_for=chat, check_vocabulary=large is None,
    )  # fmt: skip
    return decoder.members


def plain_sample(path: Path, texts: list[str], seed: int, max_new: int, ids: list | None = None) -> list[list[int]]:
    """The lock-step sampler with the large model alone (rule "single"), one batch of all texts."""
    decoder = CoDecoder.load(str(path), rule=FusionRule("single"))
    cfg = SamplingConfig(max_new_tokens=max_new, seed=seed, **SAMPLING)
    return [g.token_ids for g in decoder.generate(texts, cfg, ids=ids, batch_size=len(texts))]


def response_logprob(path: Path, prompt_ids: list[int], resp_ids: list[int]) -> float:
    """Σ log π(y_t | x, y_<t) over the response, from one plain forward of the whole sequence."""
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.tensor([prompt_ids + resp_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    n = len(prompt_ids)
    return float(sum(logp[n - 1 + t, y] for t, y in enumerate(resp_ids)))


def rescore(fam, mem, prompt: str, resp_ids: list[int]) -> float:
    """log π_S+ − log π_S− of the large model's response ids, each small model with its own prompt rendering."""
    base, expert = mem[1], mem[2]
    return response_logprob(fam["expert"], expert.render(prompt), resp_ids) - response_logprob(
        fam["base"], base.render(prompt), resp_ids
    )


def cfg(max_new: int, seed: int = 0) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=max_new, seed=seed, **SAMPLING)


def test_cbs_1_1_inf_samples_exactly_like_plain_sampling(decode_family):
    texts = prompts(4, seed=5)
    mem = members(decode_family)
    ours = chunk_beam_search(*mem, texts, beam_width=1, successors=1, chunk_len=None, sampling=cfg(14, 7), batch_size=4)
    # each prompt draws from its own stream (seed, id): the lock-step sampler over the same prompts draws the same
    theirs = plain_sample(decode_family["large"], texts, 7, 14)
    assert [r.token_ids for r in ours] == theirs
    assert any(r[-1] == EOS for r in theirs) or all(len(r) == 14 for r in theirs)


def test_incremental_scores_equal_full_rescoring(decode_family):
    texts = prompts(3, seed=1)
    mem = members(decode_family, chat="expert")  # the expert sees a chat template, the others plain text
    stats: dict = {}
    out = chunk_beam_search(
        *mem, texts, beam_width=2, successors=2, chunk_len=3, sampling=cfg(12, 7), keep_candidates=True, stats=stats
    )
    reasons = {c.finish_reason for r in out for c in r.candidates}
    assert reasons == {"eos", "length"}  # finished early (scored with their EOS) and cut at max_new_tokens
    checked = 0
    for prompt, res in zip(texts, out, strict=True):
        assert res.candidates and res.score == max(c.score for c in res.candidates)
        for cand in res.candidates:
            assert cand.score == pytest.approx(rescore(decode_family, mem, prompt, cand.token_ids), abs=2e-4)
            checked += 1
    assert checked >= 3 * 4 and stats["chunks"] >= 4
    # incremental: each small model was fed every sampled token exactly once, never the whole response again
    assert stats["small_tokens_fed"] == 2 * stats["rows_sampled"]


def test_best_of_n_returns_the_best_of_n_plain_samples(decode_family):
    prompt = prompts(1, seed=9)[0]
    mem = members(decode_family)
    res = best_of_n(*mem, [prompt], n=6, sampling=cfg(10, 11), keep_candidates=True)[0]
    # row j of the prompt (id 0) samples from the stream keyed (0, j), row 0 from the prompt's own
    samples = plain_sample(decode_family["large"], [prompt] * 6, 11, 10, ids=[0, *((0, j) for j in range(1, 6))])
    assert [c.token_ids for c in res.candidates] == samples
    scores = [rescore(decode_family, mem, prompt, s) for s in samples]
    best = max(range(6), key=lambda i: scores[i])
    assert res.token_ids == samples[best]
    assert res.score == pytest.approx(scores[best], abs=2e-4)
    assert len(set(map(tuple, samples))) > 1  # the N samples differ, so the choice means something


def test_batching_prompts_gives_the_same_results_as_one_at_a_time(decode_family):
    texts = prompts(5, seed=2)
    mem = members(decode_family)
    kw = {"beam_width": 2, "successors": 3, "chunk_len": 4, "sampling": cfg(12, 21)}
    together = chunk_beam_search(*mem, texts, batch_size=5, **kw)
    alone = chunk_beam_search(*mem, texts, batch_size=1, **kw)
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert [r.score for r in together] == pytest.approx([r.score for r in alone], abs=1e-4)


def test_search_result_fields(decode_family):
    mem = members(decode_family)
    res = chunk_beam_search(*mem, prompts(2, seed=4), beam_width=2, successors=2, chunk_len=2, sampling=cfg(6, 1))
    for r in res:
        assert isinstance(r, SearchResult) and r.num_tokens == len(r.token_ids) <= 6
        assert r.finish_reason in ("eos", "length") and math.isfinite(r.score)
        assert r.text == mem[0].tokenizer.decode(
            r.token_ids[:-1] if r.finish_reason == "eos" else r.token_ids, skip_special_tokens=True
        )


@pytest.fixture(scope="module")
def shifted_large(decode_family, tmp_path_factory) -> Path:
    """The large model saved with a tokenizer of the same words under other ids (word ids rotated by 5)."""
    folder = tmp_path_factory.mktemp("shifted") / "large"
    shutil.copytree(decode_family["large"], folder)
    make_tokenizer(shift=5).save_pretrained(folder)
    return folder


def test_different_tokenizer_logit_rules_refuse_but_cbs_scores_the_text(decode_family, shifted_large):
    fam = {k: str(v) for k, v in decode_family.items()}
    with pytest.raises(VocabularyMismatch, match="--rule cbs"):
        CoDecoder.load(str(shifted_large), fam["base"], [fam["expert"]], FusionRule("eft"))
    mem = members(decode_family, large=shifted_large)
    texts = prompts(3, seed=6)
    stats: dict = {}
    out = chunk_beam_search(
        *mem, texts, beam_width=2, successors=2, chunk_len=3, sampling=cfg(10, 5), keep_candidates=True, stats=stats
    )
    assert (stats["base_input"], stats["expert_input"]) == ("text", "text")
    large_tok = AutoTokenizer.from_pretrained(shifted_large)
    small_tok = AutoTokenizer.from_pretrained(decode_family["base"])
    for prompt, res in zip(texts, out, strict=True):
        for cand in res.candidates:
            eos = cand.finish_reason == "eos"
            ids = cand.token_ids[:-1] if eos else cand.token_ids
            full = large_tok.decode(large_tok(prompt)["input_ids"] + ids, skip_special_tokens=True)
            small_ids = small_tok(full)["input_ids"] + ([EOS] if eos else [])
            p_ids = small_tok(prompt)["input_ids"]
            assert small_ids[: len(p_ids)] == p_ids
            resp = small_ids[len(p_ids) :]
            want = response_logprob(decode_family["expert"], p_ids, resp) - response_logprob(
                decode_family["base"], p_ids, resp
            )
            assert cand.score == pytest.approx(want, abs=2e-4)
    # the ids really differ between the two tokenizers, so this was a text-level run
    assert large_tok("w10")["input_ids"] != small_tok("w10")["input_ids"]


def byte_tokenizer():
    """A byte-level BPE (GPT-2 style) trained on a few strings: every byte has its own token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<pad>", "<s>", "</s>"]
    )
    tok.train_from_iterator(["café 東京", "hello world", "東京 café"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def test_detokenizer_holds_back_a_split_utf8_character():
    tok = byte_tokenizer()
    byte_char = {b: c for b, c in enumerate(bytes_to_unicode())}
    text = "café 東京"
    ids = [tok.convert_tokens_to_ids(byte_char[b]) for b in text.encode("utf-8")]  # one token per byte
    assert len(ids) == len(text.encode("utf-8"))
    prompt_ids = tok("hello ")["input_ids"]
    state, pieces = Detok.start(prompt_ids), []
    for i, t in enumerate(ids):
        state, piece = detok_push(tok, state, [t], final=i == len(ids) - 1)
        pieces.append(piece)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text
    assert pieces[-3:] == ["", "", "京"]  # the three bytes of 京 come out together, with the last
    # chunked pushes across the split give the same text
    state, out = Detok.start(prompt_ids), ""
    for lo in range(0, len(ids), 4):
        state, piece = detok_push(tok, state, ids[lo : lo + 4], final=lo + 4 >= len(ids))
        out += piece
    assert out == text


def bytes_to_unicode() -> list[str]:
    """GPT-2's byte → printable character map (the alphabet of a ByteLevel pre-tokenizer), indexed by byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]


def bpe_tokenizer():
    """A byte-level BPE with merges (words become one or two tokens), for a small model of another family."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=330, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<pad>", "<s>", "</s>"]
    )
    corpus = ["w17 w170 w1 w7 hello world", "café 東京 naïve", "hello café w17 東京"] * 3
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def test_text_level_scoring_rolls_back_retokenized_boundaries_and_matches_a_full_forward():
    """Byte-by-byte chunks from a large model cut words and characters; the BPE small model re-tokenizes the text,
    rolls its cache back where a token boundary moved, and still scores exactly the final text."""
    from decode_fixtures import llama

    from modelops.decode.models import Member
    from modelops.decode.textsync import SmallSide

    large_tok, small_tok = byte_tokenizer(), bpe_tokenizer()
    byte_char = bytes_to_unicode()
    prompt, response = "hello", " w170 café w17 東京 naïve w1"
    ids = [large_tok.convert_tokens_to_ids(byte_char[b]) for b in response.encode("utf-8")]
    model = llama(3, vocab=len(small_tok))
    side = SmallSide(Member("base", "bpe", model, small_tok), text_mode=True)
    side.admit([prompt, prompt])
    side.select([0, 1, 1])  # rows 1 and 2 are copies: same cache, fed differently sized chunks below
    states = [Detok.start(large_tok("hello")["input_ids"])] * 3
    texts = ["", "", ""]
    sizes = [3, 5, 2]
    pos = [0, 0, 0]
    while min(pos) < len(ids):
        news = []
        for r in range(3):
            chunk = ids[pos[r] : pos[r] + sizes[r]]
            pos[r] += len(chunk)
            states[r], piece = detok_push(large_tok, states[r], chunk, final=pos[r] >= len(ids))
            texts[r] += piece
            news.append(chunk)
        side.advance([side.target(r, news[r], texts[r], eos=pos[r] >= len(ids)) for r in range(3)])
    assert texts == [response] * 3
    p_ids = small_tok(prompt)["input_ids"]
    full = small_tok(prompt + response)["input_ids"] + [small_tok.eos_token_id]
    assert full[: len(p_ids)] == p_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), -1)
    want = float(sum(logp[t - 1, full[t]] for t in range(len(p_ids), len(full))))
    assert side.logprobs() == pytest.approx([want] * 3, abs=2e-4)
    assert side.tokens_fed > 3 * (len(full) - len(p_ids))  # some boundary tokens were rolled back and re-fed


def test_cli_cbs_and_bon_write_scores_and_the_logit_rules_point_to_cbs(decode_family, shifted_large, tmp_path):
    import json

    from typer.testing import CliRunner

    from modelops.cli.main import app

    fam = {k: str(v) for k, v in decode_family.items()}
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts(3))))
    common = ["--prompts", str(src), "--small-base", fam["base"], "--expert", fam["expert"], "-q"]
    sampling = ["--max-new-tokens", "8", "--temperature", "0.7", "--top-k", "50", "--seed", "3"]
    runner = CliRunner()
    for rule, extra in (("cbs", ["--beam-width", "2", "--successors", "2", "--chunk-len", "3"]), ("bon", ["--n", "4"])):
        out = tmp_path / f"{rule}.jsonl"
        res = runner.invoke(app, ["fuse-decode", "--large", str(shifted_large), "--rule", rule, "--out", str(out), *common, *sampling, *extra])  # fmt: skip
        assert res.exit_code == 0, res.output
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["id"] for r in rows] == ["p0", "p1", "p2"]
        assert all(math.isfinite(r["score"]) and r["num_tokens"] <= 8 for r in rows)
        one = tmp_path / f"{rule}-groups-of-1.jsonl"
        res = runner.invoke(app, ["fuse-decode", "--large", str(shifted_large), "--rule", rule, "--out", str(one), "--static-batches", "--batch-size", "1", *common, *sampling, *extra])  # fmt: skip
        assert res.exit_code == 0, res.output
        alone = [json.loads(line) for line in one.read_text().splitlines()]
        assert [r["score"] for r in alone] == pytest.approx([r["score"] for r in rows], abs=1e-4)
        assert [{**r, "score": 0} for r in alone] == [{**r, "score": 0} for r in rows]
    res = runner.invoke(
        app,
        ["fuse-decode", "--large", str(shifted_large), "--rule", "eft", "--out", str(tmp_path / "x.jsonl"), *common],
    )
    assert res.exit_code == 1 and "--rule cbs" in res.output


MANY_STOPS = {EOS, *range(5, 96, 8)}  # rows end after a few tokens, so searches of one batch end at different times


def test_prompts_joining_a_running_search_get_what_they_get_searched_alone(decode_family):
    texts = prompts(7, seed=12)
    mem = members(decode_family)
    kw = {"beam_width": 2, "successors": 2, "chunk_len": 3, "sampling": cfg(12, 6), "keep_candidates": True}
    kw["stop_ids"] = MANY_STOPS
    stats: dict = {}
    done: list[int] = []
    joined = chunk_beam_search(*mem, texts, batch_size=3, stats=stats, on_batch=done.append, **kw)
    alone = chunk_beam_search(*mem, texts, batch_size=1, **kw)
    groups = chunk_beam_search(*mem, texts, batch_size=3, continuous=False, **kw)
    assert stats["admissions"] >= 2 and sum(done) == 7  # prompts joined searches still under way
    assert len({len(r.token_ids) for r in joined}) > 1
    for a, b, c in zip(joined, alone, groups, strict=True):
        assert a.token_ids == b.token_ids == c.token_ids
        assert [x.token_ids for x in a.candidates] == [x.token_ids for x in b.candidates]
        assert [x.token_ids for x in a.candidates] == [x.token_ids for x in c.candidates]
        assert [x.score for x in a.candidates] == pytest.approx([x.score for x in b.candidates], abs=1e-4)
    for prompt, res in zip(texts[3:], joined[3:], strict=True):  # those that joined: scored as plain forwards score
        for cand in res.candidates:
            assert cand.score == pytest.approx(rescore(decode_family, mem, prompt, cand.token_ids), abs=2e-4)


def test_best_of_n_scored_every_few_tokens_with_prompts_joining_equals_scoring_once(decode_family):
    texts = prompts(5, seed=3)
    mem = members(decode_family)
    kw = {"n": 3, "sampling": cfg(12, 8), "keep_candidates": True, "stop_ids": MANY_STOPS}
    stats: dict = {}
    pieces = best_of_n(*mem, texts, batch_size=2, score_every=4, stats=stats, **kw)
    once = best_of_n(*mem, texts, batch_size=5, score_every=12, continuous=False, **kw)
    assert stats["admissions"] >= 1 and stats["chunks"] > 3
    assert stats["small_tokens_fed"] == 2 * stats["rows_sampled"]  # every token fed once, in pieces
    for a, b in zip(pieces, once, strict=True):
        assert a.token_ids == b.token_ids and a.score == pytest.approx(b.score, abs=1e-4)
        pairs = sorted((c.token_ids, c.score) for c in a.candidates)
        want = sorted((c.token_ids, c.score) for c in b.candidates)
        assert [p[0] for p in pairs] == [w[0] for w in want]
        assert [p[1] for p in pairs] == pytest.approx([w[1] for w in want], abs=1e-4)
    for prompt, res in zip(texts, pieces, strict=True):
        assert res.score == pytest.approx(rescore(decode_family, mem, prompt, res.token_ids), abs=2e-4)


def test_text_level_search_with_prompts_joining_equals_searching_each_alone(decode_family, shifted_large):
    mem = members(decode_family, large=shifted_large)
    texts = prompts(5, seed=7)
    kw = {"beam_width": 2, "successors": 2, "chunk_len": 3, "sampling": cfg(10, 5), "stop_ids": MANY_STOPS}
    stats: dict = {}
    joined = chunk_beam_search(*mem, texts, batch_size=2, stats=stats, **kw)
    alone = chunk_beam_search(*mem, texts, batch_size=1, **kw)
    assert stats["admissions"] >= 1 and (stats["base_input"], stats["expert_input"]) == ("text", "text")
    assert [r.token_ids for r in joined] == [r.token_ids for r in alone]
    assert [r.score for r in joined] == pytest.approx([r.score for r in alone], abs=1e-4)
