"""Continuous batching in the lock-step loop: a finished row's place goes to the next prompt mid-decode."""

from __future__ import annotations

import pytest
import torch
from decode_fixtures import hf_greedy, load, prompts
from transformers.cache_utils import DynamicLayer

from modelops.decode import CoDecoder, FusionRule, SamplingConfig
from modelops.decode.loops import StopChecker, lockstep_generate
from modelops.runtime.generate import left_pad
from modelops.runtime.kvcache import GrowingLayer, append_rows, drop_leading_slots
from modelops.runtime.runner import Runner


def fam_decoder(decode_family, rule: FusionRule, experts=("expert",)) -> CoDecoder:
    fam = {k: str(v) for k, v in decode_family.items()}
    return CoDecoder.load(fam["large"], fam["base"], [fam[e] for e in experts], rule)


def test_append_rows_left_pads_both_sides_to_the_longer_length():
    g = torch.Generator().manual_seed(0)
    old = [torch.randn(2, 2, 5, 4, generator=g) for _ in range(2)]  # keys, values: 2 rows, 5 slots
    new = [torch.randn(3, 2, 7, 4, generator=g) for _ in range(2)]  # 3 rows, 7 slots
    for kind in (GrowingLayer, DynamicLayer):
        a, b = kind(), kind()
        a.update(*old)
        b.update(*new)
        holder, other = type("C", (), {"layers": [a]})(), type("C", (), {"layers": [b]})()
        append_rows(holder, other)
        for got, o, n in ((a.keys, old[0], new[0]), (a.values, old[1], new[1])):
            assert got.shape == (5, 2, 7, 4)
            assert torch.equal(got[:2, :, :2], torch.zeros(2, 2, 2, 4)) and torch.equal(got[:2, :, 2:], o)
            assert torch.equal(got[2:], n)
        a.update(*(torch.ones(5, 2, 1, 4),) * 2)  # and it goes on appending
        assert a.keys.shape[-2] == 8 and torch.equal(a.keys[:, :, -1], torch.ones(5, 2, 4))


def test_drop_leading_slots_keeps_the_rest_and_appending_goes_on():
    g = torch.Generator().manual_seed(1)
    states = [torch.randn(2, 2, 7, 4, generator=g) for _ in range(2)]
    for kind in (GrowingLayer, DynamicLayer):
        layer = kind()
        layer.update(*states)
        drop_leading_slots(type("C", (), {"layers": [layer]})(), 3)
        assert torch.equal(layer.keys, states[0][:, :, 3:]) and torch.equal(layer.values, states[1][:, :, 3:])
        layer.update(*(torch.ones(2, 2, 1, 4),) * 2)
        assert layer.keys.shape[-2] == 5 and torch.equal(layer.keys[:, :, :4], states[0][:, :, 3:])


def test_a_long_continuous_run_keeps_its_cache_short_and_decodes_like_transformers(decode_family):
    """Rows that join are left-padded to the running batch's length; once the rows that set it have left, that
    padding is cropped, so the cache stays near the longest live row instead of growing for the whole run."""
    widest = {"slots": 0}
    buffers = set()

    class Watched(Runner):
        def step(self, tokens: torch.Tensor) -> torch.Tensor:
            assert self.mask is not None
            widest["slots"] = max(widest["slots"], self.mask.shape[1])
            buffers.add((self.name, self.cache.layers[0]._keys.data_ptr()))
            return super().step(tokens)

    texts, max_new = prompts(24, seed=8), 24
    dec = fam_decoder(decode_family, FusionRule("eft", weights=[0.0]))
    stops = {2, *range(5, 96, 7)}  # rows end after a few tokens, at different steps
    full = [hf_greedy(decode_family["large"], [t], max_new)[0] for t in texts]
    expected = [next((row[: i + 1] for i, t in enumerate(row) if t in stops), row) for row in full]
    runners = [Watched(r.model, r.name) for r in dec.runners()]
    stats: dict = {}
    outs = lockstep_generate(runners, dec.fuse, dec._prompt_ids(texts), SamplingConfig(max_new_tokens=max_new),
                             StopChecker(stops, [], dec.tokenizer, max_new), dec.pad_id, rows=2, stats=stats)  # fmt: skip
    assert [o.token_ids for o in outs] == expected
    assert stats["admissions"] >= 8 and stats["steps"] > 3 * max_new  # a run far longer than any row
    longest_row = max(len(p) for p in dec._prompt_ids(texts)[0]) + max_new
    assert widest["slots"] <= longest_row * 4 // 3 + 1
    # each model's cache is allocated once for the whole run: 8+ admissions and 24 rows leaving reuse it
    assert sorted(name for name, _ in buffers) == sorted(r.name for r in runners)


@pytest.mark.parametrize("longer", ["new rows", "running rows"])
def test_admitted_rows_decode_like_fresh_forwards(decode_family, longer):
    """After rows join a running batch (shorter or longer than it), every row's next logits equal a plain
    forward over that row's own tokens."""
    model, _ = load(decode_family["large"])
    runner = Runner(model)
    running = [[5, 6, 7], [8, 9, 10, 11, 12]]
    joining = [[13, 14], [15, 16, 17, 18, 19, 20, 21, 22, 23], [24]]
    if longer == "running rows":
        running, joining = [r * 4 for r in running], joining
    runner.prefill(*left_pad(running, 0))
    seqs = [list(r) for r in running]
    for step in range(3):  # the running rows decode a few tokens first
        tok = torch.tensor([30 + step, 40 + step])
        runner.step(tok)
        for s, t in zip(seqs, tok.tolist(), strict=True):
            s.append(t)
    runner.admit(*left_pad(joining, 0))
    seqs += [list(r) for r in joining]
    tok = torch.arange(50, 50 + len(seqs))
    nxt = runner.step(tok)
    for row, s in enumerate(seqs):
        with torch.no_grad():
            fresh = model(torch.tensor([[*s, int(tok[row])]])).logits[0, -1].float()
        torch.testing.assert_close(nxt[row], fresh, atol=1e-4, rtol=1e-4)


