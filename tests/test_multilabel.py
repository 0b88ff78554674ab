"""Multi-label DecT: label sets per text, independent per-class probabilities, thresholds, metrics, saving."""

import logging
import random

import datasets
import numpy as np
import pytest
import torch
from conftest import NEGATIVE, POSITIVE, tiny_bert, tiny_llama
from peft import PeftModel, get_peft_model
from sklearn.metrics import f1_score, hamming_loss
from test_trainer import full_batch_trainer

from peft_dect import DecTConfig
from peft_dect.data import read_multi_labels
from peft_dect.dect import decoder, multilabel
from peft_dect.dect.fit import fusion_grid
from peft_dect.dect.multilabel import best_cut, fit_binary_temperature
from peft_dect.features import Features
from peft_dect.metrics import multi_label_value


CLASSES = ("positive", "negative", "plot", "acting")  # not in sorted order: the saved class order must hold
LABEL_WORDS = {"positive": ["great"], "negative": ["bad"], "plot": ["plot"], "acting": ["acting"]}
TEMPLATE = "{text_a} In summary, it was {mask}."
CAUSAL_TEMPLATE = "{text_a} In summary, it was {mask}"


def multi_label_data(n: int, seed: int) -> dict[str, list]:
    """Texts about 0 to 4 of the classes at once: each class present adds its own words."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        present = [c for c in CLASSES if rng.random() < 0.4]
        words = rng.choices(["the", "a", "this", "was", "is", "and", "it", "very"], k=6)
        words += rng.sample(POSITIVE, 2) if "positive" in present else []
        words += rng.sample(NEGATIVE, 2) if "negative" in present else []
        words += ["plot", "story"] if "plot" in present else []
        words += ["acting"] if "acting" in present else []
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(present)
    return {"text": texts, "labels": labels}


@pytest.fixture(scope="module")
def ml_train():
    return multi_label_data(64, seed=1)


@pytest.fixture(scope="module")
def ml_test():
    return multi_label_data(100, seed=2)


def _config(**kwargs) -> DecTConfig:
    return DecTConfig(
        template=CAUSAL_TEMPLATE, label_words=LABEL_WORDS, multi_label=True, label_column="labels", **kwargs
    )


@pytest.fixture(scope="module")
def fitted(bpe_tokenizer, ml_train):
    model = get_peft_model(tiny_llama(bpe_tokenizer), _config())
    report = model.fit(ml_train, bpe_tokenizer, show_progress=False)
    return model, report


# ---------------------------------------------------------------- reading label sets
def test_label_sets_read_as_multi_hot_rows():
    data = {"labels": [["plot", "positive"], [], "acting", [1.0, 0.0, 0.0, 1.0], [0, 1, 0, 0], [2, 3]]}
    out = read_multi_labels(data, CLASSES, "labels")
    expected = [[1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1], [1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1]]
    assert out.tolist() == expected


def test_sequence_of_class_labels_reads_indices_by_name():
    feature = datasets.Sequence(datasets.ClassLabel(names=["acting", "plot", "negative", "positive"]))
    data = datasets.Dataset.from_dict(
        {"text": ["a", "b"], "labels": [[0, 1], [3]]},
        features=datasets.Features({"text": datasets.Value("string"), "labels": feature}),
    )
    out = read_multi_labels(data, CLASSES, "labels")
    assert out.tolist() == [[0, 0, 1, 1], [1, 0, 0, 0]]


def test_unknown_class_in_a_list_names_row_and_class():
    with pytest.raises(ValueError, match=r"Row 1 has label 'sarcasm'"):
        read_multi_labels({"labels": [["plot"], ["plot", "sarcasm"]]}, CLASSES, "labels")


def test_multi_hot_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match="width 3, but there are 4 classes"):
        read_multi_labels({"labels": [[1.0, 0.0, 1.0]]}, CLASSES, "labels")


def test_all_rows_empty_is_refused():
    with pytest.raises(ValueError, match="Every row has an empty label set"):
        read_multi_labels({"labels": [[], []]}, CLASSES, "labels")


def test_class_without_positive_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="peft_dect.data"):
        read_multi_labels({"labels": [["plot"], ["positive", "negative"]]}, CLASSES, "labels")
    assert "['acting']" in caplog.text


def test_single_label_adapter_given_lists_names_multi_label(bpe_tokenizer):
    model = get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=CAUSAL_TEMPLATE, label_words=LABEL_WORDS))
    with pytest.raises(ValueError, match="multi_label=True"):
        model.fit({"text": ["a b", "c d"], "label": [["plot"], ["acting"]]}, bpe_tokenizer, show_progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"thresholds": [0.5] * 4}, "set multi_label=True"),
        ({"multi_label": True, "thresholds": [0.5, 0.5]}, "list of 4 probabilities"),
        ({"multi_label": True, "thresholds": [0.5, 0.5, 0.5, 1.5]}, r"probability in \[0, 1\]"),
        ({"multi_label": True, "out_of_scope_label": "oos"}, "empty label list"),
        ({"multi_label": "yes"}, "multi_label must be True or False"),
    ],
)
def test_bad_multi_label_settings_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        DecTConfig(template=CAUSAL_TEMPLATE, label_words=LABEL_WORDS, **kwargs)


# ---------------------------------------------------------------- metrics and thresholds
def test_multi_label_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    pred, ref = rng.random((50, 6)) > 0.6, rng.random((50, 6)) > 0.7
    assert multi_label_value("micro_f1", pred, ref) == pytest.approx(f1_score(ref, pred, average="micro"))
    assert multi_label_value("macro_f1", pred, ref) == pytest.approx(
        f1_score(ref, pred, average="macro", zero_division=0)
    )
    assert multi_label_value("hamming_loss", pred, ref) == pytest.approx(hamming_loss(ref, pred))
    assert multi_label_value("exact_match", pred, ref) == pytest.approx(float((pred == ref).all(1).mean()))


def test_best_cut_is_the_f1_optimal_threshold():
    rng = np.random.default_rng(1)
    scores, targets = torch.tensor(rng.normal(size=200)), torch.tensor(rng.random(200) > 0.7)
    threshold, f1 = best_cut(scores, targets)
    brute = max(f1_score(targets.numpy(), (scores >= t).numpy()) for t in scores.tolist())
    assert f1 == pytest.approx(brute, abs=1e-6)
    assert f1_score(targets.numpy(), (scores >= threshold).numpy()) == pytest.approx(brute, abs=1e-6)


def test_binary_temperature_recovers_a_scaled_sigmoid():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, generator=gen) * 3
    targets = torch.bernoulli(torch.sigmoid(logits / 2.5), generator=gen)
    assert fit_binary_temperature(logits, targets) == pytest.approx(2.5, rel=0.1)


def _synthetic_features(n: int, seed: int) -> tuple[Features, torch.Tensor]:
    """Hidden states whose direction tells 4 classes apart, label-word scores and multi-hot labels."""
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, 4, generator=gen) < 0.4).float()
    hidden = labels @ torch.randn(4, 16, generator=torch.Generator().manual_seed(99)) + torch.randn(
        n, 16, generator=gen
    )
    return Features(hidden, torch.randn(n, 4, generator=gen) + labels), labels


@pytest.mark.parametrize("scale", [multilabel.ML_SCORE_SCALE, 3.0])
def test_auto_mode_trains_at_the_score_scale_and_stores_the_unscaled_form(monkeypatch, scale):
    """The decoder is trained on scale * (r - distance) + lam * a (not on the unscaled scores), and the adapter
    keeps lam / scale, so its stored scores are the trained ones divided by the scale."""
    monkeypatch.setattr(multilabel, "ML_SCORE_SCALE", scale)
    cfg = _config()
    train, labels = _synthetic_features(48, seed=1)
    held, held_labels = _synthetic_features(24, seed=2)
    content_free = torch.zeros(4)
    result, choice = multilabel.fit_multilabel(train, labels, content_free, cfg, held, held_labels)
    assert result.report["score_scale"] == scale
    shots = multilabel.shots_of(labels, 4)
    assert result.lam * scale == pytest.approx(min(fusion_grid(shots), key=lambda v: abs(v - result.lam * scale)))
    prior = multilabel.prior_log_odds(train.label_logits, content_free if result.calibrate else None)
    _, snaps = decoder.train(
        train.hidden, labels, prior, torch.full((1,), 1.0 / shots), num_classes=4, decoder_dim=cfg.decoder_dim,
        epochs=result.epochs, lr=cfg.learning_rate, seed=cfg.seed, checkpoints=(result.epochs,),
        radius_init=cfg.radius_init, scale=scale,
    )  # fmt: skip
    torch.testing.assert_close(result.weights.W, snaps[result.epochs].W, atol=1e-4, rtol=1e-4)
    unscaled, _ = decoder.train(
        train.hidden, labels, prior, torch.full((1,), 1.0 / shots), num_classes=4, decoder_dim=cfg.decoder_dim,
        epochs=result.epochs, lr=cfg.learning_rate, seed=cfg.seed, radius_init=cfg.radius_init,
    )  # fmt: skip
    assert not torch.allclose(result.weights.W, unscaled.W, atol=1e-3)


# ---------------------------------------------------------------- DecT multi-label
def test_fit_chooses_on_held_out_data_and_writes_thresholds(fitted):
    model, report = fitted
    cfg = model.peft_config["default"]
    assert report["multi_label"] and report["selected_by"] == "micro_f1"
    assert report["selected_on"] == "4-fold cross-validation"
    assert report["model_passes"] == 65  # 64 texts and the content-free input: one pass each
    assert len(cfg.thresholds) == 4 and all(0.0 <= t <= 1.0 for t in cfg.thresholds)


def test_predict_returns_label_sets_and_beats_the_all_positive_rule(fitted, bpe_tokenizer, ml_test):
    model, _ = fitted
    predicted = model.predict(ml_test["text"], bpe_tokenizer)
    assert all(isinstance(p, list) and set(p) <= set(CLASSES) for p in predicted)
    metrics = model.evaluate(ml_test, bpe_tokenizer)
    assert set(metrics) == {"micro_f1", "macro_f1", "exact_match", "hamming_loss"}
    truth = read_multi_labels(ml_test, list(CLASSES), "labels").numpy() > 0.5
    everything = multi_label_value("micro_f1", np.ones_like(truth), truth)
    assert metrics["micro_f1"] > everything + 0.03


def test_probabilities_are_independent_and_thresholds_decide(fitted, bpe_tokenizer, ml_test):
    model, _ = fitted
    texts = ml_test["text"][:20]
    probs = model.predict_proba(texts, bpe_tokenizer)
    assert probs.shape == (20, 4) and ((probs > 0) & (probs < 1)).all()
    assert not np.allclose(probs.sum(1), 1.0)
    thresholds = np.array(model.peft_config["default"].thresholds)
    expected = [[c for c, p, t in zip(CLASSES, row, thresholds) if p >= t] for row in probs]
    assert model.predict(texts, bpe_tokenizer) == expected
    assert model.predict(texts, bpe_tokenizer, threshold=0.0) == [list(CLASSES)] * 20
    assert model.predict(texts, bpe_tokenizer, threshold=[1.0, 1.0, 1.0, 0.0]) == [["acting"]] * 20


@pytest.mark.parametrize("threshold", [1.5, [0.5, 0.5], True])
def test_bad_threshold_is_refused(fitted, bpe_tokenizer, threshold):
    model, _ = fitted
    with pytest.raises(ValueError, match="threshold"):
        model.predict(["the plot"], bpe_tokenizer, threshold=threshold)


@pytest.mark.parametrize("call", ["predict_set", "unknown_score", "reject", "suggest"])
def test_single_label_features_are_refused_by_name(fitted, bpe_tokenizer, ml_test, call):
    model, _ = fitted
    texts = ml_test["text"][:5]
    with pytest.raises(ValueError, match="not available for a multi-label classifier"):
        if call == "predict_set":
            model.predict_set(texts, bpe_tokenizer)
        elif call == "unknown_score":
            model.unknown_score(texts, bpe_tokenizer)
        elif call == "reject":
            model.predict(texts, bpe_tokenizer, reject=True)
        else:
            model.suggest(texts, 2, bpe_tokenizer)


def test_disabled_adapter_predicts_zero_shot_label_sets(fitted, bpe_tokenizer, ml_test):
    model, _ = fitted
    with model.disable_adapter():
        logits = model.zero_shot_logits(ml_test["text"][:10], bpe_tokenizer)
        predicted = model.predict(ml_test["text"][:10], bpe_tokenizer)
    assert predicted == [[c for c, v in zip(CLASSES, row) if v >= 0] for row in logits.tolist()]


def test_save_and_load_keep_classes_thresholds_and_probabilities(fitted, bpe_tokenizer, ml_test, tmp_path):
    model, _ = fitted
    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path / "adapter")
    cfg = loaded.peft_config["default"]
    assert cfg.multi_label and list(cfg.label_words) == list(CLASSES)
    assert cfg.thresholds == model.peft_config["default"].thresholds
    texts = ml_test["text"][:30]
    np.testing.assert_allclose(
        loaded.predict_proba(texts, bpe_tokenizer), model.predict_proba(texts, bpe_tokenizer), atol=1e-6
    )
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "micro_f1" in card and "Multi-label" in card


def test_single_label_adapter_keeps_its_class_order_through_a_save(bpe_tokenizer, sentiment_train, tmp_path):
    words = {"positive": ["great"], "negative": ["bad"]}  # reverse alphabetical: peft sorts the config's keys
    model = get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=CAUSAL_TEMPLATE, label_words=words))
    data = {
        "sentence": sentiment_train["sentence"],
        "label": [["negative", "positive"][y] for y in sentiment_train["label"]],
    }
    model.fit(data, bpe_tokenizer, show_progress=False)
    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path / "adapter")
    assert loaded.classes == ["positive", "negative"]
    texts = data["sentence"][:10]
    assert loaded.predict(texts, bpe_tokenizer) == model.predict(texts, bpe_tokenizer)


def test_eval_dataset_joins_the_held_out_rows(bpe_tokenizer, ml_train, ml_test):
    model = get_peft_model(tiny_llama(bpe_tokenizer), _config())
    dev = {k: v[:30] for k, v in ml_test.items()}
    report = model.fit(ml_train, bpe_tokenizer, eval_dataset=dev, show_progress=False)
    assert report["selected_on"] == "4-fold cross-validation and eval_dataset"
    assert model.peft_config["default"].uncertainty["heldout"] == 64 + 30


def test_masked_lm_multi_label_fit(wordpiece_tokenizer, ml_train, ml_test):
    cfg = DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, multi_label=True, label_column="labels")
    model = get_peft_model(tiny_bert(wordpiece_tokenizer), cfg)
    model.fit(ml_train, wordpiece_tokenizer, show_progress=False)
    metrics = model.evaluate(ml_test, wordpiece_tokenizer)
    assert 0.0 <= metrics["hamming_loss"] <= 1.0 and metrics["micro_f1"] > 0.3


# ---------------------------------------------------------------- the Trainer path
def test_trainer_matches_fit_for_multi_label(bpe_tokenizer, ml_train, ml_test, tmp_path):
    fast = get_peft_model(tiny_llama(bpe_tokenizer), _config(mode="faithful"))
    fast.fit(ml_train, bpe_tokenizer, show_progress=False)
    slow = get_peft_model(tiny_llama(bpe_tokenizer), _config(mode="faithful"))
    train = slow.prepare_dataset(ml_train, tokenizer=bpe_tokenizer)
    assert len(train[0]["labels"]) == 4
    full_batch_trainer(slow, train, None, tmp_path).train()
    # Same data, full batch, Adam(lr=0.01) for 30 epochs, the same BCE: equal up to float summation order.
    layer_fast, layer_slow = fast.base_model.dect_layer, slow.base_model.dect_layer
    torch.testing.assert_close(layer_slow.dect_W["default"], layer_fast.dect_W["default"], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(
        layer_slow.dect_radii["default"], layer_fast.dect_radii["default"], atol=1e-3, rtol=1e-3
    )
    texts = ml_test["text"][:20]
    np.testing.assert_allclose(
        slow.predict_proba(texts, bpe_tokenizer), fast.predict_proba(texts, bpe_tokenizer), atol=1e-3
    )
