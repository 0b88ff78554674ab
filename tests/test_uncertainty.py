"""Calibrated probabilities, out-of-scope rejection, conformal prediction sets and `suggest`."""

import math

import numpy as np
import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE, sentiment_data, tiny_llama
from peft import PeftModel, get_peft_model

from peft_dect import DecTConfig
from peft_dect.uncertainty import (
    Calibration,
    conformal_quantile,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    probabilities,
    suggest,
    unknown_scores,
)


def overconfident(n=3000, classes=4, scale=3.0, seed=0):
    """Logits whose calibrated version is softmax(z): the classifier's are z * scale (over-confident)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=gen) * 1.5
    labels = torch.multinomial(torch.softmax(z, -1), 1, generator=gen)[:, 0]
    return z * scale, labels


def test_temperature_undoes_a_known_overconfidence_and_lowers_ece():
    logits, labels = overconfident()
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(probabilities(logits), labels)
    after = expected_calibration_error(probabilities(logits, t), labels)
    assert after < before / 3
    assert torch.equal(probabilities(logits, t).argmax(-1), logits.argmax(-1))


def test_temperature_stays_finite_on_separable_held_out_rows():
    logits = torch.tensor([[5.0, -5.0], [-4.0, 4.0], [6.0, 0.0]])
    t = fit_temperature(logits, torch.tensor([0, 1, 0]))
    assert math.isfinite(t) and probabilities(logits, t).max() < 0.99


def test_split_conformal_sets_cover_at_the_stated_rate():
    logits, labels = overconfident(n=4000, classes=5, scale=1.0, seed=1)
    held, new = slice(0, 2000), slice(2000, None)
    cal = fit_calibration(logits[held], labels[held])
    for alpha in (0.1, 0.2):
        threshold = cal.set_threshold(alpha)
        p = probabilities(logits[new], cal.temperature)
        covered = (1 - p.gather(1, labels[new, None])[:, 0] <= threshold).float().mean()
        assert abs(float(covered) - (1 - alpha)) < 0.03
    assert conformal_quantile([0.1, 0.2], 0.9) == math.inf  # too few held-out rows: every class
    assert conformal_quantile([0.3, 0.1, 0.2], 0.5) == 0.2


def test_eval_rows_alone_give_the_conformal_scores_when_there_are_any():
    """Rows scored by the predicting decoder (the eval split) make the sets split-conformal; T uses every row."""
    logits, labels = overconfident(n=100)
    split = torch.arange(100) >= 60
    cal = fit_calibration(logits, labels, split_rows=split)
    assert len(cal.conformal_scores) == len(cal.unknown_scores) == 40 and cal.heldout == 100
    assert cal.temperature == fit_calibration(logits, labels).temperature
    assert len(fit_calibration(logits, labels, split_rows=torch.zeros(100, dtype=torch.bool)).conformal_scores) == 100


def test_unknown_scores_rank_far_inputs_higher():
    near = torch.tensor([[4.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    far = torch.tensor([[0.4, 0.3, 0.35], [-2.0, -2.1, -1.9]])
    for kind in ("max_logit", "energy", "msp", "margin", "entropy"):
        s = unknown_scores(torch.cat([near, far]), 1.0, kind)
        assert s[:2].max() < s[2:].min(), kind
    with pytest.raises(ValueError, match="unknown_score must be one of"):
        unknown_scores(near, 1.0, "mahalanobis")


def test_calibration_round_trips_and_refuses_edited_dicts():
    logits, labels = overconfident(n=200)
    cal = fit_calibration(logits, labels, training_texts=["abc"])
    assert Calibration.from_dict(cal.to_dict()) == cal
    with pytest.raises(ValueError, match="temperature"):
        Calibration.from_dict(cal.to_dict() | {"temperature": -1.0})
    with pytest.raises(ValueError, match="finite numbers"):
        Calibration.from_dict(cal.to_dict() | {"conformal_scores": [0.1, float("nan")]})
    with pytest.raises(ValueError, match="unknown fields"):
        Calibration.from_dict(cal.to_dict() | {"extra": 1})


def test_suggest_strategies_pick_uncertain_and_spread_rows():
    probs = torch.tensor([[0.99, 0.01], [0.52, 0.48], [0.7, 0.3], [0.5, 0.5], [0.51, 0.49]])
    assert suggest(probs, 2, "margin") == [3, 4]
    assert suggest(probs, 1, "entropy") == [3]
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [1.0, 0.0], [1.0, 0.01]])
    picked = suggest(probs, 2, "diverse", emb)
    assert picked[0] == 3 and picked[1] == 1  # the most uncertain, then the one farthest from it
    with pytest.raises(ValueError, match="strategy must be one of"):
        suggest(probs, 1, "random")


# ---------------------------------------------------------------- DecT


@pytest.fixture(scope="module")
def fitted(bpe_tokenizer):
    tok = bpe_tokenizer
    model = get_peft_model(
        tiny_llama(tok), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, reject_label="unknown")
    )
    report = model.fit(sentiment_data(8, seed=3), tokenizer=tok, show_progress=False)
    return model, tok, report


TEXTS = sentiment_data(10, seed=5)["sentence"]


def test_fit_reports_and_uses_a_held_out_temperature(fitted):
    model, tok, report = fitted
    t = report["temperature"]
    assert t > 0 and t != 1.0 and {"heldout_ece_before", "heldout_ece_after"} <= set(report)
    assert report["heldout_ece_after"] <= report["heldout_ece_before"] + 1e-9
    logits = model.base_model.predict_logits(TEXTS, tokenizer=tok)
    proba = model.predict_proba(TEXTS, tokenizer=tok)
    np.testing.assert_allclose(proba, torch.softmax(logits / t, -1).numpy(), atol=1e-6)
    assert (proba.argmax(-1) == logits.argmax(-1).numpy()).all()  # the temperature does not move the argmax


def test_calibrate_probabilities_false_keeps_the_softmax(bpe_tokenizer):
    cfg = DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, calibrate_probabilities=False)
    model = get_peft_model(tiny_llama(bpe_tokenizer), cfg)
    report = model.fit(sentiment_data(8, seed=3), tokenizer=bpe_tokenizer, show_progress=False)
    assert report["temperature"] == 1.0
    logits = model.base_model.predict_logits(TEXTS, tokenizer=bpe_tokenizer)
    np.testing.assert_allclose(model.predict_proba(TEXTS), torch.softmax(logits, -1).numpy(), atol=1e-6)


def test_rejection_by_held_out_rate_or_fixed_threshold(fitted):
    model, tok, _ = fitted
    scores = model.unknown_score(TEXTS, tokenizer=tok)
    assert scores.shape == (len(TEXTS),)
    plain = model.predict(TEXTS, tokenizer=tok)
    assert model.predict(TEXTS, tokenizer=tok, reject=float(scores.max()) + 1) == plain
    everything = model.predict(TEXTS, tokenizer=tok, reject=float(scores.min()) - 1)
    assert everything == ["unknown"] * len(TEXTS)
    rejected = model.predict(TEXTS, tokenizer=tok, reject=True)
    threshold = model.base_model.rejection_threshold(True)
    assert rejected == ["unknown" if s > threshold else p for s, p in zip(scores, plain)]
    cal = model.base_model.calibration
    held = np.asarray(cal.unknown_scores)
    assert (held > threshold).mean() <= 0.05 + 1 / len(held)  # at most reject_rate of held-out in-scope rows
    with pytest.raises(ValueError, match="reject_rate must be a number strictly between 0 and 1"):
        model.predict(TEXTS, tokenizer=tok, reject=True, reject_rate=1.5)
    with pytest.raises(TypeError, match="reject must be True, False or a finite number"):
        model.predict(TEXTS, tokenizer=tok, reject="yes")


def test_prediction_sets_follow_alpha(fitted):
    model, tok, _ = fitted
    tight = model.predict_set(TEXTS, tokenizer=tok, alpha=0.4)
    loose = model.predict_set(TEXTS, tokenizer=tok, alpha=0.05)
    plain = model.predict(TEXTS, tokenizer=tok)
    assert all(not s or s[0] == p for s, p in zip(tight, plain))  # most probable first
    assert all(set(a) <= set(b) for a, b in zip(tight, loose))
    assert all(set(s) <= set(LABEL_WORDS) for s in loose)
    for alpha in (0.0, 1.0, -0.1, "0.1"):
        with pytest.raises(ValueError, match="alpha must be a number strictly between 0 and 1"):
            model.predict_set(TEXTS, tokenizer=tok, alpha=alpha)


def test_calibration_saves_loads_and_is_shown_on_the_card(fitted, tmp_path):
    model, tok, _ = fitted
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(tok), tmp_path)
    loaded.base_model.set_tokenizer(tok)
    assert loaded.base_model.calibration == model.base_model.calibration
    assert loaded.predict_set(TEXTS, alpha=0.2) == model.predict_set(TEXTS, tokenizer=tok, alpha=0.2)
    assert loaded.predict(TEXTS, reject=True) == model.predict(TEXTS, tokenizer=tok, reject=True)
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), model.predict_proba(TEXTS, tokenizer=tok), atol=1e-5)
    card = (tmp_path / "README.md").read_text()
    assert "temperature" in card and "prediction sets" in card


def test_no_held_out_data_is_a_clear_error(bpe_tokenizer):
    cfg = DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, mode="faithful")
    model = get_peft_model(tiny_llama(bpe_tokenizer), cfg)
    model.fit(sentiment_data(8, seed=3), tokenizer=bpe_tokenizer, show_progress=False)
    for call in (lambda: model.predict(TEXTS, reject=True), lambda: model.predict_set(TEXTS)):
        with pytest.raises(ValueError, match="fit in auto mode with eval_dataset or at least 2 examples per class"):
            call()
    model.calibrate(sentiment_data(6, seed=7))  # a labelled held-out set gives the figures after all
    assert len(model.predict_set(TEXTS, alpha=0.3)) == len(TEXTS)


def test_reject_label_may_not_be_a_class():
    with pytest.raises(ValueError, match="reject_label 'positive' is one of the classes"):
        DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, reject_label="positive")
    with pytest.raises(ValueError, match="reject_rate must be a number strictly between 0 and 1"):
        DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, reject_rate=0)


def test_out_of_scope_examples_are_not_trained_on_and_set_the_threshold(bpe_tokenizer):
    cfg = DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, out_of_scope_label="oos")
    assert cfg.reject_label == "oos"
    model = get_peft_model(tiny_llama(bpe_tokenizer), cfg)
    train = sentiment_data(8, seed=3)
    oos = ["the acting", "a plot , and it", "this story was", "film film film"]
    data = {"sentence": train["sentence"] + oos, "label": list(train["label"]) + ["oos"] * len(oos)}
    report = model.fit(data, tokenizer=bpe_tokenizer, show_progress=False)
    assert report["train_examples"] == len(train["label"]) and report["out_of_scope_examples"] == len(oos)
    cal = model.base_model.calibration
    threshold = cal.reject_threshold(0.05)
    inside, outside = np.asarray(cal.unknown_scores), np.asarray(cal.oos_unknown_scores)
    best = max(((inside <= t).mean() + (outside > t).mean()) / 2 for t in np.concatenate([inside, outside, [np.inf]]))
    assert ((inside <= threshold).mean() + (outside > threshold).mean()) / 2 == pytest.approx(best)
    assert set(model.predict(oos, reject=True)) <= {"oos", "negative", "positive"}
    report = model.fit(train, tokenizer=bpe_tokenizer, show_progress=False)  # no out-of-scope row: the plain rule
    assert report["out_of_scope_examples"] == 0 and model.base_model.calibration.oos_unknown_scores == []


def test_suggest_skips_training_texts_and_costs_one_pass_per_new_text(fitted):
    model, tok, _ = fitted
    train = sentiment_data(8, seed=3)["sentence"]
    pool = list(TEXTS) + list(train[:4])
    bb = model.base_model.backbone(tok)
    passes = bb.passes
    picked = model.suggest(pool, 3, tokenizer=tok, strategy="diverse")
    assert len(set(picked)) == 3 and all(i < len(TEXTS) for i in picked)  # training texts are never suggested
    assert bb.passes - passes <= len(set(TEXTS))  # the pool's features, once
    before = bb.passes
    model.suggest(pool, 2, tokenizer=tok, strategy="entropy")
    assert bb.passes == before  # seen texts come from the feature cache
    with pytest.raises(ValueError, match="k must be an integer from 1 to"):
        model.suggest(pool, len(pool), tokenizer=tok)
    with pytest.raises(ValueError, match="empty"):
        model.suggest([], 1, tokenizer=tok)
    with pytest.raises(ValueError, match="strategy must be one of"):
        model.suggest(pool, 1, tokenizer=tok, strategy="random")


def test_the_trainer_path_and_a_reset_forget_the_calibration(bpe_tokenizer):
    model = get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    model.fit(sentiment_data(8, seed=3), tokenizer=bpe_tokenizer, show_progress=False)
    assert model.base_model.calibration is not None
    model.prepare_dataset(sentiment_data(8, seed=3), tokenizer=bpe_tokenizer)
    assert model.base_model.calibration is None and model.base_model.temperature == 1.0
    model.fit(sentiment_data(8, seed=3), tokenizer=bpe_tokenizer, show_progress=False)
    model.base_model.reset_adapter()
    assert model.base_model.calibration is None


def test_label_word_classifiers_get_the_same_api_through_calibrate(bpe_tokenizer):
    from peft_dect import LabelWordClassifier

    clf = LabelWordClassifier(tiny_llama(bpe_tokenizer), bpe_tokenizer, TEMPLATE, LABEL_WORDS, show_progress=False)
    with pytest.raises(ValueError, match="call calibrate"):
        clf.predict_set(TEXTS)
    figures = clf.calibrate(sentiment_data(12, seed=8))
    assert figures["ece_after"] <= figures["ece_before"] + 1e-9
    logits = clf.predict_logits(TEXTS)
    np.testing.assert_allclose(
        clf.predict_proba(TEXTS), torch.softmax(logits / clf.temperature, -1).numpy(), atol=1e-6
    )
    assert len(clf.predict_set(TEXTS, alpha=0.2)) == len(TEXTS)
    assert len(clf.predict(TEXTS, reject=True)) == len(TEXTS)
    assert len(clf.suggest(TEXTS, 4, strategy="diverse")) == 4


def test_out_of_scope_rows_stay_out_of_the_demonstration_pool(bpe_tokenizer):
    cfg = DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, out_of_scope_label="oos", demonstrations=1)
    model = get_peft_model(tiny_llama(bpe_tokenizer), cfg)
    train = sentiment_data(4, seed=3)
    data = {"sentence": train["sentence"] + ["the acting", "film film"], "label": list(train["label"]) + ["oos"] * 2}
    report = model.fit(data, tokenizer=bpe_tokenizer, show_progress=False)
    assert report["out_of_scope_examples"] == 2
    assert len(model.predict(TEXTS[:3], reject=True)) == 3
