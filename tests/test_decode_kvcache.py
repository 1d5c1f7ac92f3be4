"""The in-place KV cache layer against transformers' own `DynamicLayer`, op by op and through a model."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicLayer

from modelops.runtime.kvcache import MIN_ROOM, GrowingLayer, growing_cache


def kv(seed: int, batch: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, tokens, 8, generator=g), torch.randn(batch, 2, tokens, 8, generator=g)


@pytest.mark.parametrize("room", [(0, 0), (4, 200)])
def test_growing_layer_matches_dynamic_layer_through_appends_crops_and_row_selection(room):
    ours, theirs = GrowingLayer(room), DynamicLayer()
    buffers = set()
    ops = [
        ("update", kv(0, 3, 5)),
        *[("update", kv(i, 3, 1)) for i in range(1, MIN_ROOM + 3)],  # past the first buffer: it must grow
        ("crop", -4),
        ("update", kv(99, 3, 2)),
        ("select", torch.tensor([2, 0, 0, 1])),  # reorder and repeat rows, as beams do
        ("update", kv(100, 4, 1)),
        ("crop", 0),
        ("select", torch.tensor([3, 1])),
        ("update", kv(101, 2, 3)),
    ]
    for op, arg in ops:
        if op == "update":
            got, want = ours.update(*arg), theirs.update(*arg)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        elif op == "crop":
            ours.crop(arg)
            theirs.crop(arg)
        else:
            ours.batch_select_indices(arg)
            theirs.batch_select_indices(arg)
        assert ours.get_seq_length() == theirs.get_seq_length()
        assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)
        buffers.add(ours._keys.data_ptr())
    if room != (0, 0):  # every op fits in the room asked for: one allocation throughout
        assert len(buffers) == 1 and ours._keys.shape[0] == 4 and ours._keys.shape[-2] == 200
    else:
        assert len(buffers) > 1  # without room, appends past MIN_ROOM and the repeated rows reallocate


def test_a_model_decodes_the_same_with_the_growing_cache():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=256,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (3, 7), generator=torch.Generator().manual_seed(1))
    caches = [growing_cache(model), DynamicCache(config=cfg)]
    assert all(isinstance(layer, GrowingLayer) for layer in caches[0].layers)
    with torch.inference_mode():
        outs = [model(input_ids=ids, cache=c, use_cache=True) for c in caches]
        for _ in range(MIN_ROOM + 10):
            tok = outs[1].logits[:, -1:].argmax(-1)
            torch.testing.assert_close(outs[0].logits[:, -1], outs[1].logits[:, -1], rtol=1e-5, atol=1e-5)
            outs = [model(input_ids=tok, cache=c, use_cache=True) for c in caches]
    assert caches[0].get_seq_length() == caches[1].get_seq_length() == 7 + MIN_ROOM + 10
