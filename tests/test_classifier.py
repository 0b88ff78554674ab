"""LabelWordClassifier: a bare or PEFT-wrapped LM as a trainable label-word classifier."""

import json

import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE, tiny_bert, tiny_llama
from peft import LoraConfig, PromptTuningConfig, get_peft_model
from transformers import LlamaForCausalLM, Trainer, TrainingArguments

from peft_dect import Backbone, LabelWordClassifier, Template, Verbalizer


def _args(tmp_path, epochs, lr, batch=8):
    return TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch,
        num_train_epochs=epochs,
        learning_rate=lr,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )


def _train(clf, data, tmp_path, epochs=10, lr=5e-3):
    train = clf.prepare_dataset(data)
    Trainer(model=clf, args=_args(tmp_path, epochs, lr), train_dataset=train, data_collator=clf.collate).train()


def test_untrained_scores_are_the_zero_shot_label_word_log_probs(lm, sentiment_test):
    model, tok, _ = lm
    clf = LabelWordClassifier(model, tok, TEMPLATE, LABEL_WORDS, show_progress=False)
    template = Template(TEMPLATE)
    verbalizer = Verbalizer.from_words(LABEL_WORDS, tok, space_before=template.space_before_mask)
    expected = Backbone(model, tok, template, verbalizer, show_progress=False).extract(sentiment_test["sentence"])
    torch.testing.assert_close(clf.predict_logits(sentiment_test), expected.label_logits)


def test_forward_gives_logits_and_loss_with_gradients(lm, sentiment_train):
    model, tok, _ = lm
    clf = LabelWordClassifier(model, tok, TEMPLATE, LABEL_WORDS)
    data = clf.prepare_dataset(sentiment_train)
    assert set(data.column_names) == {"input_ids", "attention_mask", "labels"}
    out = clf(**clf.collate([data[i] for i in range(5)]))
    assert out.logits.shape == (5, 2) and out.loss.ndim == 0
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("maker", [tiny_llama, tiny_bert], ids=["causal", "masked"])
def test_lora_training_through_trainer_learns_and_touches_only_lora(
    maker, bpe_tokenizer, wordpiece_tokenizer, sentiment_train, sentiment_test, tmp_path
):
    tok = bpe_tokenizer if maker is tiny_llama else wordpiece_tokenizer
    targets = ["q_proj", "v_proj"] if maker is tiny_llama else ["query", "value"]
    model = get_peft_model(maker(tok), LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    clf = LabelWordClassifier(model, tok, TEMPLATE, LABEL_WORDS, show_progress=False)
    before = clf.evaluate(sentiment_test)["accuracy"]
    _train(clf, sentiment_train, tmp_path, epochs=15, lr=2e-2)
    after = clf.evaluate(sentiment_test)["accuracy"]
    assert after >= 0.9 and after > before
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, frozen[n]), n


def test_full_fine_tuning_learns(bpe_tokenizer, sentiment_train, sentiment_test, tmp_path):
    clf = LabelWordClassifier(tiny_llama(bpe_tokenizer), bpe_tokenizer, TEMPLATE, LABEL_WORDS, show_progress=False)
    _train(clf, sentiment_train, tmp_path, epochs=10, lr=3e-3)
    assert clf.evaluate(sentiment_test)["accuracy"] >= 0.9


@pytest.mark.parametrize("maker", [tiny_llama, tiny_bert], ids=["causal", "masked"])
def test_soft_prompt_shifts_the_prediction_position(maker, bpe_tokenizer, wordpiece_tokenizer, sentiment_test):
    tok = bpe_tokenizer if maker is tiny_llama else wordpiece_tokenizer
    task = "CAUSAL_LM" if maker is tiny_llama else "FEATURE_EXTRACTION"
    base = maker(tok)
    model = get_peft_model(base, PromptTuningConfig(task_type=task, num_virtual_tokens=5))
    clf = LabelWordClassifier(model, tok, TEMPLATE, LABEL_WORDS, show_progress=False)
    texts = sentiment_test["sentence"][:3]
    got = clf.predict_logits(texts)
    # By hand: the soft prompt's embeddings, then the prompt's, through the bare model.
    ids = clf.backbone.tokenize(texts)
    batch = clf.backbone.collate(ids)
    prompt = model.get_prompt(batch_size=len(texts))
    with torch.no_grad():
        embeds = torch.cat([prompt, base.get_input_embeddings()(batch["input_ids"])], dim=1)
        mask = torch.cat([torch.ones(len(texts), 5, dtype=torch.long), batch["attention_mask"]], dim=1)
        logits = base(inputs_embeds=embeds, attention_mask=mask).logits
    pos = clf.backbone.positions(batch["input_ids"], batch["attention_mask"]) + 5
    vocab = logits[torch.arange(len(texts)), pos].log_softmax(-1)
    ids_matrix, _ = clf.backbone.verbalizer.id_matrix()
    torch.testing.assert_close(got, vocab[:, ids_matrix[:, 0]], atol=1e-5, rtol=1e-5)
    # and the soft prompt changes the scores: the features of the bare model are not reused
    bare = LabelWordClassifier(base, tok, TEMPLATE, LABEL_WORDS, show_progress=False)
    assert not torch.allclose(bare.predict_logits(texts), got)


