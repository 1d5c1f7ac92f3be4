"""A KV cache layer that appends in place: transformers' `DynamicLayer` copies the whole cache every token.

`DynamicLayer.update` is `torch.cat([keys, new])`, so each decoded token rewrites every cached key and value and
allocates a fresh tensor for it; with several models decoding in lock-step those allocations keep landing on cold
memory (measured: the concatenations took 28% of a fused batch-16 decode, against 9% of one model's own loop).
`GrowingLayer` keeps keys and values in buffers with spare room, allocated once for the batch and length a decoder
asks for (else doubling, like a vector), and hands attention the same `[batch, heads, length, head_dim]` views, so
appending costs one write of the new token and rows leaving or joining reuse the same memory.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import cache_utils
from transformers.cache_utils import DynamicLayer

MIN_ROOM = 64  # tokens of spare room a buffer starts with
# the layers replaced by GrowingLayer (the sliding one where this transformers has it)
REPLACED = tuple(t for t in (DynamicLayer, getattr(cache_utils, "DynamicSlidingWindowLayer", None)) if t is not None)


class GrowingLayer(DynamicLayer):
    """`DynamicLayer` semantics (crop, row selection, beam reorder) over buffers with spare room.

    `room` = (rows, slots) the buffers are first allocated with: a decoder that knows its batch size and its longest
    prompt plus new tokens asks for them once, so rows leaving, rows joining and tokens appended all stay inside one
    allocation. Past that room (or without it) a buffer grows by doubling, like a vector.
    """

    def __init__(self, room: tuple[int, int] = (0, 0), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.room = room

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.length = 0
        self.rows = 0
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.length and key_states.shape[0] != self.rows:
            raise ValueError(f"{key_states.shape[0]} rows of new keys for a cache of {self.rows} rows")
        rows, end = key_states.shape[0], self.length + key_states.shape[-2]
        self._reserve(key_states, rows, end)
        assert self._keys is not None and self._values is not None
        self._keys[:rows, ..., self.length : end, :] = key_states
        self._values[:rows, ..., self.length : end, :] = value_states
        self.rows = rows
        self._set_length(end)
        return self.keys, self.values

    def _reserve(self, like: torch.Tensor, rows: int, end: int) -> None:
        """Buffers with room for `rows` rows and `end` slots, keeping the live rows' slots."""
        have_rows, have_slots = (0, 0) if self._keys is None else (self._keys.shape[0], self._keys.shape[-2])
        if rows <= have_rows and end <= have_slots:
            return
        slots = have_slots if end <= have_slots else max(end + MIN_ROOM, 2 * have_slots, self.room[1])
        shape = (max(rows, have_rows, self.room[0]), *like.shape[1:-2], slots, like.shape[-1])
        keys, values = like.new_empty(shape), like.new_empty(shape)
        if self.length and self.rows:
            keys[: self.rows, ..., : self.length, :] = self.keys
            values[: self.rows, ..., : self.length, :] = self.values
        self._keys, self._values = keys, values

    def _set_length(self, length: int) -> None:
        assert self._keys is not None and self._values is not None
        self.length = length
        self.keys = self._keys[: self.rows, ..., :length, :]
        self.values = self._values[: self.rows, ..., :length, :]

    def write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Make (B, H, S, D) `keys` and `values` this layer's whole state, inside its buffers when they have room."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        self.length = 0  # nothing to keep: the new state replaces every slot
        self.rows = 0
        self._reserve(keys, keys.shape[0], keys.shape[-2])
        assert self._keys is not None and self._values is not None
        self._keys[: keys.shape[0], ..., : keys.shape[-2], :] = keys
        self._values[: keys.shape[0], ..., : keys.shape[-2], :] = values
        self.rows = keys.shape[0]
        self._set_length(keys.shape[-2])

    def empty(self) -> None:
        """Forget every row and slot, keeping the buffers for the next batch."""
        self.length = self.rows = 0
        if self._keys is not None:
            self._set_length(0)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:  # the legacy absolute form, refused as transformers refuses it
            raise ValueError(f"crop takes a negative number of tokens to remove, got {tokens_to_remove}")
        if tokens_to_remove == 0 or not self.is_initialized or self._keys is None:
            return
        self._set_length(max(0, self.length + tokens_to_remove))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized and self._keys is not None and self._values is not None:
            indices = indices.to(self._keys.device)
            self.write(self.keys[indices], self.values[indices])  # the gathered rows, back into the same buffers

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized and self._keys is not None:
            self.batch_select_indices(torch.arange(self.rows).repeat_interleave(repeats))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def reset(self) -> None:
        super().reset()
        self.length = 0
        self.rows = 0
        self._keys = self._values = None


