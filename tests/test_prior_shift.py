"""EM re-estimation of the class priors at prediction time (Saerens et al., 2002)."""

import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE, sentiment_data, tiny_llama
from peft import get_peft_model

from peft_dect import DecTConfig
from peft_dect.prior_shift import adapt_prior


def shifted_gaussians(n=4000, prior=0.9, seed=0):
    """Two unit Gaussians at -1 and +1; the exact posteriors under equal priors are softmax([-x, x])."""
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, generator=gen) > prior).long()  # class 0 with probability `prior`
    x = torch.randn(n, generator=gen) + (2.0 * labels - 1.0)
    return torch.stack([-x, x], -1), labels


def test_em_recovers_the_shifted_prior_and_improves_accuracy():
    logits, labels = shifted_gaussians()
    adapted, prior = adapt_prior(logits)
    assert prior[0].item() == pytest.approx(0.9, abs=0.02)
    before = (logits.argmax(-1) == labels).float().mean()
    after = (adapted.argmax(-1) == labels).float().mean()
    assert after > before + 0.03
    assert torch.allclose(adapted.exp().sum(-1), torch.ones(len(labels), dtype=adapted.dtype))


def test_balanced_inputs_keep_their_predictions():
    logits, labels = shifted_gaussians(prior=0.5, seed=1)
    adapted, prior = adapt_prior(logits)
    assert prior[0].item() == pytest.approx(0.5, abs=0.03)
    assert (adapted.argmax(-1) != logits.argmax(-1)).float().mean() < 0.02


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="shape \\(inputs, classes\\)"):
        adapt_prior(torch.zeros(3))
    with pytest.raises(ValueError, match="one value per class"):
        adapt_prior(torch.zeros(4, 2), train_prior=torch.tensor([0.2, 0.3, 0.5]))


def test_classifiers_take_prior_shift_at_prediction(bpe_tokenizer):
    config = DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, calibrate_probabilities=False)
    model = get_peft_model(tiny_llama(bpe_tokenizer), config)
    model.fit(sentiment_data(8, seed=3), tokenizer=bpe_tokenizer, show_progress=False)
    test = sentiment_data(6, seed=4)
    plain = model.base_model.predict_logits(test, tokenizer=bpe_tokenizer)
    shifted = model.predict_proba(test, tokenizer=bpe_tokenizer, prior_shift=True)
    expected, _ = adapt_prior(plain)
    assert torch.allclose(torch.as_tensor(shifted), torch.softmax(expected, -1), atol=1e-6)
    assert set(model.evaluate(test, tokenizer=bpe_tokenizer, prior_shift=True)) == {"accuracy"}


def test_prior_shift_runs_on_the_calibrated_probabilities(bpe_tokenizer):
    """With a fitted temperature T, EM starts from softmax(logits / T), and predict_proba returns its posteriors."""
    model = get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    model.fit(sentiment_data(8, seed=3), tokenizer=bpe_tokenizer, show_progress=False)
    t = model.base_model.temperature
    assert t != 1.0
    test = sentiment_data(6, seed=4)
    plain = model.base_model.predict_logits(test, tokenizer=bpe_tokenizer)
    expected, _ = adapt_prior(plain / t)
    shifted = model.predict_proba(test, tokenizer=bpe_tokenizer, prior_shift=True)
    assert torch.allclose(torch.as_tensor(shifted), expected.exp(), atol=1e-5)