def test_lora_save_and_load_reproduce_predictions(bpe_tokenizer, sentiment_train, sentiment_test, tmp_path):
    model = get_peft_model(tiny_llama(bpe_tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    clf = LabelWordClassifier(model, bpe_tokenizer, TEMPLATE, LABEL_WORDS, show_progress=False)
    _train(clf, sentiment_train, tmp_path / "run", epochs=3)
    clf.save_pretrained(tmp_path / "saved")
    files = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert "adapter_model.safetensors" in files and "label_word_classifier.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    loaded = LabelWordClassifier.from_pretrained(tiny_llama(bpe_tokenizer), bpe_tokenizer, tmp_path / "saved")
    assert loaded.template.text == TEMPLATE and loaded.classes == ("negative", "positive")
    torch.testing.assert_close(loaded.predict_logits(sentiment_test), clf.predict_logits(sentiment_test))


def test_full_fine_tuning_saves_the_model_with_safetensors(bpe_tokenizer, sentiment_test, tmp_path):
    clf = LabelWordClassifier(tiny_llama(bpe_tokenizer, seed=3), bpe_tokenizer, TEMPLATE, LABEL_WORDS)
    clf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = LabelWordClassifier.from_pretrained(LlamaForCausalLM.from_pretrained(tmp_path), bpe_tokenizer, tmp_path)
    torch.testing.assert_close(loaded.predict_logits(sentiment_test), clf.predict_logits(sentiment_test))


def test_loading_checks_the_settings_file(bpe_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="label_word_classifier.json"):
        LabelWordClassifier.from_pretrained(tiny_llama(bpe_tokenizer), bpe_tokenizer, tmp_path)
    (tmp_path / "label_word_classifier.json").write_text(
        json.dumps({"format_version": 99, "template": TEMPLATE, "label_words": LABEL_WORDS})
    )
    with pytest.raises(ValueError, match="newer peft-dect"):
        LabelWordClassifier.from_pretrained(tiny_llama(bpe_tokenizer), bpe_tokenizer, tmp_path)
    (tmp_path / "label_word_classifier.json").write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        LabelWordClassifier.from_pretrained(tiny_llama(bpe_tokenizer), bpe_tokenizer, tmp_path)


def test_bad_inputs_are_named(bpe_tokenizer):
    model = tiny_llama(bpe_tokenizer)
    with pytest.raises(ValueError, match="mask"):
        LabelWordClassifier(model, bpe_tokenizer, "{text_a} no mask here", LABEL_WORDS)
    clf = LabelWordClassifier(model, bpe_tokenizer, TEMPLATE, LABEL_WORDS)
    with pytest.raises(ValueError, match="label_words does not name"):
        clf.prepare_dataset({"sentence": ["a film"], "label": ["neutral"]})
    with pytest.raises(ValueError, match="empty"):
        clf.predict([])
    with pytest.raises(ValueError, match="input_ids"):
        clf()


def test_interrupted_save_keeps_the_previous_classifier(bpe_tokenizer, sentiment_test, tmp_path, monkeypatch):
    import peft

    target = tmp_path / "clf"
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    good = LabelWordClassifier(get_peft_model(tiny_llama(bpe_tokenizer), lora), bpe_tokenizer, TEMPLATE, LABEL_WORDS)
    good.save_pretrained(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    torch.manual_seed(1)
    other = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    newer = LabelWordClassifier(get_peft_model(tiny_llama(bpe_tokenizer), other), bpe_tokenizer, TEMPLATE, LABEL_WORDS)

    def crash(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(peft.peft_model, "safe_save_file", crash)
    with pytest.raises(OSError, match="No space left"):
        newer.save_pretrained(target)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf"]  # no staging folder left behind
    loaded = LabelWordClassifier.from_pretrained(tiny_llama(bpe_tokenizer), bpe_tokenizer, target)
    torch.testing.assert_close(loaded.predict_logits(sentiment_test), good.predict_logits(sentiment_test))
