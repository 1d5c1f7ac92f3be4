"""Per-row rollback of a runner: the mask, positions and cache against a list-based model of the rows, and the
speculative case (rejected drafts inside the columns every row attends) without any read back from the device."""

from __future__ import annotations

import random

import pytest
import torch
from decode_fixtures import llama
from transformers import DynamicCache

from modelops.runtime.generate import left_pad
from modelops.runtime.runner import Runner


def reference_rollback(mask: list[list[int]], counts: list[int]) -> list[list[int]]:
    """Unattend each row's last counts[row] attended slots, then drop the columns past the last attended one."""
    out = []
    for row, n in zip(mask, counts, strict=True):
        row = list(row)
        for col in reversed(range(len(row))):
            if n == 0:
                break
            if row[col]:
                row[col], n = 0, n - 1
        out.append(row)
    last = max((c for row in out for c, v in enumerate(row) if v), default=0) + 1
    return [row[:last] for row in out]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rollbacks_match_a_list_model_of_the_rows_and_decode_like_fresh_forwards(seed):
    rng = random.Random(seed)
    model = llama(seed).eval()
    runner = Runner(model)
    seqs = [[rng.randrange(5, 90) for _ in range(rng.randint(1, 6))] for _ in range(4)]
    ids, attention = left_pad(seqs, 0)
    runner.prefill(ids, attention)
    ref = attention.tolist()
    fast_rounds = 0
    for _ in range(12):
        k = rng.randint(1, 4)  # a verification window: every row is fed the pending token and k drafts
        fed = [[rng.randrange(5, 90) for _ in range(k + 1)] for _ in seqs]
        runner.step(torch.tensor(fed))
        ref = [row + [1] * (k + 1) for row in ref]
        seqs = [s + f for s, f in zip(seqs, fed, strict=True)]
        tail_before = runner.full_tail
        uniform = rng.random() < 0.3
        top = k + 3 if rng.random() < 0.25 else k  # at most k rejected drafts; sometimes more: the general path
        counts = [rng.randint(0, top)] * len(seqs) if uniform else [rng.randint(0, top) for _ in seqs]
        counts = [min(c, len(s) - 1) for c, s in zip(counts, seqs, strict=True)]
        fast_rounds += max(counts) < tail_before
        runner.rollback(counts)
        ref = reference_rollback(ref, counts) if max(counts) else ref
        seqs = [s[: len(s) - c] for s, c in zip(seqs, counts, strict=True)]
        assert runner.mask.tolist() == ref
        assert runner.next_pos.tolist() == [len(s) for s in seqs]
        assert runner.cache.get_seq_length() == len(ref[0])
        if runner.dense:
            assert all(all(row) for row in ref)
        tail = min(len(row) - max((c for c, v in enumerate(row) if not v), default=-1) - 1 for row in ref)
        assert runner.full_tail <= tail  # a lower bound the host may rely on
    assert fast_rounds >= 6
    nxt = runner.step(torch.tensor([7, 8, 9, 10]))
    for row, s in enumerate(seqs):
        with torch.no_grad():
            fresh = model(torch.tensor([[*s, 7 + row]])).logits[0, -1].float()
        torch.testing.assert_close(nxt[row], fresh, atol=1e-4, rtol=1e-4)


def meta_runner(rows: int, width: int, tail: int, padded: bool) -> Runner:
    """A runner whose mask, positions and cache live on `meta`: shapes without values."""
    runner = Runner(llama(0))
    mask = torch.ones(rows, width, dtype=torch.long)
    mask[0, : 2 if padded else 0] = 0  # left padding
    runner.mask, runner.next_pos = mask.to("meta"), mask.sum(-1).to("meta")
    runner.dense, runner.full_tail = not padded, tail  # `tail`: the verification window just fed to every row
    runner.cache = DynamicCache()
    for layer in range(2):
        kv = torch.empty(rows, 2, width, 8, device="meta")
        runner.cache.update(kv, kv, layer)
    return runner


@pytest.mark.parametrize("padded", [False, True])
def test_rejected_drafts_roll_back_without_reading_the_device(padded):
    """On `meta` every host read (`int`, `bool`, `.tolist()`) raises, so this passes only if the speculative
    rollback decides its crop, tail and density from the host counts alone."""
    runner = meta_runner(3, 9, 5, padded)
    runner.rollback([2, 2, 2])  # every row rejected the same drafts: no hole
    assert runner.mask.shape == (3, 7) and runner.cache.get_seq_length() == 7
    assert runner.full_tail == 3 and runner.dense is not padded
    runner.rollback([1, 0, 2])  # rows end at different columns: holes, and the crop follows the row that kept most
    assert runner.mask.shape == (3, 7) and runner.cache.get_seq_length() == 7
    assert runner.full_tail == 0 and not runner.dense
    runner = meta_runner(3, 9, 5, padded)
    runner.rollback([1, 3, 2])
    assert runner.mask.shape == (3, 8) and runner.full_tail == 0 and not runner.dense
