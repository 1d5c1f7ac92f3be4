"""A tiny model family for the co-decoder: a word-level tokenizer and random Llamas that share it.

Weights use a wide init (std 0.2) so next-token distributions are peaked and differ between models; a fused
rule then visibly changes what is generated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

VOCAB = 96
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}user {{ m['content'] }} bot{% endfor %}"


def make_tokenizer(n_words: int = VOCAB - len(SPECIALS), chat: bool = False, shift: int = 0) -> Any:
    """Word-level tokenizer: specials 0-3, then w0…; `shift` rotates word ids (same size, different map)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(n_words)]
    if shift:
        words = words[shift:] + words[:shift]
    vocab = {t: i for i, t in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import decoders, processors

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def llama(seed: int, hidden: int = 32, layers: int = 2, vocab: int = VOCAB, std: float = 0.2) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=std,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def nudged(model: Any, seed: int, scale: float = 0.05) -> Any:
    """A copy with seeded noise on every weight: a stand-in for a fine-tune of `model`."""
    import copy

    g = torch.Generator().manual_seed(seed)
    new = copy.deepcopy(model)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return new


def save_with_tokenizer(model: Any, folder: Path, tokenizer: Any) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def decode_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """large (hidden 64), small base (hidden 32), two experts (fine-tunes of the base), all one tokenizer."""
    root = tmp_path_factory.mktemp("decode")
    tok = make_tokenizer()
    chat_tok = make_tokenizer(chat=True)
    base = llama(1)
    return {
        "large": save_with_tokenizer(llama(0, hidden=64), root / "large", tok),
        "base": save_with_tokenizer(base, root / "base", tok),
        "expert": save_with_tokenizer(nudged(base, 11), root / "expert", chat_tok),
        "expert2": save_with_tokenizer(nudged(base, 12), root / "expert2", tok),
    }


def prompts(n: int, seed: int = 0) -> list[str]:
    """Prompts of different lengths (1 to 12 words)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 1 + (i * 5) % 12
        words = torch.randint(0, VOCAB - len(SPECIALS), (length,), generator=g).tolist()
        out.append(" ".join(f"w{w}" for w in words))
    return out


def word_reward(prompt: str, completion: str) -> float:
    """A toy reward for tests: how often the completion says w5 or w7."""
    words = completion.split()
    return float(words.count("w5") + words.count("w7"))


def load(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def hf_greedy(path: Path, texts: list[str], max_new: int) -> list[list[int]]:
    """transformers' own greedy decode of a left-padded batch, cut at the first EOS."""
    model, tok = load(path)
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left")
    out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=0)
    rows = []
    for row in out[:, enc.input_ids.shape[1] :].tolist():
        rows.append(row[: row.index(2) + 1] if 2 in row else row)
    return rows


def full_logprobs(path: Path, text: str, cont_ids: list[int]) -> torch.Tensor:
    """Log-probs at the continuation positions from one plain forward of prompt + continuation.

    The last continuation token is never an input to those positions, so it is fed as 0 (it may be an id the
    model cannot embed).
    """
    model, tok = load(path)
    ids = tok(text)["input_ids"] + cont_ids[:-1] + [0]
    with torch.no_grad():
        out = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(out[len(ids) - len(cont_ids) - 1 : len(ids) - 1], -1)


def config_family(root: Path, make_config: Any, tokenizer: Any, noise: float) -> dict[str, Path]:
    """From `make_config(hidden)`: large (hidden 64), small base (hidden 32) and an expert (the base plus seeded
    noise), saved to folders under `root` with `tokenizer`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    large = AutoModelForCausalLM.from_config(make_config(64)).eval()
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_config(make_config(32)).eval()
    return {
        "large": save_with_tokenizer(large, root / "large", tokenizer),
        "base": save_with_tokenizer(base, root / "base", tokenizer),
        "expert": save_with_tokenizer(nudged(base, 3, noise), root / "expert", tokenizer),
    }


def family_decoder(fam: dict[str, Path], rule: Any) -> Any:
    from modelops.decode import CoDecoder

    return CoDecoder.load(str(fam["large"]), str(fam["base"]), [str(fam["expert"])], rule)