def growing_cache(model: Any, room: tuple[int, int] = (0, 0)) -> Any:
    """A `DynamicCache` for `model` whose layers append in place, first allocated for `room` = (rows, slots).

    Sliding-window layers become full ones too: the attention masks still apply the window (transformers builds
    them from the config), and a full layer can be cropped and have its slots reordered at any length, which
    rolling back speculative drafts needs (`DynamicSlidingWindowLayer` refuses to crop once the window is full).
    """
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # older signatures
        return DynamicCache()
    layers = getattr(cache, "layers", None)
    if layers:
        cache.layers = [GrowingLayer(room) if type(layer) in REPLACED else layer for layer in layers]
    return cache


def emptied(cache: Any) -> bool:
    """Empty a cache of `GrowingLayer`s for a new batch, keeping its buffers (True); False, untouched, for any
    other cache."""
    layers = getattr(cache, "layers", None)
    if not layers or not all(type(layer) is GrowingLayer for layer in layers):
        return False
    for layer in layers:
        layer.empty()
    return True


def reorder_slots(cache: Any, index: torch.Tensor) -> None:
    """Slot s of row b takes what slot index[b, s] held, in every layer: (B, S) `index` over the cached length."""
    for layer in getattr(cache, "layers", []):
        if not getattr(layer, "is_initialized", False):
            continue
        if not _plain(layer):
            raise TypeError(f"cannot reorder the slots of a {type(layer).__name__} cache layer")
        here = index.to(layer.keys.device)  # layers of a device map live on different devices
        full = here[:, None, :, None].expand(*layer.keys.shape[:-1], layer.keys.shape[-1])
        keys, values = layer.keys.gather(2, full), layer.values.gather(2, full)
        if isinstance(layer, GrowingLayer):
            layer.write(keys, values)
        else:
            layer.keys, layer.values = keys, values


def drop_leading_slots(cache: Any, n: int) -> None:
    """Forget the first `n` slots of every row, in every layer (slots no row attends: the left padding that rows
    which have left the batch made others carry)."""
    for layer in getattr(cache, "layers", []):
        if not getattr(layer, "is_initialized", False) or n <= 0:
            continue
        if not _plain(layer):
            raise TypeError(f"cannot drop slots of a {type(layer).__name__} cache layer")
        keys, values = layer.keys[..., n:, :].clone(), layer.values[..., n:, :].clone()
        if isinstance(layer, GrowingLayer):
            layer.write(keys, values)
        else:
            layer.keys, layer.values = keys, values


def can_append_rows(cache: Any) -> bool:
    """Whether `append_rows` can take this cache: every layer a plain key/value one."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(_plain(layer) for layer in layers)


def _plain(layer: Any) -> bool:
    """A layer whose state is one (B, H, S, D) key tensor and one value tensor, which rows and slots can be
    rearranged in (not a recurrent, quantized or offloaded layer)."""
    return type(layer) in (GrowingLayer, DynamicLayer)


def append_rows(cache: Any, new: Any) -> None:
    """Append `new`'s rows to `cache`, in place: both are left-padded (with zeros) to the longer cached length, so
    every row keeps its slots at the right end, as a left-padded batch has them. The callers pad the masks alike."""
    for layer, other in zip(cache.layers, new.layers, strict=True):
        length = max(layer.keys.shape[-2], other.keys.shape[-2])
        keys = torch.cat([_left_pad(layer.keys, length), _left_pad(other.keys, length)])
        values = torch.cat([_left_pad(layer.values, length), _left_pad(other.values, length)])
        if isinstance(layer, GrowingLayer):
            layer.write(keys, values)
        else:
            layer.keys, layer.values = keys, values


def _left_pad(states: torch.Tensor, length: int) -> torch.Tensor:
    short = length - states.shape[-2]
    if short == 0:
        return states
    return torch.cat([states.new_zeros((*states.shape[:-2], short, states.shape[-1])), states], dim=-2)
