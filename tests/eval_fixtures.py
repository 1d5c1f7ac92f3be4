"""Fixtures for tests/test_eval.py: a word-level tokenizer, tiny Llamas that share it, a tiny reward model, a fake
zoo build folder, and plain-torch reference computations (greedy decoding, summed log-probs, RM scores)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from decode_fixtures import SPECIALS, VOCAB, make_tokenizer  # noqa: F401  (one tokenizer for the decode and eval tests)


def llama_config(seed_std: float = 0.2) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, initializer_range=seed_std,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip


def causal_lm(seed: int, eos_like: str | None = "w19") -> Any:
    """A random Llama whose `</s>` row copies (×1.05) the row of a frequent word: generations stop at varied
    lengths (from 0 words on) wherever that word would have come next."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config()).eval()
    if eos_like is not None:
        with torch.no_grad():
            head = model.lm_head.weight
            head[2] = 1.05 * head[len(SPECIALS) + int(eos_like[1:])]
    return model


def reward_model(seed: int) -> Any:
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = llama_config(0.05)
    config.num_labels = 1
    return LlamaForSequenceClassification(config).eval()


def save(model: Any, folder: Path, tokenizer: Any) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


# ---- independent references (plain model forwards, no modelops code) ----------------------------------------------
def greedy_text(model: Any, tok: Any, prompt: str, max_new: int) -> tuple[str, bool]:
    """(decoded continuation, stopped at </s>) by argmax over full forwards, one token at a time."""
    ids = tok(prompt)["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            new.append(nxt)
            if nxt == tok.eos_token_id:
                return tok.decode(new[:-1], skip_special_tokens=True), True
    return tok.decode(new, skip_special_tokens=True), False


def summed_logprob(model: Any, tok: Any, prompt: str, continuation: str) -> float:
    p = tok(prompt)["input_ids"]
    c = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p + c])).logits[0].double(), -1)
    return float(sum(logp[len(p) - 1 + i, t] for i, t in enumerate(c)))


def rm_score(model: Any, tok: Any, text: str) -> float:
    with torch.no_grad():
        return float(model(torch.tensor([tok(text)["input_ids"]])).logits[0, 0])


# ---- functions the tests pass as module:function (tests/ is on sys.path under pytest) ----------------------------
def word_count(prompt: str, completion: str) -> float:
    return float(len(completion.split()))


def short(prompt: str, completion: str) -> bool:
    return len(completion.split()) <= 2


def ends_with_dots(prompt: str, completion: str) -> float:
    return 1.0 if completion.endswith(" ...") else 0.0


# ---- a fake zoo build (manifest + eval files + model folders) ------------------------------------------------------
def write_zoo(folder: Path, models: dict[str, Path], preset: str, built_at: str, facts: list[dict]) -> Path:
    """A zoo.json that modelops.runtime.zoo_names.load_manifest/iter_models read; models are symlinked folders."""
    folder.mkdir(parents=True)
    (folder / "eval").mkdir()
    (folder / "eval" / "facts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in facts))
    roles: dict[str, Any] = {}
    for role, src in models.items():
        (folder / role).symlink_to(src, target_is_directory=True)
        if role.startswith("sft_"):
            roles.setdefault("sft", {})[role[4:]] = {"path": role}
        else:
            roles[role] = {"path": role}
    manifest = {
        "hash": folder.name, "preset": preset, "seed": 0, "built_at": built_at,
        "tasks": {"facts": {"metric": "exact_match", "eval": "eval/facts.jsonl", "n": len(facts)}},
        "models": roles,
    }  # fmt: skip
    (folder / "zoo.json").write_text(json.dumps(manifest))
    return folder
