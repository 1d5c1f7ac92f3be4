"""The zoo's tokenizer: a word-level model trained with `tokenizers` on the world's corpus.

One word, one token: names are three tokens (capacity decides whether a fact is known), numbers one token per
digit. Saved through `PreTrainedTokenizerFast.save_pretrained` so `AutoTokenizer` loads it, with bos/eos/pad
and a chat template that renders a user turn in the fine-tuned Q/A format.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from modelops.zoo.world import BOS, EOS, PAD, SPECIAL_TOKENS, UNK

# A user turn becomes `Q : <question> A :`; an assistant turn ` <answer> <eos>` (the tuned models' format).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}{% if not loop.first %} {% endif %}Q : {{ m['content'] }} A :"
    "{% elif m['role'] == 'assistant' %} {{ m['content'] }} {{ eos_token }}{% endif %}"
    "{% endfor %}"
)


def train_tokenizer(texts: Iterable[str], words: list[str]) -> Any:
    """A `PreTrainedTokenizerFast` whose vocabulary is the specials, then every word seen (frequency order)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1, show_progress=False)
    # `words` guarantees every word of the world is in the vocabulary even if the sample corpus missed one.
    specials = set(SPECIAL_TOKENS)
    plain = (" ".join(w for w in t.split() if w not in specials) for t in texts)  # specials keep ids 0..3
    tok.train_from_iterator([*plain, " ".join(words)], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins word tokens with single spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=128,
        padding_side="left",  # generation batches are left-padded
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(tok: Any, folder: Path) -> None:
    tok.save_pretrained(folder)


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)
