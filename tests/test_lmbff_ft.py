"""LM-BFF prompt-based fine-tuning: LoRA or all weights through Trainer, STS-B-style regression, save/load."""

import json
import random

import numpy as np
import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE, sentiment_data, tiny_bert, tiny_llama
from huggingface_hub import ModelCard
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainingArguments

from peft_dect.lmbff import BestOnDevCallback, LMBFFConfig, LMBFFModel
from peft_dect.lmbff.model import regression_loss, regression_prediction, regression_targets
from peft_dect.metrics import metric_value as compute_metric


BOUNDS = (0.0, 5.0)
LOW_HIGH = {"low": ["bad"], "high": ["great"]}


def _lora(maker):
    targets = ["q_proj", "v_proj"] if maker is tiny_llama else ["query", "value"]
    return LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0)


def _trainer(model, train, tmp_path, *, epochs, lr, dev=None, callbacks=None, metric=None):
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=32,
        num_train_epochs=epochs,
        learning_rate=lr,
        eval_strategy="epoch" if dev is not None else "no",
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=model.prepare_dataset(train),
        eval_dataset=model.prepare_dataset(dev) if dev is not None else None,
        data_collator=model.collate,
        compute_metrics=model.trainer_metrics(metric),
        callbacks=callbacks,
    )


def regression_data(n: int, seed: int) -> dict[str, list]:
    """Sentences whose score (0..5) is the share of positive adjectives among three, times five."""
    from conftest import NEGATIVE, POSITIVE

    rng = random.Random(seed)
    texts, scores = [], []
    for _ in range(n):
        k = rng.randint(0, 3)
        words = rng.sample(POSITIVE, k) + rng.sample(NEGATIVE, 3 - k)
        rng.shuffle(words)
        texts.append(f"the film was {words[0]} , {words[1]} and {words[2]}")
        scores.append(5.0 * k / 3)
    return {"sentence": texts, "label": scores}


# ---------------------------------------------------------------- classification through Trainer
@pytest.mark.parametrize("maker", [tiny_llama, tiny_bert], ids=["causal", "masked"])
def test_lora_learns_the_toy_task_and_only_lora_trains(
    maker, bpe_tokenizer, wordpiece_tokenizer, sentiment_train, sentiment_test, tmp_path
):
    tok = bpe_tokenizer if maker is tiny_llama else wordpiece_tokenizer
    base = maker(tok)
    frozen = {n: p.detach().clone() for n, p in base.named_parameters()}
    config = LMBFFConfig(template=TEMPLATE, label_words=LABEL_WORDS, peft_config=_lora(maker))
    model = LMBFFModel(base, tok, config, show_progress=False)
    before = model.evaluate(sentiment_test)["accuracy"]
    _trainer(model, sentiment_train, tmp_path, epochs=15, lr=2e-2).train()
    after = model.evaluate(sentiment_test)["accuracy"]
    assert after >= 0.9 and after > before
    for name, param in model.model.get_base_model().named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, frozen[name.replace(".base_layer", "")]), name


