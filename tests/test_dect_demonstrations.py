"""DecT with LM-BFF demonstrations, and in-context learning (zero-shot scoring of prompts with demonstrations)."""

import json

import numpy as np
import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE, tiny_llama, tiny_roberta
from peft import PeftConfig, PeftModel, get_peft_model

import peft_dect  # noqa: F401  (registers DecT with peft)
from peft_dect import DecTConfig


@pytest.fixture(params=["roberta", "llama"])
def tiny(request, bpe_tokenizer):
    maker = tiny_roberta if request.param == "roberta" else tiny_llama
    return maker, bpe_tokenizer


def test_config_validates_demonstration_settings():
    with pytest.raises(ValueError, match="demonstrations"):
        DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, demonstrations=-1)
    with pytest.raises(ValueError, match="demo_filter"):
        DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, demonstrations=2, demo_filter="close")
    with pytest.raises(ValueError, match="demo_per_class"):
        DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, demonstrations=2, demo_per_class=0)
    with pytest.raises(TypeError, match="self_if_alone must be True or False"):
        DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, demonstrations={"self_if_alone": "yes"})


def test_fit_with_demonstrations_saves_and_reloads(tiny, sentiment_train, sentiment_test, tmp_path):
    maker, tok = tiny
    cfg = DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, demonstrations=2, mode="faithful")
    peft_model = get_peft_model(maker(tok), cfg)
    report = peft_model.fit(sentiment_train, tokenizer=tok, show_progress=False)
    n = len(sentiment_train["sentence"])
    assert report["model_passes"] == 2 * (n + 1)  # two demonstration sets for each input and the content-free one
    bb = peft_model.base_model.backbone()
    assert bb.demonstrations is not None and bb.demonstrations.num_sets == 2
    prompt = bb.render(sentiment_test["sentence"][0])
    assert prompt.count("In summary, it was") == 3  # the query and one demonstration per class
    before = peft_model.predict_proba(sentiment_test["sentence"][:9])
    peft_model.save_pretrained(tmp_path)
    saved = PeftConfig.from_pretrained(tmp_path)
    pool = json.loads((tmp_path / "demonstration_pool.json").read_text())  # the pool sits beside the config
    assert saved.demonstrations.num_sets == 2 and pool["text_a"] == sentiment_train["sentence"]
    loaded = PeftModel.from_pretrained(maker(tok), tmp_path)
    np.testing.assert_allclose(loaded.predict_proba(sentiment_test["sentence"][:9], tokenizer=tok), before, atol=1e-5)


def test_demonstrations_change_the_features(bpe_tokenizer, sentiment_train, sentiment_test):
    texts = sentiment_test["sentence"][:5]
    plain = get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    demo = get_peft_model(
        tiny_llama(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, demonstrations=1)
    )
    demo.set_demonstrations(sentiment_train, tokenizer=bpe_tokenizer)
    a = plain.zero_shot_logits(texts, tokenizer=bpe_tokenizer, calibrate=False)
    b = demo.zero_shot_logits(texts, calibrate=False)
    assert a.shape == b.shape and not torch.allclose(a, b)


def test_in_context_learning_needs_a_pool(bpe_tokenizer):
    cfg = DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, demonstrations=1)
    model = get_peft_model(tiny_llama(bpe_tokenizer), cfg)
    with pytest.raises(ValueError, match="demonstration pool"):
        model.zero_shot_logits(["a film"], tokenizer=bpe_tokenizer)
    with pytest.raises(ValueError, match="every class"):
        model.set_demonstrations({"sentence": ["a film", "a plot"], "label": [0, 0]})


def test_similar_filter_uses_the_injected_encoder(bpe_tokenizer, sentiment_train):
    calls = []

    def encoder(texts):
        calls.append(len(texts))
        return np.stack([[len(t), t.count("a") + 1.0] for t in texts])

    cfg = DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, demonstrations=1, demo_filter="similar")
    model = get_peft_model(tiny_llama(bpe_tokenizer), cfg)
    model.base_model.demo_encoder = encoder
    model.fit(sentiment_train, tokenizer=bpe_tokenizer, show_progress=False)
    assert calls and model.predict(["the film was great"])[0] in LABEL_WORDS
