"""One causal LM with its own KV cache, attention mask and positions: the one way modelops runs a model.

The co-decoder (every member), the zoo (scores, DPO samples) and `runtime.generate` all decode through it. With
`kvcache` (its cache layer), the only module of modelops that touches transformers' `Cache` API.
Rows are left-padded; every row keeps its own next position, so rows can be dropped (`select`), duplicated for
beams (`select` with repeats), and rolled back by a different number of tokens each (`rollback`), which
speculative decoding needs.
"""

from __future__ import annotations

from typing import Any

import torch

from modelops.devices import input_device
from modelops.transformers_compat import cache_keyword


class Runner:
    """A model plus its decoding state. Logits come back as float32, one row per live batch row."""

    def __init__(self, model: Any, name: str = "model", fallback_id: int = 0) -> None:
        self.model = model
        self.name = name
        # ids past this model's embedding (a token only the other models have) are fed as `fallback_id`
        self.input_rows = int(model.get_input_embeddings().num_embeddings)
        self.fallback_id = fallback_id
        self.device = input_device(model)
        self.width = int(model.get_output_embeddings().weight.shape[0])
        self.cache_kw = cache_keyword(model)
        # a sliding window counts cache slots, so a rolled-back slot must not stay as a hole inside it
        self.sliding = bool(getattr(getattr(model, "config", None), "sliding_window", None))
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # (B, S) 1 = attend, 0 = padding or rolled-back slot
        self.next_pos: torch.Tensor | None = None  # (B,) position id of the next token per row
        self.dense = False  # no padding and no holes: the model may skip building a mask
        self.full_tail = 0  # trailing columns every row attends (a lower bound the host keeps without a sync)
        self.room = (0, 0)  # (rows, slots) a new cache is allocated for: a decoder that knows its sizes sets it

    @property
    def batch_size(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    def _new_cache(self, room: tuple[int, int] | None) -> Any:
        """A cache for a new batch: this runner's own one emptied, keeping its memory (`room` None), or a new one."""
        try:
            from modelops.runtime.kvcache import emptied, growing_cache
        except ImportError:  # a transformers without per-layer caches (`DynamicLayer`): its own DynamicCache
            from transformers import DynamicCache

            return DynamicCache()
        if room is None and self.cache is not None and emptied(self.cache):
            return self.cache
        return growing_cache(self.model, self.room if room is None else room)

    def _inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Left-padded rows on this model's device: (ids, mask, positions counted from each row's first token)."""
        mask = attention_mask.to(self.device, torch.long)
        return self._embeddable(input_ids.to(self.device)), mask, (mask.cumsum(-1) - 1).clamp(min=0)

    @torch.inference_mode()
    def prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, room: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Run left-padded prompts (B, T) into an empty cache (this runner's own, or a new one allocated for `room`);
        return the last position's logits (B, W)."""
        input_ids, mask, positions = self._inputs(input_ids, attention_mask)
        self.cache = self._new_cache(room)
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kw: self.cache},
        )  # the cache is filled in place
        self.mask = mask
        self.next_pos = mask.sum(-1)
        tails = mask.flip(-1).cumprod(-1).sum(-1)  # each row's trailing attended columns
        self.full_tail = int(tails.min()) if len(tails) else mask.shape[1]  # the one host read of a prefill
        self.dense = self.full_tail == mask.shape[1]
        return out.logits.float()[:, -1]

    def tail_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int) -> torch.Tensor:
        """Logits of the last `keep` positions of left-padded rows (B, keep, W), in the model's dtype, with no cache:
        teacher-forced scoring needs neither the keys and values nor the prompt's logits (a (B, T, V) float32 copy of
        them is what fills a GPU first)."""
        input_ids, mask, positions = self._inputs(input_ids, attention_mask)
        self.reset()
        with torch.inference_mode():
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False,
                             logits_to_keep=keep)  # fmt: skip
        return out.logits

    def reset(self) -> None:
        """Forget every row (the next `admit` or `prefill` starts a new batch)."""
        self.cache = self.mask = self.next_pos = None
        self.dense = False
        self.full_tail = 0

    @property
    def can_admit(self) -> bool:
        """Whether new rows can join this runner's batch mid-decode (its cache layers are plain key/value ones)."""
        from modelops.runtime.kvcache import can_append_rows

        return self.cache is not None and can_append_rows(self.cache)

    @torch.inference_mode()
    def admit(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Prefill new left-padded prompts and append them, after the live rows, to the batch: the way a finished
        row's place is given to the next prompt. Returns the new rows' last-position logits (B_new, W)."""
        if self.batch_size == 0:
            return self.prefill(input_ids, attention_mask)
        from modelops.runtime.kvcache import append_rows

        cache, mask, next_pos, tail = self.cache, self.mask, self.next_pos, self.full_tail
        assert mask is not None and next_pos is not None
        logits = self.prefill(input_ids, attention_mask, room=(0, 0))  # the new rows alone, in a cache of their own
        new_mask, new_pos = self.mask, self.next_pos
        assert new_mask is not None and new_pos is not None
        append_rows(cache, self.cache)
        width = max(mask.shape[1], new_mask.shape[1])
        self.cache = cache
        self.mask = torch.cat([_left_pad_mask(mask, width), _left_pad_mask(new_mask, width)])
        self.next_pos = torch.cat([next_pos, new_pos])
        self.full_tail = min(tail, self.full_tail)  # left padding to a common width keeps each row's tail
        self.dense = self.full_tail == width
        return logits

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed (B,) or (B, k) tokens to every live row; return logits (B, W) or (B, k, W)."""
        assert self.mask is not None and self.next_pos is not None, "prefill first"
        single = tokens.dim() == 1
        tokens = self._embeddable(tokens.to(self.device).view(self.batch_size, -1))
        k = tokens.shape[1]
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.batch_size, k)], dim=1)
        positions = self.next_pos[:, None] + torch.arange(k, device=self.device)
        out = self.model(
            input_ids=tokens,
            attention_mask=None if self.dense else self.mask,
            position_ids=positions,
            use_cache=True,
            **{self.cache_kw: self.cache},
        )
        self.next_pos = self.next_pos + k
        self.full_tail += k
        logits = out.logits.float()
        return logits[:, 0] if single else logits

    @torch.inference_mode()
    def _right_align(self, mask: torch.Tensor) -> torch.Tensor:
        """Move every row's attended slots, in order, to the right end (the holes become left padding), so the
        last W slots a sliding window sees are the row's last W tokens, as in a decode that never rolled back.
        Positions are per row and unchanged, so rotary keys stay valid."""
        from modelops.runtime.kvcache import reorder_slots

        index = torch.argsort(mask, dim=-1, stable=True)  # unattended slots first, then attended ones in order
        reorder_slots(self.cache, index)
        self.full_tail = 0  # unknown without a host read
        return mask.gather(1, index)

    def _embeddable(self, ids: torch.Tensor) -> torch.Tensor:
        # no `ids.max()` test first: that would sync the device every step for a case that is rare
        return ids.masked_fill(ids >= self.input_rows, self.fallback_id)

    @torch.inference_mode()
    def select(self, rows: torch.Tensor) -> None:
        """Keep, reorder or repeat rows (beam search, finished rows leaving the batch)."""
        assert self.mask is not None and self.next_pos is not None
        rows = rows.to(self.device)
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]
        self.next_pos = self.next_pos[rows]
        self._drop_unattended_lead()

    def _drop_unattended_lead(self) -> None:
        """Crop the leading slots no row attends once they are a quarter of the cache: rows that joined a running
        batch were left-padded to its length, and without this the cache of a continuous batch would only grow.
        Positions are per row and unchanged; relative slot distances (a sliding window's) too."""
        from modelops.runtime.kvcache import can_append_rows, drop_leading_slots

        assert self.mask is not None
        attended = self.mask.any(dim=0)
        lead = int(attended.int().argmax()) if bool(attended.any()) else 0
        if lead == 0 or 4 * lead < self.mask.shape[1] or not can_append_rows(self.cache):
            return
        drop_leading_slots(self.cache, lead)
        self.mask = self.mask[:, lead:]
        self.dense = bool(self.mask.all())

    def rollback(self, n: torch.Tensor | list[int] | int) -> None:
        """Forget the last n[row] attended tokens of each row (n may differ per row; earlier holes don't count).

        Forgotten slots are masked out, slots no row attends any more are cropped from the cache, and each
        row's next position becomes its count of attended tokens, so the next token reuses the forgotten
        position ids exactly as if they had never been fed. With host counts that stay inside the columns every
        row attends (a speculative round's rejected drafts), it reads nothing back from the device.
        """
        assert self.mask is not None and self.next_pos is not None
        mask = self.mask
        on_host = not isinstance(n, torch.Tensor) or n.device.type == "cpu"
        if on_host:  # the counts' range decides the cases below without a device sync
            counts = torch.as_tensor(n)
            fewest, most = int(counts.min()), int(counts.max())
            if most == 0:
                return
        need = torch.as_tensor(n, dtype=mask.dtype).to(mask.device, non_blocking=True)  # a fresh copy: safe
        need = need.expand(mask.shape[0]) if need.dim() == 0 else need
        if on_host and most < self.full_tail:
            mask, last = forget_within_tail(mask, need, fewest)
            uniform = fewest == most
            self.full_tail = self.full_tail - fewest if uniform else 0
            dense = self.dense and uniform  # a row that forgot more ends in a hole
            holes = not uniform
        else:
            if not on_host and int(need.max()) == 0:
                return
            from_right = mask.flip(-1).cumsum(-1).flip(-1)  # (B, S) attended slots at or after each column
            mask = mask.masked_fill((mask == 1) & (from_right <= need[:, None]), 0)
            columns = torch.arange(mask.shape[1], device=mask.device)
            last = int(torch.where(mask.any(dim=0), columns, 0).max()) + 1  # past the last attended column (1 if none)
            mask = mask[:, :last]
            self.full_tail = 0
            dense = bool(mask.all())
            holes = self.sliding and bool((mask[:, 1:] < mask[:, :-1]).any())  # a hole after an attended slot
        if last < self.mask.shape[1]:
            self.cache.crop(last - self.mask.shape[1])
        if self.sliding and holes:
            mask = self._right_align(mask)
        self.mask = mask
        self.next_pos = mask.sum(-1)
        self.dense = dense


def forget_within_tail(mask: torch.Tensor, need: torch.Tensor, fewest: int) -> tuple[torch.Tensor, int]:
    """Mask out the last need[row] columns of each row and crop past the last attended column, when every row
    attends more trailing columns than the largest need: the row that forgets `fewest` then ends exactly at
    column S − fewest, so the crop is known on the host. Device ops only (no host read)."""
    width = mask.shape[1]
    columns = torch.arange(width, device=mask.device)
    kept = mask.masked_fill(columns >= width - need[:, None], 0)
    return kept[:, : width - fewest], width - fewest


def _left_pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat([mask.new_zeros((mask.shape[0], width - mask.shape[1])), mask], dim=1)
