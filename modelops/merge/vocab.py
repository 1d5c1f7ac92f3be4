"""Tokenizer merging: the output vocabulary (`base`, one model's, or the `union`) and, for every input, its
embedding and head rows laid out in that vocabulary, by mergekit's rules.

- union: the base's tokens in the base's order, then every other model's tokens it lacks (recipe order), then
  added (special) tokens; a model's ids at or above its config's vocab_size (padding rows) are ignored.
- A model that lacks a token gets a stand-in row, so the merge takes nothing from it: the row of the only model
  that has the token; else the base's row when the base has it; else the mean of the models that have it; zeros
  when none does. Rows padded up to `pad_to_multiple_of` hold the mean of the real rows.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modelops.checkpoint import Checkpoint
from modelops.errors import CheckpointError

VOCAB_TENSORS = ("embed_tokens", "lm_head", "wte", "word_embeddings", "embed_out")


@dataclass
class VocabPlan:
    """The output tokenizer and, per input model, where each output token's row comes from."""

    tokenizer: Any  # a transformers tokenizer, saved into the output
    size: int  # rows of the output embedding (vocabulary, padded)
    index: dict[str, torch.Tensor]  # model -> (V_out,) row in that model, −1 when it lacks the token
    donors: dict[int, list[str]] = field(default_factory=dict)  # token id -> models whose rows stand in for it
    tokens: int = 0  # real tokens (≤ size)

    def rows_for(self, model: str, stored: torch.Tensor, by_model: dict[str, torch.Tensor]) -> torch.Tensor:
        """`model`'s vocabulary matrix in the output's token order (float32), stand-ins where it lacks a token."""
        idx = self.index[model]
        out = torch.zeros(self.size, *stored.shape[1:], dtype=torch.float32, device=stored.device)
        present = idx >= 0
        out[: self.tokens][present] = stored[idx[present]].float()
        for token_id in (~present).nonzero().flatten().tolist():
            donors = self.donors.get(token_id, [])
            if donors:
                rows = [by_model[m][int(self.index[m][token_id])].float() for m in donors]
                out[token_id] = torch.stack(rows).mean(dim=0)
        if self.size > self.tokens:
            out[self.tokens :] = out[: self.tokens].mean(dim=0)
        return out


def is_vocab_tensor(name: str, shape: tuple[int, ...], vocab_size: int | None) -> bool:
    """An input embedding or output head: named like one and with one row per token."""
    return len(shape) == 2 and any(k in name for k in VOCAB_TENSORS) and (vocab_size is None or shape[0] == vocab_size)


def _tokenizer(ck: Checkpoint) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(ck.folder))
    except Exception as exc:  # missing or unreadable tokenizer files
        raise CheckpointError(f"{ck.name}: cannot load its tokenizer for tokenizer merging ({exc})") from None


def _vocab_size(ck: Checkpoint, tok: Any) -> int:
    return int((ck.config or {}).get("vocab_size") or len(tok.get_vocab()))


def union_tokenizer(base_tok: Any, others: list[tuple[Any, int]], base_size: int) -> Any:
    """A copy of the base tokenizer with every other token added: plain tokens first, then added tokens."""
    plain: dict[str, None] = {}
    added: dict[str, Any] = {}
    for tok, size in [(base_tok, base_size), *others]:
        specials = tok.added_tokens_decoder
        special_text = {info.content for info in specials.values()}
        for text, idx in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if idx < size and text not in special_text:
                plain.setdefault(text, None)
        for idx, info in sorted(specials.items()):
            if idx < size:
                added.setdefault(info.content, info)
    with tempfile.TemporaryDirectory() as tmp:
        base_tok.save_pretrained(tmp)
        from transformers import AutoTokenizer

        out = AutoTokenizer.from_pretrained(tmp)
    have = base_tok.get_vocab()
    missing = [t for t in plain if t not in have]
    if missing:
        out.add_tokens(missing)
    new_added = [info for text, info in added.items() if text not in out.get_vocab()]
    if new_added:
        out.add_tokens(new_added)
    return out


def plan_vocab(
    source: str, base: str | None, models: list[str], checkpoints: dict[str, Checkpoint], pad_to_multiple_of: int | None
) -> VocabPlan:
    """Build the output tokenizer for `source` ('union', 'base' or a model) and each input's row map."""
    order = ([base] if base else []) + [m for m in models if m != base]
    toks = {m: _tokenizer(checkpoints[m]) for m in order}
    sizes = {m: _vocab_size(checkpoints[m], toks[m]) for m in order}
    first = order[0]
    if source == "union":
        out_tok = union_tokenizer(toks[first], [(toks[m], sizes[m]) for m in order[1:]], sizes[first])
    elif source == "base":
        out_tok = toks[first]
    else:
        out_tok = toks[source] if source in toks else _tokenizer(checkpoints[source])
    vocab = out_tok.get_vocab()
    n = max(vocab.values()) + 1 if vocab else 0
    size = n if not pad_to_multiple_of else -(-n // pad_to_multiple_of) * pad_to_multiple_of
    index = {}
    for m in order:
        mv, idx = toks[m].get_vocab(), torch.full((n,), -1, dtype=torch.long)
        for text, new_id in vocab.items():
            old = mv.get(text)
            if old is not None and old < sizes[m]:
                idx[new_id] = old
        index[m] = idx
    donors: dict[int, list[str]] = {}
    for new_id in range(n):
        have = [m for m in order if index[m][new_id] >= 0]
        if len(have) == 1 or (base is not None and base in have):
            donors[new_id] = [have[0] if len(have) == 1 else base]
        elif have:
            donors[new_id] = have
    return VocabPlan(out_tok, size, index, donors, n)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
SLOW_TOKENIZER_FILES = ("tokenizer.model", "vocab.json", "merges.txt", "vocab.txt")


def save_tokenizer(plan: VocabPlan, folder: Path) -> None:
    """Write the merged tokenizer, replacing the reference's tokenizer files (none of them may be left stale)."""
    for name in (*TOKENIZER_FILES, *SLOW_TOKENIZER_FILES):
        (folder / name).unlink(missing_ok=True)
    plan.tokenizer.save_pretrained(str(folder))
