"""Issue 9, requirement 1: every bad input of the list ends in a named error (or a warned, documented rule), on a
masked and on a causal LM, through the public API (config, fit, predict)."""

import logging

import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE, sentiment_data, tiny_llama, tiny_roberta
from peft import get_peft_model

from peft_dect import DecTConfig


KINDS = ["masked", "causal"]


def make(kind, tok, **kwargs):
    model = tiny_roberta(tok) if kind == "masked" else tiny_llama(tok)
    cfg = {"template": TEMPLATE, "label_words": LABEL_WORDS, **kwargs}
    return get_peft_model(model, DecTConfig(**cfg))


def fit(model, tok, data, **kwargs):
    return model.fit(data, tokenizer=tok, show_progress=False, **kwargs)


CONFIG_ERRORS = {
    "template without {mask}": ({"template": "{text_a} It was great."}, r"exactly one \{mask\}"),
    "two {mask}": ({"template": "{text_a} {mask} or {mask}"}, r"exactly one \{mask\}"),
    "unknown placeholder": ({"template": "{text_a} {label} {mask}"}, r"unknown placeholder \{label\}"),
    "unescaped brace": ({"template": "{text_a} {oops {mask}"}, "does not parse"),
    "no label words": ({"label_words": {}}, "non-empty mapping"),
    "class without words": ({"label_words": {"negative": [], "positive": ["great"]}}, "has no label words"),
    "empty label word": ({"label_words": {"negative": [" "], "positive": ["great"]}}, "empty or non-string"),
    "duplicate label word": ({"label_words": {"negative": ["bad", "bad"], "positive": ["great"]}}, "given twice"),
    "word for two classes": (
        {"label_words": {"negative": ["bad"], "positive": ["great", "bad"]}},
        "for both 'negative' and 'positive'",
    ),
    "one class": ({"label_words": {"positive": ["great"]}}, "at least two classes"),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_bad_config_is_refused_when_built(case):
    kwargs, message = CONFIG_ERRORS[case]
    with pytest.raises(ValueError, match=message):
        DecTConfig(**{"template": TEMPLATE, "label_words": LABEL_WORDS, **kwargs})


def test_same_first_token_for_two_classes_is_refused(bpe_tokenizer):
    words = {"negative": ["greatly"], "positive": ["greatness"]}  # both start with the token 'Ġgreat'
    with pytest.raises(ValueError, match="cannot be told apart"):
        # the rule that scores first tokens only (the default scores whole words, which tells them apart)
        make("causal", bpe_tokenizer, label_words=words, multi_token="first").predict(
            ["a film"], tokenizer=bpe_tokenizer
        )


@pytest.mark.parametrize(
    "template, message",
    [
        ("{text_a}? {mask}, {text_b}", "would never see it"),
        ("{mask}: {text_a}", r"starts with \{mask\}"),
    ],
)
def test_mask_before_a_text_field_is_refused_for_a_causal_lm(bpe_tokenizer, template, message):
    with pytest.raises(ValueError, match=message):
        make("causal", bpe_tokenizer, template=template)
    make("masked", bpe_tokenizer, template=template)  # a masked LM reads both sides of the mask


@pytest.mark.parametrize("kind", KINDS)
def test_pair_template_with_single_text_data(bpe_tokenizer, kind):
    model = make(kind, bpe_tokenizer, template="{text_a} ? {text_b} It was {mask}.")
    with pytest.raises(ValueError, match="no second text column"):
        fit(model, bpe_tokenizer, sentiment_data(4, 1))
    with pytest.raises(TypeError, match=r"give \(text_a, text_b\) pairs"):
        model.predict(["only one text"], tokenizer=bpe_tokenizer)


@pytest.mark.parametrize("kind", KINDS)
def test_labels_that_label_words_do_not_cover(bpe_tokenizer, kind):
    model = make(kind, bpe_tokenizer)
    data = {"text": ["a good film", "a bad film", "a film"], "label": ["positive", "negative", "neutral"]}
    with pytest.raises(ValueError, match="Row 2 has label 'neutral', which label_words does not name"):
        fit(model, bpe_tokenizer, data)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["auto", "faithful"])
