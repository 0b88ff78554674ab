"""Model cards: written on save_pretrained / push_to_hub, valid Hub metadata, metrics once evaluated."""

import pytest
from conftest import LABEL_WORDS, TEMPLATE, sentiment_data, tiny_llama
from huggingface_hub import ModelCard
from peft import get_peft_model

from peft_dect import DecTConfig


@pytest.fixture
def fitted(bpe_tokenizer):
    config = DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, budget=1)  # the template alone: 33 passes
    model = get_peft_model(tiny_llama(bpe_tokenizer), config)
    model.fit(sentiment_data(16, 1), tokenizer=bpe_tokenizer, show_progress=False)
    return model


def test_card_has_metadata_prompt_and_training(fitted, tmp_path):
    fitted.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "peft"
    assert {"peft-dect", "dect", "few-shot"} <= set(card.data.tags)
    assert card.data.pipeline_tag == "text-classification"
    assert "model-index" not in card.data.to_dict()
    text = card.text
    assert TEMPLATE in text and "| negative | bad |" in text and "| positive | great |" in text
    assert "Fitted on 32 labelled examples (16 per class) with 33 model passes" in text
    assert "import peft_dect" in text and "Not evaluated yet" in text


def test_card_carries_the_metrics_of_evaluate(fitted, tmp_path):
    metrics = fitted.evaluate(sentiment_data(10, 2), name="synthetic-sentiment", split="test")
    fitted.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    (entry,) = card.data.eval_results
    assert entry.metric_type == "accuracy" and entry.metric_value == pytest.approx(metrics["accuracy"], abs=1e-4)
    assert entry.dataset_name == "synthetic-sentiment" and entry.dataset_split == "test"
    assert "synthetic-sentiment (test, 20 examples): accuracy" in card.text


def test_a_card_the_user_wrote_is_kept(fitted, tmp_path):
    (tmp_path / "README.md").write_text("# My own card\n\nHand-written notes.\n")
    fitted.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert "Hand-written notes." in card.text and card.data.library_name == "peft"


def test_fit_sentence_states_the_score_scale_of_a_many_class_fit():
    """A fit trained at a score scale (auto mode above 10 classes) says so; a scale-1 fit reads as before."""
    from types import SimpleNamespace

    from peft_dect.dect.card import fit_sentence

    fit = {"train_examples": 616, "shots": 8, "model_passes": 617, "mode": "auto", "lam": 0.032, "calibrate": True,
           "epochs": 60, "selected_on": "4-fold cross-validation", "heldout_accuracy": 0.6}  # fmt: skip
    config = SimpleNamespace(learning_rate=0.01, seed=0)
    assert "scale" not in fit_sentence(fit | {"score_scale": 1.0}, config)
    assert "trained at scale 7.7" in fit_sentence(fit | {"score_scale": 7.7}, config)