def test_continuous_batches_decode_each_prompt_like_transformers(decode_family):
    texts = prompts(9)
    dec = fam_decoder(decode_family, FusionRule("eft", weights=[0.0]))
    gens = dec.generate(texts, SamplingConfig(max_new_tokens=16), batch_size=3)
    assert dec.last_stats["admissions"] > 0  # rows joined a running batch
    assert [g.token_ids for g in gens] == [hf_greedy(decode_family["large"], [t], 16)[0] for t in texts]


@pytest.mark.parametrize("rule", [FusionRule("eft"), FusionRule("dlf")])
def test_continuous_and_grouped_batches_give_the_same_tokens_and_traces(decode_family, rule):
    texts = prompts(10, seed=4)
    experts = ("expert", "expert2") if rule.name == "dlf" else ("expert",)
    dec = fam_decoder(decode_family, rule, experts)
    sampling = SamplingConfig(max_new_tokens=14)
    cont = dec.generate(texts, sampling, batch_size=3)
    cont_stats = dict(dec.last_stats)
    grouped = dec.generate(texts, sampling, batch_size=3, continuous=False)
    assert dec.last_stats["admissions"] == 0 < cont_stats["admissions"]
    assert cont_stats["occupancy"] > dec.last_stats["occupancy"]  # rows stopped early: their places were reused
    one_by_one = dec.generate(texts, sampling, batch_size=1)
    for a, b, c in zip(cont, grouped, one_by_one, strict=True):
        assert a.token_ids == b.token_ids == c.token_ids and a.text == b.text
        assert a.weights == b.weights
        if rule.name == "dlf":
            assert len(a.weights) == a.num_tokens


def test_progress_counts_every_prompt_once(decode_family):
    seen: list[int] = []
    dec = fam_decoder(decode_family, FusionRule("eft"))
    dec.generate(prompts(7), SamplingConfig(max_new_tokens=10), batch_size=2, on_batch=seen.append)
    assert sum(seen) == 7


def test_sampled_continuous_decoding_is_reproducible(decode_family):
    dec = fam_decoder(decode_family, FusionRule("eft"))
    sampling = SamplingConfig(max_new_tokens=12, temperature=1.0, seed=3)
    runs = [[g.token_ids for g in dec.generate(prompts(8), sampling, batch_size=3)] for _ in range(2)]
    assert runs[0] == runs[1] and len({tuple(r) for r in runs[0]}) > 1


def test_a_cache_with_other_layers_is_decoded_in_groups(decode_family):
    """A layer that is not a plain key/value pair cannot take new rows: the loop then starts the next group
    once the batch is empty, with the same tokens."""
    model, _ = load(decode_family["large"])
    runner = Runner(model)
    runner.prefill(*left_pad([[5, 6]], 0))
    assert runner.can_admit
    runner.cache.layers[0] = type("OtherLayer", (DynamicLayer,), {})()
    assert not runner.can_admit

    class NoAdmit(Runner):
        can_admit = False

    dec = fam_decoder(decode_family, FusionRule("eft"))
    texts, sampling = prompts(8, seed=5), SamplingConfig(max_new_tokens=12)
    stopper = StopChecker(dec.stop_ids, [], dec.tokenizer, 12)
    runners = [NoAdmit(r.model, r.name) for r in dec.runners()]
    stats: dict = {}
    outs = lockstep_generate(runners, dec.fuse, dec._prompt_ids(texts), sampling, stopper, dec.pad_id, rows=3,
                             stats=stats)  # fmt: skip
    assert stats["admissions"] == 0
    assert [o.token_ids for o in outs] == [g.token_ids for g in dec.generate(texts, sampling, batch_size=3)]


@pytest.mark.parametrize("rule", [FusionRule("eft"), FusionRule("dlf")])
def test_launching_the_next_step_before_the_stop_checks_changes_no_row(decode_family, rule):
    """`ahead` (the accelerator order: step t+1 runs before the host reads step t) gives the tokens and DLF
    weights of the plain order, with rows finishing at different steps and the next prompts joining."""
    texts, max_new = prompts(7, seed=3), 12
    dec = fam_decoder(decode_family, rule)
    stops = {3, *range(7, 96, 9)}
    runs = []
    for ahead in (False, True):
        runners, stats = dec.runners(), {}
        outs = lockstep_generate(runners, dec.fuse, dec._prompt_ids(texts), SamplingConfig(max_new_tokens=max_new),
                                 StopChecker(stops, [], dec.tokenizer, max_new), dec.pad_id, rows=3, stats=stats,
                                 ahead=ahead)  # fmt: skip
        runs.append(([o.token_ids for o in outs], [o.weights for o in outs], stats["admissions"]))
    assert runs[0] == runs[1]
    assert runs[0][2] >= 2 and len({len(t) for t in runs[0][0]}) > 2  # rows joined, and ended at different steps
