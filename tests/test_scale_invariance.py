"""DecT does not depend on the scale of the backbone's hidden states: multiplying every hidden state by 10 or 100
leaves a fitted adapter's predictions unchanged, in faithful and auto mode, on masked and causal LMs.

The scaling wraps `Backbone.extract`, so the hidden states reach `fit` and `predict` scaled and the label-word
scores do not change. Normalisation makes the score and the gradient wrt W independent of the scale, so Adam takes
the same steps; what is left is float32 rounding: argmax identical, probabilities within PROBA_ATOL.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE
from peft import get_peft_model

import peft_dect  # noqa: F401  (registers DecT with peft)
from peft_dect import DecTConfig
from peft_dect.backbone import Backbone
from peft_dect.features import Features


PROBA_ATOL = 1e-4  # float32 rounding of the scaled features; the fit itself is exactly invariant
FIXTURES = Path(__file__).parent / "fixtures" / "format1"


def fitted_proba(lm, data, texts, monkeypatch, scale: float, **config):
    """Probabilities on `texts`, fit report and radii of a DecT adapter fitted on `data` with every hidden state
    multiplied by `scale`."""
    model, tok, _ = lm
    extract = Backbone.extract

    def scaled(self, *args, **kwargs):
        feats = extract(self, *args, **kwargs)
        return Features(feats.hidden * scale, feats.label_logits)

    with monkeypatch.context() as patch:
        patch.setattr(Backbone, "extract", scaled)
        peft_model = get_peft_model(model, DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, **config))
        report = peft_model.fit(data["train"], tokenizer=tok, eval_dataset=data.get("eval"), show_progress=False)
        proba = peft_model.predict_proba(texts)
        radii = peft_model.base_model.dect_layer.state("default").weights.radii[0].detach().clone()
        peft_model.unload()
    return proba, report, radii


@pytest.mark.parametrize("mode", ["faithful", "auto"])
def test_predictions_do_not_depend_on_the_hidden_state_scale(lm, mode, sentiment_train, sentiment_test, monkeypatch):
    data = {"train": sentiment_train}
    if mode == "auto":
        data["eval"] = {k: v[:20] for k, v in sentiment_test.items()}
    texts = sentiment_test["sentence"]
    base, base_report, _ = fitted_proba(lm, data, texts, monkeypatch, 1.0, mode=mode)
    for scale in (10.0, 100.0):
        proba, report, _ = fitted_proba(lm, data, texts, monkeypatch, scale, mode=mode)
        assert (proba.argmax(1) == base.argmax(1)).all(), f"scale {scale} changed predictions"
        np.testing.assert_allclose(proba, base, atol=PROBA_ATOL)
        if mode == "auto":
            assert (report["calibrate"], report["epochs"], report["lam"]) == (
                base_report["calibrate"],
                base_report["epochs"],
                base_report["lam"],
            )


def test_the_reference_initialisation_follows_the_scale(lm, sentiment_train, sentiment_test, monkeypatch):
    """radius_init="reference" reproduces the original code, whose initial radii grow with the hidden states; the
    normalised ones do not move (epochs=0 keeps the initial radii)."""
    data, texts = {"train": sentiment_train}, sentiment_test["sentence"][:5]
    radii = {}
    for init in ("reference", "normalized"):
        for scale in (1.0, 100.0):
            config = dict(mode="faithful", radius_init=init, epochs=0)
            radii[init, scale] = fitted_proba(lm, data, texts, monkeypatch, scale, **config)[2]
    torch.testing.assert_close(radii["reference", 100.0], 100 * radii["reference", 1.0], rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(radii["normalized", 100.0], radii["normalized", 1.0], rtol=1e-4, atol=1e-6)
    assert radii["normalized", 1.0].max() <= 2  # the distances' scale


def test_unknown_radius_init_lists_the_options():
    with pytest.raises(ValueError, match=r"radius_init must be one of \('normalized', 'reference'\), got 'paper'"):
        DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, radius_init="paper")


@pytest.mark.parametrize("name", ["dect_llama", "dect_demos_roberta"])
def test_adapters_saved_before_the_option_record_the_reference_initialisation(name, tmp_path):
    from peft.config import PeftConfig

    assert PeftConfig.from_pretrained(FIXTURES / name).radius_init == "normalized"  # not read by DecTConfig
    loaded = DecTConfig.from_pretrained(str(FIXTURES / name))
    assert loaded.radius_init == "reference"
    loaded.save_pretrained(tmp_path)
    assert DecTConfig.from_pretrained(str(tmp_path)).radius_init == "reference"
    assert DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS).radius_init == "normalized"