def test_full_fine_tuning_learns_the_toy_task(bpe_tokenizer, sentiment_train, sentiment_test, tmp_path):
    base = tiny_llama(bpe_tokenizer)
    base.requires_grad_(False)  # LMBFFModel makes every weight trainable again for full fine-tuning
    model = LMBFFModel(base, bpe_tokenizer, LMBFFConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    assert all(p.requires_grad for p in base.parameters())
    _trainer(model, sentiment_train, tmp_path, epochs=10, lr=3e-3).train()
    assert model.evaluate(sentiment_test, show_progress=False)["accuracy"] >= 0.9


def test_best_on_dev_restores_the_best_evaluated_weights(bpe_tokenizer, sentiment_train, tmp_path):
    config = LMBFFConfig(template=TEMPLATE, label_words=LABEL_WORDS, peft_config=_lora(tiny_llama))
    model = LMBFFModel(tiny_llama(bpe_tokenizer), bpe_tokenizer, config, show_progress=False)
    dev = sentiment_data(6, seed=3)
    best = BestOnDevCallback("accuracy")
    _trainer(model, sentiment_train, tmp_path, epochs=4, lr=2e-2, dev=dev, callbacks=[best]).train()
    assert sorted(best.history) == [4, 8, 12, 16] and best.best_value == max(best.history.values())
    assert best.best_step == min(s for s, v in best.history.items() if v == best.best_value)
    assert model.evaluate(dev)["accuracy"] == pytest.approx(best.best_value)
    assert model.train_report["training batches"] == 16 and model.train_report["examples seen"] == 128
    assert model.train_report["kept the best dev accuracy"].endswith(f"(step {best.best_step})")


# ---------------------------------------------------------------- regression
def test_regression_targets_loss_and_prediction_follow_lm_bff():
    values = torch.tensor([0.0, 2.5, 5.0])
    torch.testing.assert_close(regression_targets(values, BOUNDS), torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]))
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]]))
    torch.testing.assert_close(regression_prediction(logits, BOUNDS), torch.tensor([0.5, 2.5, 4.0]))
    # KL(target || p) is zero when p equals the target and positive otherwise
    exact = torch.log(torch.tensor([[0.6, 0.4]]))
    assert regression_loss(exact, torch.tensor([2.0]), BOUNDS).item() == pytest.approx(0.0, abs=1e-6)
    expected = 0.6 * np.log(0.6 / 0.5) + 0.4 * np.log(0.4 / 0.5)
    loss = regression_loss(torch.zeros(1, 2), torch.tensor([2.0]), BOUNDS)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_regression_learns_the_scores(bpe_tokenizer, tmp_path):
    config = LMBFFConfig(
        template=TEMPLATE, label_words=LOW_HIGH, peft_config=_lora(tiny_llama), regression_bounds=BOUNDS
    )
    model = LMBFFModel(tiny_llama(bpe_tokenizer), bpe_tokenizer, config, show_progress=False)
    train, test = regression_data(48, seed=1), regression_data(40, seed=2)
    before = model.evaluate(test)["pearson"]
    trainer = _trainer(model, train, tmp_path, epochs=15, lr=2e-2, dev=test, metric="pearson")
    assert trainer.train_dataset.features["labels"].dtype == "float64"
    trainer.train()
    metrics = model.evaluate(test)
    assert set(metrics) == {"pearson", "spearman"}
    assert metrics["pearson"] >= 0.8 and metrics["pearson"] > before
    pred = model.predict(test["sentence"][:5])
    assert all(isinstance(p, float) and 0.0 <= p <= 5.0 for p in pred)
    proba = model.predict_proba(test["sentence"][:5])
    np.testing.assert_allclose(np.array(pred), 5.0 * proba[:, 1], rtol=1e-5)


