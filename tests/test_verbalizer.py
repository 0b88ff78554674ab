import logging

import pytest
import torch

from peft_dect.prompting import Verbalizer, label_log_probs, normalize_label_words


def test_bpe_words_after_a_space_use_the_space_prefixed_token(bpe_tokenizer):
    v = Verbalizer.from_words({"neg": ["bad"], "pos": ["great"]}, bpe_tokenizer, space_before=True)
    pieces = [bpe_tokenizer.convert_ids_to_tokens(list(ids)) for ids in v.token_ids]
    assert pieces == [["Ġbad"], ["Ġgreat"]]


def test_bpe_words_without_a_space_use_the_bare_token(bpe_tokenizer):
    v = Verbalizer.from_words({"neg": ["In"], "pos": ["summary"]}, bpe_tokenizer, space_before=False)
    assert [ids[0] for ids in v.token_ids] == [
        bpe_tokenizer.encode(w, add_special_tokens=False)[0] for w in ("In", "summary")
    ]
    spaced = Verbalizer.from_words({"neg": ["In"], "pos": ["summary"]}, bpe_tokenizer, space_before=True)
    assert bpe_tokenizer.convert_ids_to_tokens([spaced.token_ids[0][0]]) == ["ĠIn"]
    assert spaced.token_ids != v.token_ids


def test_sentencepiece_words_after_a_space_use_the_metaspace_token(sp_tokenizer):
    v = Verbalizer.from_words({"neg": ["bad"], "pos": ["great"]}, sp_tokenizer, space_before=True)
    pieces = [sp_tokenizer.convert_ids_to_tokens(list(ids)) for ids in v.token_ids]
    assert pieces == [["▁bad"], ["▁great"]]


def test_wordpiece_ignores_the_space(wordpiece_tokenizer):
    with_space = Verbalizer.from_words({"n": ["bad"], "p": ["great"]}, wordpiece_tokenizer, space_before=True)
    without = Verbalizer.from_words({"n": ["bad"], "p": ["great"]}, wordpiece_tokenizer, space_before=False)
    assert with_space.token_ids == without.token_ids
    assert wordpiece_tokenizer.convert_ids_to_tokens([with_space.token_ids[1][0]]) == ["great"]


def test_multi_token_word_warns_and_uses_first_token(bpe_tokenizer, caplog):
    word = "superbbrilliantness"
    ids = bpe_tokenizer.encode(" " + word, add_special_tokens=False)
    assert len(ids) > 1
    with caplog.at_level(logging.WARNING):
        v = Verbalizer.from_words({"n": ["bad"], "p": [word]}, bpe_tokenizer, space_before=True, multi_token="first")
    assert v.token_ids[1] == (ids[0],)
    assert "splits into tokens" in caplog.text and word in caplog.text


def test_multi_token_error_rule_refuses(bpe_tokenizer):
    with pytest.raises(ValueError, match="splits into"):
        Verbalizer.from_words(
            {"n": ["bad"], "p": ["superbbrilliantness"]}, bpe_tokenizer, space_before=True, multi_token="error"
        )


def test_words_sharing_a_first_token_are_an_error(bpe_tokenizer):
    with pytest.raises(ValueError, match="same token"):
        Verbalizer.from_words(
            {"n": ["greatness"], "p": ["greatly"]}, bpe_tokenizer, space_before=True, multi_token="first"
        )


def test_unknown_word_is_an_error(wordpiece_tokenizer):
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        Verbalizer.from_words({"n": ["bad"], "p": ["日本"]}, wordpiece_tokenizer, space_before=True)


@pytest.mark.parametrize(
    "words, message",
    [
        ({}, "non-empty mapping"),
        ({"a": ["x"]}, "at least two classes"),
        ({"a": [], "b": ["y"]}, "has no label words"),
        ({"a": [" "], "b": ["y"]}, "empty or non-string"),
        ({"a": ["x", "x"], "b": ["y"]}, "given twice"),
        ({"a": ["x"], "b": ["x"]}, "for both 'a' and 'b'"),
    ],
)
def test_bad_label_words(words, message):
    with pytest.raises(ValueError, match=message):
        normalize_label_words(words)


def test_aggregation_mean_and_max():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    ids = torch.tensor([[0, 1], [2, 0]])
    mask = torch.tensor([[True, True], [True, False]])
    logp = torch.log_softmax(logits, -1)[0]
    mean = label_log_probs(logits, ids, mask, "mean")
    mx = label_log_probs(logits, ids, mask, "max")
    assert torch.allclose(mean, torch.stack([(logp[0] + logp[1]) / 2, logp[2]]).unsqueeze(0))
    assert torch.allclose(mx, torch.stack([logp[1], logp[2]]).unsqueeze(0))
