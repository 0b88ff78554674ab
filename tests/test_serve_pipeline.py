"""The few-shot-classification pipeline: the text-classification format, over `predict_proba` of the adapter."""

import numpy as np
import pytest
from conftest import LABEL_WORDS, TEMPLATE, sentiment_data
from peft import get_peft_model
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.pt_utils import KeyDataset

import peft_dect
from peft_dect import DecTConfig, FewShotClassificationPipeline


TEXTS = sentiment_data(4, 7)["sentence"]


def fitted(model, tokenizer, kind):
    template = TEMPLATE if kind == "causal" else "{text_a} In summary, it was {mask} ."
    peft_model = get_peft_model(model, DecTConfig(template=template, label_words=LABEL_WORDS))
    peft_model.fit(sentiment_data(16, 1), tokenizer=tokenizer, show_progress=False)
    return peft_model


def as_matrix(results, classes):
    return np.array([[next(r["score"] for r in rows if r["label"] == c) for c in classes] for rows in results])


def test_importing_peft_dect_registers_the_task():
    assert "few-shot-classification" in PIPELINE_REGISTRY.get_supported_tasks()
    assert peft_dect.FewShotClassificationPipeline is FewShotClassificationPipeline


def test_scores_equal_predict_proba_for_every_lm_kind(lm):
    model, tokenizer, kind = lm
    peft_model = fitted(model, tokenizer, kind)
    expected = peft_model.predict_proba(TEXTS, tokenizer=tokenizer)
    pipe = pipeline("few-shot-classification", model=peft_model, tokenizer=tokenizer)
    assert isinstance(pipe, FewShotClassificationPipeline)
    classes = peft_model.active_peft_config.classes
    every = pipe(TEXTS, top_k=None, batch_size=3)
    np.testing.assert_allclose(as_matrix(every, classes), expected, atol=1e-6)
    for rows in every:  # most probable first
        assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)


@pytest.fixture(scope="module")
def llama_pipe(bpe_tokenizer):
    from conftest import tiny_llama

    peft_model = fitted(tiny_llama(bpe_tokenizer), bpe_tokenizer, "causal")
    return pipeline("few-shot-classification", model=peft_model, tokenizer=bpe_tokenizer), peft_model


def test_output_forms_follow_the_text_classification_pipeline(llama_pipe, bpe_tokenizer):
    pipe, peft_model = llama_pipe
    probs = peft_model.predict_proba(TEXTS, tokenizer=bpe_tokenizer)
    classes = peft_model.active_peft_config.classes
    best = [
        {"label": classes[i], "score": pytest.approx(float(p[i]), abs=1e-6)} for p, i in zip(probs, probs.argmax(1))
    ]
    assert pipe(TEXTS[0]) == [best[0]]  # a text: a list of its best class
    assert pipe(TEXTS) == best  # a list: one dict per text
    assert pipe(TEXTS[0], top_k=1) == [best[0]]
    assert pipe(TEXTS, top_k=1) == [[b] for b in best]
    assert [len(r) for r in pipe(TEXTS, top_k=2)] == [2] * len(TEXTS)


def test_generators_and_key_datasets_stream_in_batches(llama_pipe, bpe_tokenizer, monkeypatch):
    import datasets

    pipe, peft_model = llama_pipe
    expected = pipe(TEXTS)
    calls = []
    original = pipe.probabilities
    monkeypatch.setattr(pipe, "probabilities", lambda texts: calls.append(len(texts)) or original(texts))
    streamed = pipe((t for t in TEXTS), batch_size=3)
    assert not isinstance(streamed, list)
    assert [r["label"] for r in streamed] == [r["label"] for r in expected]
    assert calls == [3, 3, 2]
    dataset = datasets.Dataset.from_dict({"sentence": TEXTS})
    out = list(pipe(KeyDataset(dataset, "sentence"), batch_size=4))
    assert [r["label"] for r in out] == [r["label"] for r in expected]
    np.testing.assert_allclose([r["score"] for r in out], [r["score"] for r in expected], atol=1e-6)


def test_pair_inputs_use_the_pair_template(bpe_tokenizer):
    from conftest import tiny_llama

    data = sentiment_data(16, 1)
    pairs = {"sentence1": data["sentence"], "sentence2": data["sentence"][::-1], "label": data["label"]}
    config = DecTConfig(
        template="{text_a} ? {text_b} In summary, it was {mask}.",
        label_words=LABEL_WORDS,
        text_column="sentence1",
        text_pair_column="sentence2",
    )
    peft_model = get_peft_model(tiny_llama(bpe_tokenizer), config)
    peft_model.fit(pairs, tokenizer=bpe_tokenizer, show_progress=False)
    pipe = pipeline("few-shot-classification", model=peft_model, tokenizer=bpe_tokenizer)
    inputs = [{"text": a, "text_pair": b} for a, b in zip(TEXTS, TEXTS[::-1])]
    expected = peft_model.predict_proba(list(zip(TEXTS, TEXTS[::-1])), tokenizer=bpe_tokenizer)
    got = as_matrix(pipe(inputs, top_k=None), peft_model.active_peft_config.classes)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_bad_inputs_and_arguments_name_the_fix(llama_pipe):
    pipe, _ = llama_pipe
    with pytest.raises(TypeError, match="takes a text"):
        pipe([3])
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        pipe(TEXTS[0], top_k=0)
    with pytest.raises(ValueError, match="calibrated probabilities"):
        pipe(TEXTS[0], function_to_apply="sigmoid")
    assert pipe(TEXTS[0], function_to_apply="softmax") == pipe(TEXTS[0])
    with pytest.raises(TypeError, match="unknown arguments"):
        pipe(TEXTS[0], truncation=True)
    with pytest.raises(TypeError, match="needs a peft-dect classifier"):
        FewShotClassificationPipeline(model=object())


def test_a_label_word_classifier_serves_with_its_own_tokenizer(bpe_tokenizer):
    from conftest import tiny_llama

    from peft_dect import LabelWordClassifier

    classifier = LabelWordClassifier(
        tiny_llama(bpe_tokenizer), bpe_tokenizer, TEMPLATE, LABEL_WORDS, show_progress=False
    )
    pipe = pipeline("few-shot-classification", model=classifier, tokenizer=bpe_tokenizer)
    got = as_matrix(pipe(TEXTS, top_k=None), classifier.classes)
    np.testing.assert_allclose(got, classifier.predict_proba(TEXTS), atol=1e-6)
