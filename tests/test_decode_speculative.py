"""Speculative up-scaling: greedy ≡ plain EFT, sampled ≡ the exact fused distribution, caches stay consistent."""

from __future__ import annotations

import itertools

import pytest
import torch
from decode_fixtures import llama, make_tokenizer, nudged, prompts, save_with_tokenizer
from transformers import AutoModelForCausalLM

from modelops.decode import CoDecoder, FusionRule, SamplingConfig
from modelops.decode.acceptance import (
    accept_greedy,
    accept_sampled,
    greedy_next,
    greedy_prefix,
    sampled_next,
    sampled_prefix,
)
from modelops.decode.loops import StopChecker
from modelops.decode.speculative import SpeculativeBatch, next_draft_len, speculative_generate
from modelops.errors import ModelopsError

EOS = 2


@pytest.fixture(scope="session")
def related_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Large and expert are both close to the small base, so drafts are often accepted (and sometimes not)."""
    root = tmp_path_factory.mktemp("spec_related")
    tok = make_tokenizer()
    base = llama(1)
    return {
        "large": str(save_with_tokenizer(nudged(base, 21, 0.03), root / "large", tok)),
        "base": str(save_with_tokenizer(base, root / "base", tok)),
        "expert": str(save_with_tokenizer(nudged(base, 11, 0.03), root / "expert", tok)),
        "expert2": str(save_with_tokenizer(nudged(base, 12, 0.03), root / "expert2", tok)),
    }


@pytest.fixture(scope="session")
def tiny_vocab_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """12 tokens (4 specials + w0…w7): small enough to enumerate every 3-token continuation exactly."""
    root = tmp_path_factory.mktemp("spec_tiny")
    tok = make_tokenizer(n_words=8)
    base = llama(1, vocab=12, std=0.1)
    return {
        "large": str(save_with_tokenizer(nudged(base, 21, 0.06), root / "large", tok)),
        "base": str(save_with_tokenizer(base, root / "base", tok)),
        "expert": str(save_with_tokenizer(nudged(base, 11, 0.06), root / "expert", tok)),
    }


def eft(fam: dict[str, str], experts: tuple[str, ...] = ("expert",), rule: FusionRule | None = None) -> CoDecoder:
    return CoDecoder.load(fam["large"], fam["base"], [fam[e] for e in experts], rule or FusionRule("eft"))


def plain_tokens(decoder: CoDecoder, texts: list[str], sampling: SamplingConfig, batch_size: int) -> list[list[int]]:
    return [g.token_ids for g in decoder.generate(texts, sampling, batch_size=batch_size)]


# -- the acceptance rule on hand-made tensors -------------------------------------------------------------------


def test_greedy_acceptance_keeps_the_matching_prefix_then_emits_argmax():
    target = torch.full((3, 3, 6), -1.0)
    for pos, tok in enumerate([3, 1, 4]):
        target[:, pos, tok] = 5.0  # argmax p: 3, then 1, then 4 (bonus)
    drafts = torch.tensor([[3, 2], [3, 1], [0, 1]])
    n, nxt = accept_greedy(target, drafts)
    assert n.tolist() == [1, 2, 0]
    assert nxt.tolist() == [1, 4, 3]


def test_sampled_acceptance_reproduces_the_target_distribution_position_by_position():
    """Context-free p and q: the first emitted token must be ~p1, the second ~p2, the bonus ~p3."""
    g = torch.Generator().manual_seed(0)
    p_rows = torch.tensor([[0.5, 0.2, 0.2, 0.1, 0.0], [0.1, 0.1, 0.1, 0.1, 0.6], [0.0, 0.3, 0.3, 0.2, 0.2]])
    q_rows = torch.tensor([[0.1, 0.1, 0.2, 0.3, 0.3], [0.3, 0.3, 0.2, 0.1, 0.1]])
    n_rows = 200_000
    p = p_rows.expand(n_rows, 3, 5).contiguous()
    q = q_rows.expand(n_rows, 2, 5).contiguous()
    drafts = torch.multinomial(q.view(-1, 5), 1, generator=g).view(n_rows, 2)
    n, nxt = accept_sampled(p, q, drafts, g)
    first = torch.where(n >= 1, drafts[:, 0], nxt)
    second = torch.where(n >= 2, drafts[:, 1], nxt)[n >= 1]  # rows whose second token comes from this round
    bonus = nxt[n == 2]
    for sample, target in ((first, p_rows[0]), (second, p_rows[1]), (bonus, p_rows[2])):
        freq = torch.bincount(sample, minlength=5).float() / sample.numel()
        assert (freq - target).abs().sum() / 2 < 0.01  # total variation; the sample sd is ~0.002
    assert 0.1 < (n == 0).float().mean() < 0.9 and (n == 2).any()  # both rejection and bonus exercised


def test_without_a_full_acceptance_the_bonus_position_is_not_needed():
    """When every row rejects a draft, the token after the prefix is the same whatever the bonus target is
    (so a round may skip the expert's step on d_k), and the split rule equals the whole one."""
    g = torch.Generator().manual_seed(1)
    b, k, v = 64, 3, 7
    p = torch.rand(b, k + 1, v, generator=g).softmax(-1)
    q = torch.rand(b, k, v, generator=g).softmax(-1)
    drafts = torch.multinomial(q.view(-1, v), 1, generator=g).view(b, k)
    split = torch.Generator().manual_seed(5)
    n = sampled_prefix(p[:, :k], q, drafts, split)
    nxt = sampled_next(p[:, :k], q, n, p[:, k], split)
    assert all(map(torch.equal, (n, nxt), accept_sampled(p, q, drafts, torch.Generator().manual_seed(5))))
    rows = n < k
    sub = (p[rows][:, :k], q[rows], n[rows])
    with_bonus = sampled_next(*sub, p[rows][:, k], torch.Generator().manual_seed(9))
    without = sampled_next(*sub, None, torch.Generator().manual_seed(9))
    assert torch.equal(with_bonus, without) and rows.any()
    logits = torch.randn(b, k + 1, v, generator=g)
    best_drafts = logits[:, :k].argmax(-1)
    best_drafts[::2, 1] = (best_drafts[::2, 1] + 1) % v  # even rows mismatch at position 2
    n, best = greedy_prefix(logits[:, :k], best_drafts)
    assert torch.equal(greedy_next(best[::2], n[::2], None), greedy_next(best[::2], n[::2], logits[::2, k]))
    assert torch.equal(greedy_next(best, n, logits[:, k]), accept_greedy(logits, best_drafts)[1])


# -- greedy: token for token like plain EFT ---------------------------------------------------------------------


@pytest.mark.parametrize("family", ["decode_family", "related_family"])
@pytest.mark.parametrize("batch_size", [1, 7])
@pytest.mark.parametrize("draft_len", [1, 3, 5])
def test_speculative_greedy_equals_plain_eft_greedy(request, family, batch_size, draft_len):
    fam = {k: str(v) for k, v in request.getfixturevalue(family).items()}
    decoder = eft(fam)
    texts = prompts(7, seed=1)  # 1 to 12 words: different prompt lengths in one batch
    sampling = SamplingConfig(max_new_tokens=24)
    gens, stats = speculative_generate(decoder, texts, sampling, draft_len, batch_size=batch_size)
    assert [g.token_ids for g in gens] == plain_tokens(decoder, texts, sampling, batch_size)
    assert stats.drafted > 0 and stats.rounds > 0
    assert stats.tokens_per_round == pytest.approx(1 + stats.accepted / stats.row_rounds)


def test_heuristic_schedule_follows_transformers_rule():
    """+2 after a round with every draft accepted, -1 otherwise, never below 1 (transformers' "heuristic")."""
    assert [next_draft_len(4, True, "heuristic"), next_draft_len(4, False, "heuristic")] == [6, 3]
    assert [next_draft_len(1, False, "heuristic"), next_draft_len(2, False, "heuristic")] == [1, 1]
    assert next_draft_len(4, True) == next_draft_len(4, False) == 4  # constant
    with pytest.raises(ModelopsError, match="expected constant or heuristic"):
        next_draft_len(4, True, "linear")


@pytest.mark.parametrize("family", ["decode_family", "related_family", "identical"])
@pytest.mark.parametrize("batch_size", [1, 7])
def test_heuristic_schedule_decodes_like_plain_eft_and_adapts_round_by_round(request, family, batch_size):
    """Greedy output stays plain EFT's; each row's draft length follows from its own previous round (read off the
    tokens it emitted: accepted drafts + 1), capped by the room it has left, and a round drafts for every row."""
    if family == "identical":
        base = request.getfixturevalue("related_family")["base"]
        fam = {k: base for k in ("large", "base", "expert")}
    else:
        fam = {k: str(v) for k, v in request.getfixturevalue(family).items()}
    decoder = eft(fam)
    texts = prompts(batch_size, seed=3)
    sampling = SamplingConfig(max_new_tokens=40)
    gens, _ = speculative_generate(decoder, texts, sampling, 3, batch_size=batch_size, schedule="heuristic")
    assert [g.token_ids for g in gens] == plain_tokens(decoder, texts, sampling, batch_size)
    stopper = StopChecker(set(), [], decoder.tokenizer, sampling.max_new_tokens)  # rows end at the length only
    batch = SpeculativeBatch(decoder.runners(), decoder.fuse, decoder.width, sampling, stopper, 3, schedule="heuristic")
    alive = batch.start(decoder._prompt_ids(texts), decoder.pad_id)
    k = dict.fromkeys(range(batch_size), 3)
    lens: dict[int, list[int]] = {r: [] for r in k}
    while alive:
        live, drafted = batch.live.tolist(), batch.stats.drafted
        before = {r: len(batch.outputs[r].token_ids) for r in live}
        room = {r: min(k[r], sampling.max_new_tokens - before[r] - 1) for r in live}
        alive = batch.round()
        assert batch.stats.drafted - drafted == sum(room.values())
        for r in live:
            accepted = len(batch.outputs[r].token_ids) - before[r] - 1
            assert 0 <= accepted <= room[r]
            if room[r]:
                k[r] = k[r] + 2 if accepted == room[r] else max(1, k[r] - 1)
                lens[r].append(room[r])
    if family == "identical":
        assert all(n[:3] == [3, 5, 7] for n in lens.values())  # every draft passes: +2 a round
    elif family == "decode_family":
        assert all(n[0] == 3 and n[-1] == 1 for n in lens.values())  # unrelated models reject: down to one draft


def test_greedy_equality_holds_with_stop_strings_eos_and_length_in_one_batch(related_family):
    decoder = eft(related_family)
    texts = prompts(8, seed=4)
    probe = plain_tokens(decoder, texts, SamplingConfig(max_new_tokens=30), 8)
    stop_word = decoder.tokenizer.decode([probe[3][6]])  # a word one row says mid-way
    sampling = SamplingConfig(max_new_tokens=30, stop=[stop_word])
    plain = decoder.generate(texts, sampling, batch_size=8)
    spec, _ = speculative_generate(decoder, texts, sampling, 4, batch_size=8)
    assert [(g.token_ids, g.text, g.finish_reason) for g in spec] == [
        (g.token_ids, g.text, g.finish_reason) for g in plain
    ]
    assert {"stop", "length"} <= {g.finish_reason for g in plain}


def test_heuristic_schedule_starts_again_from_k_for_each_group(related_family):
    """Identical models accept every draft, so the length grows 3, 5, 7, …; a prompt decoded after another one at
    batch 1 starts again from K and drafts exactly what it drafts alone."""
    fam = {k: related_family["base"] for k in ("large", "base", "expert")}
    decoder = eft(fam)
    text, sampling = prompts(1, seed=2)[0], SamplingConfig(max_new_tokens=30)
    _, alone = speculative_generate(decoder, [text], sampling, 3, batch_size=1, schedule="heuristic")
    _, twice = speculative_generate(decoder, [text, text], sampling, 3, batch_size=1, schedule="heuristic")
    assert alone.mean_draft_len > 3 and twice.drafted == 2 * alone.drafted and twice.rounds == 2 * alone.rounds


def test_greedy_equality_holds_when_rows_join_running_batches(related_family):
    decoder = eft(related_family)
    texts = prompts(9, seed=6)
    probe = plain_tokens(decoder, texts, SamplingConfig(max_new_tokens=24), 9)
    stop_word = decoder.tokenizer.decode([probe[0][4]])  # row 0 stops early: a waiting prompt takes its place
    sampling = SamplingConfig(max_new_tokens=24, stop=[stop_word])
    one_by_one = plain_tokens(decoder, texts, sampling, 1)
    for schedule in ("constant", "heuristic"):
        spec, stats = speculative_generate(decoder, texts, sampling, 3, batch_size=3, schedule=schedule)
        assert stats.admissions > 0
        assert [g.token_ids for g in spec] == one_by_one
    grouped, stats = speculative_generate(decoder, texts, sampling, 3, batch_size=3, continuous=False)
    assert stats.admissions == 0 and [g.token_ids for g in grouped] == one_by_one


@pytest.mark.parametrize(("rule", "experts"), [(FusionRule("fixed", weights=[0.7, 0.5]), 2), (FusionRule("dlf"), 1)])
def test_other_per_position_rules_speculate_exactly(related_family, rule, experts):
    """fixed (the first expert drafts, the second verifies) and dlf (α trace kept per token)."""
    decoder = eft(related_family, ("expert", "expert2")[:experts], rule)
    texts = prompts(6, seed=2)
    sampling = SamplingConfig(max_new_tokens=16)
    plain = decoder.generate(texts, sampling, batch_size=6)
    spec, _ = speculative_generate(decoder, texts, sampling, 3, batch_size=6)
    assert [g.token_ids for g in spec] == [g.token_ids for g in plain]
    if rule.name == "dlf":
        for a, b in zip(spec, plain, strict=True):
            assert len(a.weights) == a.num_tokens
            assert torch.allclose(torch.tensor(a.weights), torch.tensor(b.weights))


def test_greedy_equality_holds_when_the_expert_reads_a_chat_template(decode_family):
    fam = {k: str(v) for k, v in decode_family.items()}
    decoder = CoDecoder.load(fam["large"], fam["base"], [fam["expert"]], FusionRule("eft"), chat_template_for="expert")
    texts = prompts(5, seed=6)
    assert decoder._prompt_ids(texts)[2] != decoder._prompt_ids(texts)[0]  # the drafter sees other prompt ids
    sampling = SamplingConfig(max_new_tokens=16)
    spec, _ = speculative_generate(decoder, texts, sampling, 3, batch_size=5)
    assert [g.token_ids for g in spec] == plain_tokens(decoder, texts, sampling, 5)


def test_identical_models_accept_every_draft(related_family):
    same = {k: related_family["base"] for k in ("large", "base", "expert")}
    decoder = eft(same)
    _, stats = speculative_generate(decoder, prompts(4), SamplingConfig(max_new_tokens=20), 4, batch_size=4)
    assert stats.acceptance_rate == 1.0
    _, stats = speculative_generate(
        decoder, prompts(4), SamplingConfig(max_new_tokens=20, temperature=1.0, seed=0), 4, batch_size=4
    )
    assert stats.acceptance_rate > 0.99  # p and q equal up to float rounding of different batch shapes


# -- sampling: the exact fused distribution -------------------------------------------------------------------


def exact_prefix_distribution(
    fam: dict[str, str], prompt_ids: list[int], temperature: float, top_k: int
) -> tuple[dict[tuple[int, ...], float], dict[tuple[int, ...], float]]:
    """(fused EFT, expert alone) probability of every first-3-token outcome (cut after EOS).

    Computed from plain full forwards of the three models over prompt + every 2-token continuation.
    """
    models = [AutoModelForCausalLM.from_pretrained(fam[k]).eval() for k in ("large", "base", "expert")]
    vocab = models[0].config.vocab_size
    conts = list(itertools.product(range(vocab), repeat=2))
    ids = torch.tensor([prompt_ids + list(c) for c in conts])
    with torch.no_grad():
        logp = [torch.log_softmax(m(ids).logits.float()[:, -3:], -1) for m in models]  # (N, 3, V) each

    def probs(z: torch.Tensor) -> torch.Tensor:
        z = z / temperature
        if top_k:
            z = z.masked_fill(z < z.topk(top_k, -1).values[..., -1:], float("-inf"))
        return z.softmax(-1)

    out = []
    for table in (probs(logp[0] + logp[2] - logp[1]), probs(logp[2])):
        dist: dict[tuple[int, ...], float] = {}
        for t1, t2, t3 in itertools.product(range(vocab), repeat=3):
            row = t1 * vocab + t2  # the continuation (t1, t2): position j of it predicts token j+1
            p1, p2, p3 = float(table[row, 0, t1]), float(table[row, 1, t2]), float(table[row, 2, t3])
            key = (t1,) if t1 == EOS else (t1, t2) if t2 == EOS else (t1, t2, t3)
            dist[key] = dist.get(key, 0.0) + (p1 if t1 == EOS else p1 * p2 if t2 == EOS else p1 * p2 * p3) / (
                vocab ** (3 - len(key))  # each short outcome is visited vocab^(3-len) times
            )
        out.append(dist)
    return out[0], out[1]


def chi_square_pvalue(counts: dict[tuple[int, ...], int], dist: dict[tuple[int, ...], float], n: int) -> float:
    """Pearson's test; outcomes expected fewer than 5 times are pooled into one bin."""
    big = [k for k, p in dist.items() if p * n >= 5]
    pooled_e = n - sum(dist[k] * n for k in big)
    pooled_o = n - sum(counts.get(k, 0) for k in big)
    chi2 = sum((counts.get(k, 0) - dist[k] * n) ** 2 / (dist[k] * n) for k in big)
    bins = len(big)
    if pooled_e >= 1:
        chi2 += (pooled_o - pooled_e) ** 2 / pooled_e
        bins += 1
    dof = torch.tensor((bins - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(dof, torch.tensor(chi2 / 2, dtype=torch.float64)))


@pytest.mark.parametrize(
    ("draft_len", "temperature", "top_k", "schedule", "batch_size"),
    [(1, 1.0, 0, "constant", 8000), (3, 1.0, 0, "constant", 8000), (3, 0.8, 6, "constant", 8000),
     (3, 1.0, 0, "heuristic", 8000), (2, 1.0, 0, "constant", 1500)],  # the last: rows join running batches
)  # fmt: skip
def test_sampled_output_has_the_exact_fused_distribution(
    tiny_vocab_family, draft_len, temperature, top_k, schedule, batch_size
):
    decoder = eft(tiny_vocab_family)
    text = "w1 w5 w2"
    n = 8000
    sampling = SamplingConfig(max_new_tokens=draft_len + 2, temperature=temperature, top_k=top_k, seed=1234)
    gens, stats = speculative_generate(
        decoder, [text] * n, sampling, draft_len, batch_size=batch_size, schedule=schedule
    )
    assert (stats.admissions > 0) == (batch_size < n)
    counts: dict[tuple[int, ...], int] = {}
    for g in gens:
        ids = g.token_ids[: g.token_ids.index(EOS) + 1] if EOS in g.token_ids[:3] else g.token_ids[:3]
        counts[tuple(ids)] = counts.get(tuple(ids), 0) + 1
    fused, expert_only = exact_prefix_distribution(
        tiny_vocab_family, decoder.members[0].render(text), temperature, top_k
    )
    assert sum(fused.values()) == pytest.approx(1.0, abs=1e-5)
    assert chi_square_pvalue(counts, fused, n) > 1e-3  # the sampler's distribution is the fused one…
    assert chi_square_pvalue(counts, expert_only, n) < 1e-6  # …and the test can tell it from the drafter's
    assert 0.2 < stats.acceptance_rate < 0.95  # both accepting and rejecting paths carry weight


# -- caches after per-row rollback -----------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["related_family", "decode_family"])
@pytest.mark.parametrize("rounds", [1, 4])
def test_rollback_leaves_every_cache_equal_to_a_fresh_prefill(request, family, rounds):
    """Also when no row accepted every draft, so the expert was never fed d_k (unrelated models)."""
    decoder = eft({k: str(v) for k, v in request.getfixturevalue(family).items()})
    texts = prompts(6, seed=5)
    sampling = SamplingConfig(max_new_tokens=100, temperature=1.0, seed=3)
    stopper = StopChecker(set(), [], decoder.tokenizer, sampling.max_new_tokens)  # nobody stops
    runners = decoder.runners()
    batch = SpeculativeBatch(
        runners, decoder.fuse, decoder.width, sampling, stopper, 4, torch.Generator().manual_seed(3)
    )
    prompt_ids = decoder._prompt_ids(texts)
    assert batch.start(prompt_ids, decoder.pad_id)
    for _ in range(rounds):
        assert batch.round()
    lengths = [len(o.token_ids) for o in batch.outputs]
    if family == "related_family":
        assert len(set(lengths)) > 1  # rows accepted different numbers of drafts, so rollbacks differed
    else:
        assert batch.stats.bonus_steps < batch.stats.rounds  # some round skipped the expert's step on d_k
    for m, runner in enumerate(runners):
        assert runner.next_pos.tolist() == [len(p) + n - 1 for p, n in zip(prompt_ids[m], lengths, strict=True)]
        nxt = runner.step(batch.pending)  # (B, W): the logits after every emitted token
        for row, out in enumerate(batch.outputs):
            ids = torch.tensor([prompt_ids[m][row] + out.token_ids])
            with torch.no_grad():
                fresh = runner.model(ids).logits[0, -1].float()
            torch.testing.assert_close(nxt[row], fresh, atol=1e-4, rtol=1e-4)


# -- errors ---------------------------------------------------------------------------------------------------


def test_speculation_without_an_expert_or_with_no_drafts_is_refused(decode_family):
    fam = {k: str(v) for k, v in decode_family.items()}
    single = CoDecoder.load(fam["large"], rule=FusionRule("single"))
    with pytest.raises(ModelopsError, match="expert to draft"):
        speculative_generate(single, ["w1"], SamplingConfig(max_new_tokens=2), 3)
    with pytest.raises(ModelopsError, match="at least 1"):
        speculative_generate(eft(fam), ["w1"], SamplingConfig(max_new_tokens=2), 0)


def test_codecoder_generate_dispatches_to_speculation_and_reports_acceptance(related_family):
    rule = FusionRule("eft", speculative=3)
    decoder = eft(related_family, rule=rule)
    texts = prompts(3)
    gens = decoder.generate(texts, SamplingConfig(max_new_tokens=12), batch_size=3)
    assert [g.token_ids for g in gens] == plain_tokens(eft(related_family), texts, SamplingConfig(max_new_tokens=12), 3)
    assert 0.0 < decoder.last_stats["acceptance_rate"] <= 1.0
    assert decoder.last_stats["tokens_per_round"] > 1.0


def test_cli_speculative_writes_the_plain_eft_results_and_prints_the_acceptance_rate(related_family, tmp_path):
    import json

    from typer.testing import CliRunner

    from modelops.cli.main import app

    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(prompts(4))))
    base = ["fuse-decode", "-q", "--large", related_family["large"], "--small-base", related_family["base"]]
    base += ["--expert", related_family["expert"], "--prompts", str(src), "--max-new-tokens", "10", "--device", "cpu"]
    results = []
    for extra, name in (([], "plain.jsonl"), (["--speculative", "3"], "spec.jsonl")):
        res = CliRunner().invoke(app, [*base, *extra, "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        results.append((tmp_path / name).read_text())
    assert results[0] == results[1]
    assert "acceptance_rate" in res.output
    res = CliRunner().invoke(app, [*base, "--speculative", "-1", "--out", str(tmp_path / "x.jsonl")])
    assert res.exit_code == 1 and "--speculative must be >= 0" in res.output
    extra = ["--speculative", "2", "--speculative-schedule", "heuristic", "--out", str(tmp_path / "h.jsonl")]
    res = CliRunner().invoke(app, [*base, *extra])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "h.jsonl").read_text() == results[0] and "mean_draft_len" in res.output
    res = CliRunner().invoke(app, [*base, "--speculative", "2", "--speculative-schedule", "fast", "--out", "y"])
    assert res.exit_code == 1 and "expected constant or heuristic" in res.output
