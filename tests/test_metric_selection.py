"""Auto mode chooses by the task's metric; evaluate() reports it; bad metrics are refused by name."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE, sentiment_data, tiny_llama
from peft import get_peft_model

from peft_dect import DecTConfig
from peft_dect.dect.fit import fit_auto
from peft_dect.features import Features
from peft_dect.metrics import macro_f1, metric_value, resolve_metric


def features(n_per_class=(12, 4, 8), hidden=16, seed=0):
    """Three unbalanced classes whose hidden states carry the class and whose prior leans to class 0."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    centres = torch.randn(len(n_per_class), hidden, generator=gen) * 2
    h = centres[labels] + torch.randn(len(labels), hidden, generator=gen) * 2
    prior = torch.log_softmax(
        torch.randn(len(labels), len(n_per_class), generator=gen) + torch.tensor([1.5, 0, 0]), -1
    )
    return Features(h, prior), labels


def cfg(**kw):
    return SimpleNamespace(lam=None, calibrate=True, epochs=30, learning_rate=0.01, seed=0, decoder_dim=8,
                           radius_init="normalized", **kw)  # fmt: skip


def test_metric_values_of_accuracy_equal_the_correct_counts():
    """The pooled held-out predictions behind F1 or MCC are those behind the counts: a callable accuracy gives
    every candidate exactly the count-based value."""
    (train, y), (ev, y_ev) = features(), features(seed=1)
    cf = torch.log_softmax(torch.tensor([1.0, 0.0, 0.0]), -1)
    counted = fit_auto(train, y, cf, cfg(), 3, ev, y_ev)
    pooled = fit_auto(train, y, cf, cfg(), 3, ev, y_ev, metric=lambda p, r: float((p == r).mean()))
    assert counted.report["selected_by"] == "accuracy" and pooled.report["selected_by"] == "<lambda>"
    assert pooled.report["grid_<lambda>"] == pytest.approx(counted.report["grid"], abs=1e-12)
    assert (pooled.calibrate, pooled.epochs, pooled.lam) == (counted.calibrate, counted.epochs, counted.lam)


def test_auto_mode_maximises_the_chosen_metric():
    (train, y), (ev, y_ev) = features(), features(seed=1)
    cf = torch.log_softmax(torch.tensor([1.0, 0.0, 0.0]), -1)
    result = fit_auto(train, y, cf, cfg(), 3, ev, y_ev, metric="macro_f1")
    grid = result.report["grid_macro_f1"]
    assert result.report["heldout_macro_f1"] == max(grid.values())
    key = f"calibrate={result.calibrate},epochs={result.epochs},lam={result.lam:g}"
    assert grid[key] == max(grid.values())


def test_resolve_metric_names_callables_and_evaluate_modules():
    pred, ref = np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2])
    assert resolve_metric("macro_f1")[1](pred, ref) == macro_f1(pred, ref)

    class Module:  # the shape of an `evaluate` metric module
        name = "f1"

        def compute(self, predictions, references):
            return {"f1": metric_value("f1", predictions, references)}

    name, fn = resolve_metric(Module())
    assert name == "f1" and fn(pred, ref) == metric_value("f1", pred, ref)
    with pytest.raises(ValueError, match="Unknown metric 'f2'"):
        resolve_metric("f2")
    with pytest.raises(TypeError, match="metric must be a name"):
        resolve_metric(3)

    def broken(p, r):
        raise ZeroDivisionError("no positives")

    with pytest.raises(ValueError, match="The metric 'broken' raised ZeroDivisionError: no positives"):
        resolve_metric(broken)[1](pred, ref)

    def nan_metric(p, r):
        return float("nan")

    with pytest.raises(ValueError, match="'nan_metric' must return a finite number"):
        resolve_metric(nan_metric)[1](pred, ref)


def broken_metric(predictions, references):
    raise KeyError("label 3")


def test_fit_by_a_metric_is_reported_by_evaluate_and_unknown_metrics_fail_before_any_pass(bpe_tokenizer):
    base = tiny_llama(bpe_tokenizer)
    calls = []
    base.model.register_forward_hook(lambda *args: calls.append(1))
    model = get_peft_model(base, DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    train, test = sentiment_data(8, seed=3), sentiment_data(6, seed=4)
    with pytest.raises(ValueError, match="Unknown metric 'f2'"):
        model.fit(train, tokenizer=bpe_tokenizer, metric="f2", show_progress=False)
    assert not calls
    with pytest.raises(ValueError, match="The metric 'broken_metric' raised KeyError"):
        model.fit(train, tokenizer=bpe_tokenizer, metric=broken_metric, show_progress=False)
    assert calls  # a metric that raises is found once there are predictions to score
    report = model.fit(train, tokenizer=bpe_tokenizer, metric="macro_f1", show_progress=False)
    assert report["selected_by"] == "macro_f1" and "heldout_macro_f1" in report
    metrics = model.evaluate(test, tokenizer=bpe_tokenizer)
    assert set(metrics) == {"accuracy", "macro_f1"}
    logits = model.predict_logits(test, tokenizer=bpe_tokenizer)
    assert metrics["macro_f1"] == macro_f1(logits.argmax(-1).numpy(), np.asarray(test["label"]))


def test_auto_mode_trains_at_the_class_counts_score_scale_and_stores_the_unscaled_form():
    """With many classes the decoder is trained on scale * (r - distance) + lam * q, and the fit keeps lam / scale:
    the stored scores are the trained ones over the scale. Up to 10 classes the scale is 1, the paper's scores."""
    from peft_dect.dect import decoder
    from peft_dect.dect.fit import fusion_grid, score_scale

    assert [score_scale(c) for c in (2, 6, 10)] == [1.0, 1.0, 1.0]
    assert 1.0 < score_scale(40) < score_scale(77) <= score_scale(1000)
    classes = 40
    gen = torch.Generator().manual_seed(3)
    y = torch.arange(classes).repeat(4)
    h = torch.randn(classes, 16, generator=gen)[y] * 2 + torch.randn(len(y), 16, generator=gen)
    train = Features(h, torch.log_softmax(torch.randn(len(y), classes, generator=gen), -1))
    scale = score_scale(classes)
    cf = torch.zeros(classes)
    result = fit_auto(train, y, cf, cfg(), classes)
    assert result.report["score_scale"] == scale
    assert min(abs(result.lam * scale - v) for v in fusion_grid(4)) < 1e-9  # a grid value over the scale
    q = torch.softmax(train.label_logits - (cf if result.calibrate else 0.0), -1)
    common = dict(num_classes=classes, decoder_dim=8, epochs=result.epochs, lr=0.01, seed=0, radius_init="normalized")
    scaled, _ = decoder.train(train.hidden, y, q, torch.tensor([0.25]), scale=scale, **common)
    torch.testing.assert_close(result.weights.W, scaled.W)
    unscaled, _ = decoder.train(train.hidden, y, q, torch.tensor([0.25]), **common)
    assert not torch.allclose(result.weights.W, unscaled.W, atol=1e-3)
