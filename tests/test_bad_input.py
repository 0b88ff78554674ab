"""Bad input ends in a clear error (or a documented, warned rule), never a silent wrong classifier."""

import logging

import pytest
from conftest import LABEL_WORDS, TEMPLATE, tiny_llama, tiny_roberta
from peft import get_peft_model
from transformers import LlamaConfig, LlamaModel

from peft_dect import DecTConfig


def test_template_without_mask_fails_at_config_time():
    with pytest.raises(ValueError, match="exactly one \\{mask\\}"):
        DecTConfig(template="{text_a} It was great.", label_words=LABEL_WORDS)


def test_causal_lm_rejects_text_fields_after_the_mask(bpe_tokenizer):
    cfg = DecTConfig(template="{text_a}? {mask}, {text_b}", label_words=LABEL_WORDS)
    with pytest.raises(ValueError, match="would never see it"):
        get_peft_model(tiny_llama(bpe_tokenizer), cfg)


def test_causal_lm_drops_literal_text_after_the_mask(bpe_tokenizer):
    model = get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    bb = model.base_model.backbone(bpe_tokenizer)
    assert bb.render("a film") == "a film In summary, it was"


def test_label_not_in_label_words(bpe_tokenizer):
    model = get_peft_model(tiny_roberta(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    with pytest.raises(ValueError, match="label 'neutral', which label_words does not name"):
        model.fit({"text": ["a", "b", "c"], "label": ["negative", "positive", "neutral"]}, tokenizer=bpe_tokenizer)
    with pytest.raises(ValueError, match="label 7"):
        model.fit({"text": ["a", "b"], "label": [0, 7]}, tokenizer=bpe_tokenizer)


def test_float_labels_are_refused(bpe_tokenizer):
    model = get_peft_model(tiny_roberta(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    with pytest.raises(ValueError, match="float label 3.4"):
        model.fit({"text": ["a", "b"], "label": [3.4, 1.0]}, tokenizer=bpe_tokenizer)


def test_label_word_split_into_tokens_warns(bpe_tokenizer, caplog):
    words = {"negative": ["bad"], "positive": ["superbbrilliantness"]}
    cfg = DecTConfig(template=TEMPLATE, label_words=words, multi_token="first")  # the default scores whole words
    model = get_peft_model(tiny_roberta(bpe_tokenizer), cfg)
    with caplog.at_level(logging.WARNING):
        model.predict(["a film"], tokenizer=bpe_tokenizer)
    assert "is scored by its first token" in caplog.text


def test_label_word_outside_the_vocabulary(wordpiece_tokenizer):
    from conftest import tiny_bert

    words = {"negative": ["bad"], "positive": ["日本"]}
    model = get_peft_model(tiny_bert(wordpiece_tokenizer), DecTConfig(template=TEMPLATE, label_words=words))
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        model.predict(["a film"], tokenizer=wordpiece_tokenizer)


def test_fit_on_empty_dataset(bpe_tokenizer):
    model = get_peft_model(tiny_roberta(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    with pytest.raises(ValueError, match="empty"):
        model.fit({"text": [], "label": []}, tokenizer=bpe_tokenizer)


def test_base_model_without_lm_head(bpe_tokenizer):
    body = LlamaModel(
        LlamaConfig(
            vocab_size=len(bpe_tokenizer),
            hidden_size=8,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=1,
            num_key_value_heads=1,
        )
    )
    with pytest.raises(TypeError, match="no language-modelling head"):
        get_peft_model(body, DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))


def test_predict_without_tokenizer(bpe_tokenizer):
    model = get_peft_model(tiny_roberta(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    with pytest.raises(ValueError, match="pass tokenizer="):
        model.predict(["a film"])


def test_missing_text_column(bpe_tokenizer):
    model = get_peft_model(tiny_roberta(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    with pytest.raises(ValueError, match="No text column found"):
        model.fit({"review": ["a"], "label": [0]}, tokenizer=bpe_tokenizer)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "fast"}, "mode must be one of"),
        ({"label_word_aggregation": "sum"}, "label_word_aggregation"),
        ({"lam": -1.0}, "lam must be >= 0"),
        ({"decoder_dim": 0}, "decoder_dim"),
        ({"label_words": {"a": ["x"]}}, "at least two classes"),
    ],
)
def test_bad_config_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecTConfig(**{"template": TEMPLATE, "label_words": LABEL_WORDS, **kwargs})


def test_texts_and_labels_of_different_lengths(bpe_tokenizer):
    model = get_peft_model(tiny_roberta(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    with pytest.raises(ValueError, match="3 texts but 2 labels"):
        model.fit({"text": ["a", "b", "c"], "label": [0, 1]}, tokenizer=bpe_tokenizer)
    with pytest.raises(TypeError, match="dict of columns with a label column"):
        model.evaluate(["a film"], tokenizer=bpe_tokenizer)


def test_words_of_one_class_sharing_a_token_count_once(bpe_tokenizer, caplog):
    words = {"negative": ["bad"], "positive": ["greatness", "greatly"]}
    cfg = DecTConfig(template=TEMPLATE, label_words=words, multi_token="first")  # the default scores whole words
    model = get_peft_model(tiny_roberta(bpe_tokenizer), cfg)
    with caplog.at_level(logging.WARNING):
        model.predict(["a film"], tokenizer=bpe_tokenizer)
    assert "share the first token" in caplog.text
