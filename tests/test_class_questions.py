"""Multi-label DecT with one yes/no question per class (`peft_dect.dect.questions.ClassQuestions`)."""

import numpy as np
import pytest
import torch
from conftest import tiny_llama
from peft import get_peft_model
from test_multilabel import CLASSES, multi_label_data

from peft_dect import DecTConfig
from peft_dect.dect.questions import QUESTIONS_FILE, ClassQuestions


QUESTIONS = {
    "positive": "is it praise?",
    "negative": "is it a complaint?",
    "plot": "is it about the story?",
    "acting": "is it about the acting?",
}
TEMPLATE = "{text_a} Question: {text_b} Answer: {mask}"
YES_NO = {"no": ["no"], "yes": ["yes"]}


def yes_no_config(**kwargs) -> DecTConfig:
    return DecTConfig(template=TEMPLATE, label_words=YES_NO, budget=1, **kwargs)


@pytest.fixture(scope="module")
def asked(bpe_tokenizer):
    model = get_peft_model(tiny_llama(bpe_tokenizer), yes_no_config())
    questions = ClassQuestions(model, QUESTIONS)
    report = questions.fit(multi_label_data(24, seed=1), bpe_tokenizer, show_progress=False)
    return questions, report


def test_fit_asks_every_class_of_every_text_once(asked):
    questions, report = asked
    assert report["pairs"] == 24 * len(QUESTIONS)
    # every pair is one pass (the first fold sees all texts: its training and held-out rows), plus the content-free
    # prompts of the two-class adapter; the later folds and the final fit read the feature cache
    assert 24 * len(QUESTIONS) <= report["model_passes"] <= 24 * len(QUESTIONS) + 4
    assert report["predict_passes_per_input"] == len(QUESTIONS)
    assert len(questions.thresholds) == len(QUESTIONS)
    assert all(0.0 <= t <= 1.0 for t in questions.thresholds) and questions.temperature > 0


def test_log_odds_are_the_adapters_yes_against_no_scores(asked, bpe_tokenizer):
    questions, _ = asked
    texts = multi_label_data(3, seed=5)["text"]
    pairs = [(t, q) for t in texts for q in QUESTIONS.values()]
    two_class = questions.peft_model.base_model.predict_logits(pairs, bpe_tokenizer)
    expected = (two_class[:, 1] - two_class[:, 0]).view(3, len(QUESTIONS))
    torch.testing.assert_close(questions.predict_logits(texts, bpe_tokenizer), expected)


def test_predict_gives_class_lists_at_the_thresholds(asked, bpe_tokenizer):
    questions, _ = asked
    texts = multi_label_data(5, seed=6)["text"]
    proba = questions.predict_proba(texts, bpe_tokenizer)
    assert proba.shape == (5, len(CLASSES)) and ((proba >= 0) & (proba <= 1)).all()
    predicted = questions.predict(texts, bpe_tokenizer)
    expected = [[c for c, p, t in zip(QUESTIONS, row, questions.thresholds) if p >= t] for row in proba]
    assert predicted == expected
    assert questions.predict(texts, bpe_tokenizer, threshold=0.0) == [list(QUESTIONS)] * 5


def test_evaluate_reports_the_multi_label_metrics(asked, bpe_tokenizer):
    questions, _ = asked
    metrics = questions.evaluate(multi_label_data(10, seed=7), bpe_tokenizer)
    assert set(metrics) == {"micro_f1", "macro_f1", "exact_match", "hamming_loss"}


def test_save_and_load_give_the_same_probabilities(asked, bpe_tokenizer, tmp_path):
    questions, _ = asked
    questions.save_pretrained(tmp_path)
    assert (tmp_path / QUESTIONS_FILE).is_file() and (tmp_path / "adapter_model.safetensors").is_file()
    loaded = ClassQuestions.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)
    texts = multi_label_data(4, seed=8)["text"]
    np.testing.assert_allclose(
        loaded.predict_proba(texts, bpe_tokenizer), questions.predict_proba(texts, bpe_tokenizer), atol=1e-6
    )
    assert loaded.thresholds == questions.thresholds and loaded.classes == list(QUESTIONS)


@pytest.mark.parametrize(
    "config, questions, message",
    [
        (DecTConfig(template=TEMPLATE, label_words={"a": ["a"], "b": ["b"], "c": ["c"]}, budget=1), QUESTIONS, "two"),
        (DecTConfig(template="{text_a} Answer: {mask}", label_words=YES_NO, budget=1), QUESTIONS, "text_b"),
        (DecTConfig(template=TEMPLATE, label_words=YES_NO), QUESTIONS, "budget=1"),
        (yes_no_config(), {"plot": ""}, "non-empty question"),
        (yes_no_config(), {}, "non-empty dict"),
    ],
)
def test_bad_setups_are_refused(bpe_tokenizer, config, questions, message):
    model = get_peft_model(tiny_llama(bpe_tokenizer), config)
    with pytest.raises((ValueError, TypeError), match=message):
        ClassQuestions(model, questions)


def test_too_few_texts_for_the_folds_is_refused(bpe_tokenizer):
    questions = ClassQuestions(get_peft_model(tiny_llama(bpe_tokenizer), yes_no_config()), QUESTIONS)
    with pytest.raises(ValueError, match="at least 8 training texts"):
        questions.fit(multi_label_data(5, seed=1), bpe_tokenizer, show_progress=False)
