"""Tiny base/tuned pairs for the LoRA tests, built from config in tmp dirs (no downloads).

The tuned model is the base plus a known change: an exactly low-rank ΔW = B·A (rank 3) on every linear layer,
optionally Gaussian noise on top (full-rank ΔW), a changed embedding row, changed norms and biases.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch

VOCAB = 96
DELTA_RANK = 3


def llama(tie: bool = False, seed: int = 0, intermediate: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


def gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(cfg).eval()


def tune(
    model,
    *,
    seed: int = 1,
    noise: float = 0.0,
    embed_row: bool = True,
    norms_biases: bool = False,
    scale: float = 0.05,
):
    """A copy of `model` with a rank-3 ΔW on every 2-D non-embedding weight (+ optional noise and extras)."""
    g = torch.Generator().manual_seed(seed)
    new = copy.deepcopy(model)
    emb = new.get_input_embeddings().weight
    with torch.no_grad():
        for name, p in new.named_parameters():
            if p.ndim == 2 and p is not emb and "wpe" not in name and "lm_head" not in name:
                p += (
                    scale
                    * torch.randn(p.shape[0], DELTA_RANK, generator=g)
                    @ torch.randn(DELTA_RANK, p.shape[1], generator=g)
                )
                if noise:
                    p += noise * torch.randn(p.shape, generator=g)
            elif p.ndim == 1 and norms_biases:
                p += 0.05 * torch.randn(p.shape, generator=g)
        if embed_row:
            emb[5] += 0.3
    return new


def save(model, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    return path


def load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def load_peft(base_path: Path, adapter: Path):
    """Base + adapter through peft; returns (model, peft's warnings about keys)."""
    from peft import PeftModel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(load(base_path), adapter).eval()
    key_warnings = [str(w.message) for w in caught if "keys" in str(w.message).lower()]
    return model, key_warnings


def logits(model, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids).logits.float()