def test_compute_metric_matches_definitions():
    pred, ref = [1, 0, 1, 1, 0, 0], [1, 0, 0, 1, 1, 0]
    assert compute_metric("accuracy", pred, ref) == pytest.approx(4 / 6)
    assert compute_metric("f1", pred, ref) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert compute_metric("matthews_correlation", pred, ref) == pytest.approx((2 * 2 - 1 * 1) / 9)
    x, y = [0.1, 0.4, 0.35, 0.8], [1.0, 2.0, 3.0, 4.0]
    assert compute_metric("pearson", x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert compute_metric("spearman", x, y) == pytest.approx(0.8)


# ---------------------------------------------------------------- save and load
def test_lora_save_load_reproduces_predictions(bpe_tokenizer, sentiment_train, sentiment_test, tmp_path):
    config = LMBFFConfig(template=TEMPLATE, label_words=LABEL_WORDS, peft_config=_lora(tiny_llama))
    model = LMBFFModel(tiny_llama(bpe_tokenizer), bpe_tokenizer, config, show_progress=False)
    _trainer(model, sentiment_train, tmp_path, epochs=3, lr=2e-2).train()
    model.evaluate(sentiment_test, name="toy-sentiment")
    expected = model.predict_proba(sentiment_test)
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    files = {p.name for p in folder.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "lmbff_config.json", "README.md"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert json.loads((folder / "lmbff_config.json").read_text())["tuning"] == "peft"
    card = ModelCard.load(folder / "README.md")
    assert "lm-bff" in card.data.tags and "lora" in card.data.tags and "toy-sentiment" in card.text
    assert "Trained with the transformers Trainer: training batches 12, examples seen 96." in card.text
    loaded = LMBFFModel.from_pretrained(folder, base_model=tiny_llama(bpe_tokenizer), show_progress=False)
    np.testing.assert_allclose(loaded.predict_proba(sentiment_test), expected, rtol=1e-5, atol=1e-6)
    assert loaded.config.label_words == config.label_words and loaded.config.template == TEMPLATE


def test_full_fine_tuning_save_load_reproduces_regression(bpe_tokenizer, tmp_path):
    config = LMBFFConfig(template=TEMPLATE, label_words=LOW_HIGH, regression_bounds=BOUNDS)
    model = LMBFFModel(tiny_llama(bpe_tokenizer), bpe_tokenizer, config, show_progress=False)
    _trainer(model, regression_data(16, seed=1), tmp_path, epochs=1, lr=1e-3).train()
    test = regression_data(10, seed=2)
    expected = model.predict(test)
    model.save_pretrained(tmp_path / "full")
    files = {p.name for p in (tmp_path / "full").iterdir()}
    assert "model.safetensors" in files and "adapter_config.json" not in files
    loaded = LMBFFModel.from_pretrained(tmp_path / "full", show_progress=False)
    assert loaded.config.regression_bounds == BOUNDS and loaded.config.peft_config is None
    np.testing.assert_allclose(loaded.predict(test), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- bad input
def test_float_labels_given_to_a_classifier_are_refused(bpe_tokenizer):
    config = LMBFFConfig(template=TEMPLATE, label_words=LABEL_WORDS, peft_config=_lora(tiny_llama))
    model = LMBFFModel(tiny_llama(bpe_tokenizer), bpe_tokenizer, config, show_progress=False)
    with pytest.raises(ValueError, match="regression_bounds"):
        model.prepare_dataset(regression_data(8, seed=0))


def test_regression_targets_outside_the_bounds_are_refused(bpe_tokenizer):
    config = LMBFFConfig(
        template=TEMPLATE, label_words=LOW_HIGH, peft_config=_lora(tiny_llama), regression_bounds=(0, 1)
    )
    model = LMBFFModel(tiny_llama(bpe_tokenizer), bpe_tokenizer, config, show_progress=False)
    with pytest.raises(ValueError, match=r"Row 0 has target 5\.0, outside regression_bounds \(0, 1\)"):
        model.prepare_dataset({"sentence": ["a", "b"], "label": [5.0, 0.5]})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"regression_bounds": (5, 0)}, "lb < ub"),
        ({"regression_bounds": (0, float("nan"))}, "two finite numbers"),
        ({"regression_bounds": (0, 5), "label_words": {"a": ["bad"], "b": ["fine"], "c": ["great"]}}, "two label"),
        ({"peft_config": {"r": 8}}, "peft config such as LoraConfig"),
        ({"demonstrations": 3}, "dict of Demonstrations settings"),
        ({"max_length": 0}, "positive number"),
    ],
)
def test_config_errors_name_the_problem(kwargs, message):
    settings = {"template": TEMPLATE, "label_words": LABEL_WORDS, **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        LMBFFConfig(**settings)


def test_loading_needs_the_right_pieces(bpe_tokenizer, tmp_path):
    config = LMBFFConfig(template=TEMPLATE, label_words=LABEL_WORDS, peft_config=_lora(tiny_llama))
    model = LMBFFModel(tiny_llama(bpe_tokenizer), bpe_tokenizer, config, show_progress=False)
    model.save_pretrained(tmp_path / "lora")
    with pytest.raises(ValueError, match="pass base_model"):
        LMBFFModel.from_pretrained(tmp_path / "lora")
    bare = get_peft_model(tiny_llama(bpe_tokenizer), _lora(tiny_llama))
    bare.save_pretrained(tmp_path / "bare")
    with pytest.raises(ValueError, match="no lmbff_config.json"):
        LMBFFModel.from_pretrained(tmp_path / "bare", base_model=tiny_llama(bpe_tokenizer))
    with pytest.raises(TypeError, match="pass the bare transformers model"):
        LMBFFModel(bare, bpe_tokenizer, LMBFFConfig(template=TEMPLATE, label_words=LABEL_WORDS))


# ---------------------------------------------------------------- demonstrations
def test_demonstrations_reach_the_prompts_train_and_survive_save_load(
    bpe_tokenizer, sentiment_train, sentiment_test, tmp_path
):
    demos = {"num_sets": 2, "seed": 0}
    config = LMBFFConfig(
        template=TEMPLATE, label_words=LABEL_WORDS, peft_config=_lora(tiny_llama), demonstrations=demos
    )
    with pytest.raises(ValueError, match="pass train_dataset"):
        LMBFFModel(tiny_llama(bpe_tokenizer), bpe_tokenizer, config)
    model = LMBFFModel(
        tiny_llama(bpe_tokenizer), bpe_tokenizer, config, train_dataset=sentiment_train, show_progress=False
    )
    prompt = model.backbone.render(sentiment_test["sentence"][0])
    assert prompt.endswith(sentiment_test["sentence"][0] + " In summary, it was")
    assert "In summary, it was bad." in prompt and "In summary, it was great." in prompt
    # predictions average the label-word scores of the two demonstration sets
    sets = [
        model.backbone.run(model.backbone.tokenize(sentiment_test["sentence"][:4], None, s), "t", show=False)
        for s in range(2)
    ]
    torch.testing.assert_close(
        model.predict_logits(sentiment_test["sentence"][:4]), (sets[0].label_logits + sets[1].label_logits) / 2
    )
    _trainer(model, sentiment_train, tmp_path, epochs=10, lr=2e-2).train()
    assert model.evaluate(sentiment_test)["accuracy"] >= 0.9
    expected = model.predict_proba(sentiment_test)
    model.save_pretrained(tmp_path / "demos")
    loaded = LMBFFModel.from_pretrained(tmp_path / "demos", base_model=tiny_llama(bpe_tokenizer), show_progress=False)
    assert loaded.backbone.render(sentiment_test["sentence"][0]) == prompt
    np.testing.assert_allclose(loaded.predict_proba(sentiment_test), expected, rtol=1e-5, atol=1e-6)


def test_regression_demonstrations_use_the_word_of_their_half_of_the_range(bpe_tokenizer):
    config = LMBFFConfig(template=TEMPLATE, label_words=LOW_HIGH, regression_bounds=BOUNDS, demonstrations={"seed": 1})
    train = {"sentence": ["a dull film", "a fine film"], "label": [1.0, 4.0]}
    model = LMBFFModel(tiny_llama(bpe_tokenizer), bpe_tokenizer, config, train_dataset=train, show_progress=False)
    prompt = model.backbone.render("a new film")
    assert "a dull film In summary, it was bad." in prompt and "a fine film In summary, it was great." in prompt


def test_config_for_a_task_uses_its_prompt_and_sts_b_is_regression():
    sst2 = LMBFFConfig.for_task("SST-2", kind="masked", peft_config=LoraConfig(r=2))
    assert sst2.template == "{text_a} It was {mask}." and sst2.label_words == {
        "negative": ["terrible"],
        "positive": ["great"],
    }
    assert not sst2.is_regression and sst2.tuning == "peft"
    stsb = LMBFFConfig.for_task("sts-b")
    assert stsb.regression_bounds == (0.0, 5.0) and stsb.classes == ["low", "high"] and stsb.tuning == "full"
    assert stsb.template.endswith("Answer:{mask}")
    with pytest.raises(ValueError, match="Unknown task 'nope'; known tasks: SST-2"):
        LMBFFConfig.for_task("nope")
