"""The shared-vocabulary check refuses tokenizers that differ in any way that matters."""

from __future__ import annotations

import pytest
from decode_fixtures import make_tokenizer

from modelops.decode.vocab import VocabularyMismatch, check_shared_vocabulary, stop_token_ids


def test_same_tokenizer_passes_and_returns_its_length():
    assert check_shared_vocabulary({"a": make_tokenizer(), "b": make_tokenizer(chat=True)}) == 96


def test_same_size_but_different_ids_is_refused_with_a_pointer_to_cbs():
    with pytest.raises(VocabularyMismatch, match="--rule cbs") as exc:
        check_shared_vocabulary({"a": make_tokenizer(), "b": make_tokenizer(shift=5)})
    assert "96 vs 96 tokens" in str(exc.value)


def test_different_special_ids_are_refused():
    a, b = make_tokenizer(), make_tokenizer()
    b.pad_token = "</s>"
    with pytest.raises(VocabularyMismatch, match="pad_token_id is 0 in a but 2 in b"):
        check_shared_vocabulary({"a": a, "b": b})


def test_different_normaliser_is_caught_by_the_probe_string():
    from tokenizers import AddedToken, normalizers

    a, b = make_tokenizer(), make_tokenizer()
    b.backend_tokenizer.normalizer = normalizers.Lowercase()  # same vocabulary, same specials
    for tok in (a, b):
        tok.add_tokens([AddedToken("hello,", normalized=True)])
    with pytest.raises(VocabularyMismatch, match="probe string"):
        check_shared_vocabulary({"a": a, "b": b})


def test_stop_ids_are_the_union_of_every_model():
    class Cfg:
        def __init__(self, eos):
            self.eos_token_id = eos

    class M:
        def __init__(self, eos):
            self.config, self.generation_config = Cfg(eos), Cfg(None)

    ids = stop_token_ids([make_tokenizer()], [M(2), M([7, 9])])
    assert ids == {2, 7, 9}