def test_class_without_training_examples_warns_and_trains(bpe_tokenizer, caplog, kind, mode):
    words = {"negative": ["bad"], "positive": ["great"], "neutral": ["film"]}
    model = make(kind, bpe_tokenizer, label_words=words, mode=mode)
    with caplog.at_level(logging.WARNING):
        report = fit(model, bpe_tokenizer, sentiment_data(4, 1))
    assert "Classes ['neutral'] have no example in the data" in caplog.text
    assert report["train_examples"] == 8
    proba = model.predict_proba(["a good film", "a bad film"])
    assert proba.shape == (2, 3) and bool(torch.isfinite(torch.from_numpy(proba)).all())


@pytest.mark.parametrize("kind", KINDS)
def test_training_data_of_a_single_class_warns_and_trains(bpe_tokenizer, caplog, kind):
    model = make(kind, bpe_tokenizer)
    with caplog.at_level(logging.WARNING):
        fit(model, bpe_tokenizer, {"text": ["a good film", "a great film"], "label": [1, 1]})
    assert "Classes ['negative'] have no example" in caplog.text
    assert len(model.predict(["a bad film"], tokenizer=bpe_tokenizer)) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_empty_dataset(bpe_tokenizer, kind):
    model = make(kind, bpe_tokenizer)
    with pytest.raises(ValueError, match="The data is empty"):
        fit(model, bpe_tokenizer, {"text": [], "label": []})
    with pytest.raises(ValueError, match="The data is empty"):
        model.predict([], tokenizer=bpe_tokenizer)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("blank", ["", "   ", "\n\t ", "\u3000"])
def test_empty_or_whitespace_text_is_kept_with_a_warning_naming_the_inputs(bpe_tokenizer, caplog, kind, blank):
    """Documented rule (docs/errors.md): real data has empty rows (CR's seed-13 train and test splits), so they are
    classified from the bare template, and a warning names them."""
    model = make(kind, bpe_tokenizer)
    data = {"text": ["a good film", blank, "a bad film", blank], "label": [1, 0, 0, 1]}
    with caplog.at_level(logging.WARNING):
        fit(model, bpe_tokenizer, data)
    assert "2 input(s) have an empty or whitespace-only text, at index 1, 3" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        proba = model.predict_proba(["a film", blank], tokenizer=bpe_tokenizer)
    assert "1 input(s) have an empty or whitespace-only text, at index 1" in caplog.text
    assert proba.shape == (2, 2) and bool(torch.isfinite(torch.from_numpy(proba)).all())


def test_empty_second_text_is_named(bpe_tokenizer, caplog):
    model = make("masked", bpe_tokenizer, template="{text_a} ? {mask} , {text_b}")
    with caplog.at_level(logging.WARNING):
        model.predict([("a film", "good"), ("a film", " ")], tokenizer=bpe_tokenizer)
    assert "whitespace-only second text (text_b), at index 1" in caplog.text


@pytest.mark.parametrize("kind", KINDS)
def test_over_long_texts_are_truncated_with_a_count(bpe_tokenizer, caplog, kind):
    template = "{text_a} | {text_b} In summary, it was {mask}."
    model = make(kind, bpe_tokenizer, template=template, max_length=32)
    long_a, long_b = " ".join(["the film was good"] * 60), " ".join(["and the plot was fun"] * 40)
    data = {"text_a": [long_a, "a bad film", long_a], "text_b": ["ok", long_b, long_b], "label": [1, 0, 1]}
    with caplog.at_level(logging.WARNING):
        fit(model, bpe_tokenizer, data)
    assert "Truncated the text of 3 input(s) to fit max_length=32 tokens" in caplog.text
    bb = model.base_model.backbone()
    ids = bb.tokenize(data["text_a"], data["text_b"])
    tail = bpe_tokenizer(" In summary, it was", add_special_tokens=False)["input_ids"]
    for row in ids:
        assert len(row) <= 32
        assert "|" in bpe_tokenizer.decode(row)  # both text fields kept their separator
        if kind == "masked":
            assert row.count(bpe_tokenizer.mask_token_id) == 1
            assert row[-3:-1] == [bpe_tokenizer.mask_token_id, bpe_tokenizer.convert_tokens_to_ids(".")]
        else:
            assert row[-len(tail) - 1 : -1] == tail  # this tiny tokenizer appends </s>


