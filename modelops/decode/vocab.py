"""Shared-vocabulary checks and logit-width alignment for the logit-fusion rules (docs/methods.md §2.1)."""

from __future__ import annotations

from typing import Any

import torch

from modelops.errors import ModelopsError

PROBE = "Hello, world! 1234 café — naïve 東京 <tag> \n\tdone."
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>")
SPECIAL_ATTRS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")


class VocabularyMismatch(ModelopsError):
    """Two models' tokenizers differ, so their logits cannot be added token by token."""


def check_shared_vocabulary(tokenizers: dict[str, Any]) -> int:
    """Require one vocabulary: same token→id map, same special ids, same encoding of a probe string.

    Comparing only vocabulary sizes is not enough (Llama-2 and Mistral both have 32000 tokens).
    Returns the number of real tokens.
    """
    names = list(tokenizers)
    ref_name, ref = names[0], tokenizers[names[0]]
    ref_vocab = ref.get_vocab()
    hint = "logit fusion needs one shared vocabulary; use --rule cbs (weak-to-strong search works on text)"
    for name in names[1:]:
        tok = tokenizers[name]
        vocab = tok.get_vocab()
        if vocab != ref_vocab:
            only_ref = sorted(set(ref_vocab) - set(vocab))[:3]
            only_other = sorted(set(vocab) - set(ref_vocab))[:3]
            moved = [t for t in ref_vocab if t in vocab and vocab[t] != ref_vocab[t]][:3]
            detail = (
                f"{len(ref_vocab)} vs {len(vocab)} tokens; only in {ref_name}: {only_ref}; only in {name}: "
                f"{only_other}; different ids: {moved}"
            )
            raise VocabularyMismatch(f"tokenizers of {ref_name} and {name} differ ({detail}); {hint}")
        for attr in SPECIAL_ATTRS:
            a, b = getattr(ref, attr, None), getattr(tok, attr, None)
            if a is not None and b is not None and a != b:
                raise VocabularyMismatch(f"{attr} is {a} in {ref_name} but {b} in {name}; {hint}")
        ids_ref = ref(PROBE, add_special_tokens=False)["input_ids"]
        ids = tok(PROBE, add_special_tokens=False)["input_ids"]
        if ids_ref != ids:
            raise VocabularyMismatch(
                f"{ref_name} and {name} encode the probe string {PROBE!r} differently ({ids_ref[:8]}… vs "
                f"{ids[:8]}…: different normaliser or merges); {hint}"
            )
    return len(ref)


def stop_token_ids(tokenizers: list[Any], models: list[Any]) -> set[int]:
    """Union of every model's EOS ids (config and generation config) and known end-of-turn tokens."""
    ids: set[int] = set()

    def add(value: Any) -> None:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))

    for tok in tokenizers:
        add(getattr(tok, "eos_token_id", None))
        vocab = tok.get_vocab()
        for token in END_OF_TURN_TOKENS:
            if token in vocab and token in (getattr(tok, "all_special_tokens", None) or []):
                ids.add(vocab[token])
    for model in models:
        add(getattr(model.config, "eos_token_id", None))
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            add(getattr(gen, "eos_token_id", None))
    return ids


def align(logits: torch.Tensor, width: int, fill: float) -> torch.Tensor:
    """Cut or pad the last dim to `width` (the tokenizer's real tokens); padded entries get `fill`."""
    have = logits.shape[-1]
    if have == width:
        return logits
    if have > width:
        return logits[..., :width]
    pad = logits.new_full((*logits.shape[:-1], width - have), fill)
    return torch.cat([logits, pad], dim=-1)


def aligned_components(logits: list[torch.Tensor], width: int) -> list[torch.Tensor]:
    """Bring [large, small base, experts…] to the shared width.

    Rows past the tokenizer are not tokens and are cut. If a small model lacks ids the large model has, its
    log-probs are padded with 0 so every delta ℓ_S+ − ℓ_S− is 0 there; ids the large model lacks get −inf.
    Raw logits are kept when nothing needs padding (the per-row constants cancel in every rule).
    """
    if all(x.shape[-1] >= width for x in logits):
        return [x[..., :width] for x in logits]
    out = [align(torch.log_softmax(logits[0], -1), width, float("-inf"))]
    for x in logits[1:]:
        real = x[..., :width]
        out.append(align(torch.log_softmax(real, -1), width, 0.0))
    return out
