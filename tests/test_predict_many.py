"""Several task adapters on one frozen model: one model pass per template, whatever the label words."""

import numpy as np
import pytest
from conftest import LABEL_WORDS, TEMPLATE, tiny_bert, tiny_llama
from peft import get_peft_model

from peft_dect import DecTConfig


OTHER_WORDS = {"negative": ["awful"], "positive": ["fun"]}


def passes(peft_model) -> int:
    return sum(bb.passes for bb in peft_model.base_model.sources.backbones.values())


@pytest.fixture(params=["bert", "llama"])
def three_adapters(request, bpe_tokenizer, wordpiece_tokenizer, sentiment_train):
    """Adapters 'default' and 'words' (same template, other label words) and 'prompt' (another template)."""
    model, tok = (tiny_bert, wordpiece_tokenizer) if request.param == "bert" else (tiny_llama, bpe_tokenizer)
    model = model(tok)
    options = dict(seed=0, mode="faithful", epochs=5)
    peft_model = get_peft_model(model, DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, **options))
    peft_model.add_adapter("words", DecTConfig(template=TEMPLATE, label_words=OTHER_WORDS, **options))
    other_template = TEMPLATE.replace("{mask}", "really {mask}")
    peft_model.add_adapter("prompt", DecTConfig(template=other_template, label_words=LABEL_WORDS, **options))
    for name in ("default", "words", "prompt"):
        peft_model.set_adapter(name)
        before = passes(peft_model)
        peft_model.fit(sentiment_train, tok)
        if name == "words":  # the first adapter's pass over the same texts serves its features
            assert passes(peft_model) == before
    peft_model.set_adapter("default")
    return peft_model, tok


def test_predict_many_runs_one_pass_per_template(three_adapters, sentiment_test):
    peft_model, tok = three_adapters
    texts = sentiment_test["sentence"]
    before = passes(peft_model)
    many = peft_model.predict_many(texts, tokenizer=tok, proba=True)
    assert passes(peft_model) - before == 2 * len(texts)  # two templates, three adapters
    assert list(many) == ["default", "words", "prompt"] and peft_model.active_adapter == "default"
    for name, proba in many.items():
        peft_model.set_adapter(name)
        np.testing.assert_allclose(proba, peft_model.predict_proba(texts, tok), atol=1e-6)
    assert passes(peft_model) - before == 2 * len(texts)  # answered from the cache
    peft_model.set_adapter("default")
    labels = peft_model.predict_many(texts, ["words"], tok)
    assert set(labels) == {"words"} and len(labels["words"]) == len(texts)


def test_predict_many_refuses_unknown_adapters(three_adapters):
    peft_model, tok = three_adapters
    for bad in (["default", "nope"], "default", []):
        with pytest.raises(ValueError, match="adapter names"):
            peft_model.predict_many(["a good film"], bad, tok)