def _poison(model, tok, word: str) -> None:
    """Make every input containing `word` overflow: its embeddings become inf, as an fp16 overflow would."""
    ids = torch.tensor(tok(" " + word, add_special_tokens=False)["input_ids"])

    def hook(module, args, output):
        return output.masked_fill(torch.isin(args[0], ids).unsqueeze(-1), float("inf"))

    model.get_input_embeddings().register_forward_hook(hook)


@pytest.mark.parametrize("kind", KINDS)
def test_non_finite_features_name_the_input(bpe_tokenizer, kind):
    model = make(kind, bpe_tokenizer)
    data = {"text": ["a good film", "a bad film", "the story was dull"], "label": [1, 0, 0]}
    fit(model, bpe_tokenizer, data)  # fine before the overflow
    _poison(model.get_base_model(), bpe_tokenizer, "tedious")
    with pytest.raises(ValueError, match=r"NaN or infinite features for 1 input\(s\), the first at index 1 \('a"):
        model.predict(["a fine film", "a tedious film"], tokenizer=bpe_tokenizer)
    W = model.base_model.dect_layer.dect_W["default"].detach().clone()
    with pytest.raises(ValueError, match="NaN or infinite features"):
        fit(model, bpe_tokenizer, {"text": ["a tedious film", "a great film"], "label": [0, 1]})
    assert torch.equal(W, model.base_model.dect_layer.dect_W["default"])  # the fitted decoder is untouched


def test_non_finite_features_stop_the_trainer_path(bpe_tokenizer):
    model = make("causal", bpe_tokenizer)
    prepared = model.prepare_dataset({"text": ["a tedious film", "a great film"], "label": [0, 1]}, bpe_tokenizer)
    _poison(model.get_base_model(), bpe_tokenizer, "tedious")
    batch = model.collate([prepared[0], prepared[1]])
    model.train()
    with pytest.raises(ValueError, match="NaN or infinite features"):
        model(**batch)


@pytest.mark.parametrize("kind", KINDS)
def test_text_that_is_not_valid_unicode_names_the_input(bpe_tokenizer, kind):
    """Found by the fuzzer: a lone surrogate reached the tokenizer and failed with an unrelated TypeError."""
    model = make(kind, bpe_tokenizer)
    with pytest.raises(ValueError, match=r"1 input\(s\) have a text that is not valid Unicode, at index 1"):
        model.predict(["a film", "a cut emoji \ud83d"], tokenizer=bpe_tokenizer)
    with pytest.raises(ValueError, match="Label word '\\\\ud83d' of class 'positive' is not valid Unicode"):
        DecTConfig(template=TEMPLATE, label_words={"negative": ["bad"], "positive": ["\ud83d"]})
    with pytest.raises(ValueError, match="is not valid Unicode"):
        DecTConfig(template="{text_a} \udc00 {mask}", label_words=LABEL_WORDS)


@pytest.mark.parametrize("kind", KINDS)
def test_truncating_multibyte_text_never_blames_the_template(bpe_tokenizer, kind):
    """Found by the fuzzer: cutting byte-level tokens split characters, re-encoding grew the text, and truncation
    gave up with 'the template alone needs more than max_length' although the template fitted."""
    template = "{text_a}$q²¥Å #[Þ It was {mask}."
    model = make(kind, bpe_tokenizer, template=template)
    bb = model.base_model.backbone(bpe_tokenizer)
    bare = len(bb.tokenize(["x"])[0])
    bb.max_length = bare + 3
    texts = ["\x00 שלום dull great " * 5, "مرحبا 👨\u200d👩\u200d👧 " * 9]
    ids = bb.tokenize(texts)
    assert all(len(row) <= bb.max_length for row in ids)
    assert bb.truncated == 2
