"""DecT as a PEFT method, on tiny masked (RoBERTa/BPE, BERT/WordPiece) and causal (Llama/BPE) LMs."""

import json
import os

import numpy as np
import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE, tiny_bert, tiny_llama, tiny_roberta
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

import peft_dect  # noqa: F401  (registers DecT with peft)
from peft_dect import DecTConfig, PeftModelForFewShotClassification
from peft_dect.dect.layer import DecTLayer


def rebuild(model, tokenizer):
    """A fresh copy of the same tiny base model (same seed), as a user would load it again."""
    name = type(model).__name__
    maker = {"RobertaForMaskedLM": tiny_roberta, "BertForMaskedLM": tiny_bert, "LlamaForCausalLM": tiny_llama}[name]
    return maker(tokenizer)


def make(lm, **kwargs):
    model, tok, _ = lm
    # budget=1: the template alone, whose model passes these tests count (prompt candidates: test_prompt_search.py)
    cfg = DecTConfig(**{"template": TEMPLATE, "label_words": LABEL_WORDS, "budget": 1, **kwargs})
    return get_peft_model(model, cfg), tok


def test_get_peft_model_returns_few_shot_classifier(lm):
    peft_model, _ = make(lm)
    assert isinstance(peft_model, PeftModelForFewShotClassification)
    assert isinstance(peft_model.get_base_model().get_output_embeddings(), DecTLayer)


def test_only_decoder_parameters_train(lm):
    peft_model, _ = make(lm)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".dect_W." in n or ".dect_radii." in n for n in trainable)
    hidden = lm[0].config.hidden_size
    assert sum(p.numel() for n, p in peft_model.named_parameters() if p.requires_grad) == 128 * hidden + 2


def test_fit_predict_predict_proba(lm, sentiment_train, sentiment_test):
    peft_model, tok = make(lm)
    report = peft_model.fit(sentiment_train, tokenizer=tok, show_progress=False)
    assert report["model_passes"] == len(sentiment_train["sentence"]) + 1  # + the content-free input
    preds = peft_model.predict(sentiment_test["sentence"][:7])
    assert len(preds) == 7 and set(preds) <= {"negative", "positive"}
    proba = peft_model.predict_proba(sentiment_test["sentence"][:7])
    assert proba.shape == (7, 2) and np.allclose(proba.sum(1), 1.0, atol=1e-5)
    assert [("negative", "positive")[i] for i in proba.argmax(1)] == preds


def test_causal_decoder_learns_the_synthetic_task(bpe_tokenizer, sentiment_train, sentiment_test):
    peft_model = get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    peft_model.fit(sentiment_train, tokenizer=bpe_tokenizer, show_progress=False)
    assert peft_model.evaluate(sentiment_train)["accuracy"] >= 0.9
    assert peft_model.evaluate(sentiment_test)["accuracy"] >= 0.75


def test_refit_with_other_settings_runs_no_model_pass(lm, sentiment_train):
    peft_model, tok = make(lm, mode="faithful")
    peft_model.fit(sentiment_train, tokenizer=tok, show_progress=False)
    cfg = peft_model.peft_config["default"]
    for lam, epochs, seed in [(0.5, 10, 1), (2.0, 50, 2)]:
        cfg.lam, cfg.epochs, cfg.seed = lam, epochs, seed
        report = peft_model.fit(sentiment_train, show_progress=False)
        assert report["model_passes"] == 0
        assert report["lam"] == lam
    cfg.mode = "auto"
    assert peft_model.fit(sentiment_train, show_progress=False)["model_passes"] == 0


def test_save_and_load_give_identical_predictions(lm, sentiment_train, sentiment_test, tmp_path):
    peft_model, tok = make(lm)
    peft_model.fit(sentiment_train, tokenizer=tok, show_progress=False)
    before = peft_model.predict_proba(sentiment_test["sentence"])
    peft_model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert all("dect_" in k for k in tensors), sorted(tensors)

    loaded = PeftModel.from_pretrained(rebuild(lm[0], tok), tmp_path)
    assert isinstance(loaded, PeftModelForFewShotClassification)
    after = loaded.predict_proba(sentiment_test["sentence"], tokenizer=tok)
    np.testing.assert_allclose(after, before, atol=1e-6)
    assert PeftConfig.from_pretrained(tmp_path).label_words == LABEL_WORDS


def test_disable_adapter_and_unfitted_model_give_calibrated_zero_shot(lm, sentiment_train, sentiment_test):
    peft_model, tok = make(lm)
    zero_shot = peft_model.predict_proba(sentiment_test["sentence"], tokenizer=tok)
    bb = peft_model.base_model.backbone()
    feats = bb.extract(sentiment_test["sentence"])
    cf = bb.extract([""]).label_logits
    expected = torch.softmax(feats.label_logits - cf, -1).numpy()
    np.testing.assert_allclose(zero_shot, expected, atol=1e-5)

    peft_model.fit(sentiment_train, show_progress=False)
    assert not np.allclose(peft_model.predict_proba(sentiment_test["sentence"]), expected, atol=1e-4)
    with peft_model.disable_adapter():
        np.testing.assert_allclose(peft_model.predict_proba(sentiment_test["sentence"]), expected, atol=1e-5)


def test_calibration_can_be_switched_off(lm, sentiment_test):
    peft_model, tok = make(lm, calibrate=False)
    bb = peft_model.base_model.backbone(tok)
    feats = bb.extract(sentiment_test["sentence"])
    expected = torch.softmax(feats.label_logits, -1).numpy()
    np.testing.assert_allclose(peft_model.predict_proba(sentiment_test["sentence"]), expected, atol=1e-5)


def test_faithful_mode_uses_paper_defaults(lm, sentiment_train):
    peft_model, tok = make(lm, mode="faithful")
    report = peft_model.fit(sentiment_train, tokenizer=tok, show_progress=False)
    assert report["lam"] == pytest.approx(1 / 16)
    assert report["calibrate"] is True
    state = peft_model.base_model.dect_layer.state("default")
    assert state.lam == pytest.approx(1 / 16) and state.fitted


def test_auto_mode_with_eval_dataset_reports_choice(lm, sentiment_train, sentiment_test):
    peft_model, tok = make(lm)
    report = peft_model.fit(sentiment_train, tokenizer=tok, eval_dataset=sentiment_test, show_progress=False)
    assert report["mode"] == "auto" and report["selected_on"] == "4-fold cross-validation and eval_dataset"
    assert report["epochs"] in (30, 60) and isinstance(report["calibrate"], bool)
    assert report["model_passes"] == len(sentiment_train["sentence"]) + len(sentiment_test["sentence"]) + 1


def test_sentence_pairs(lm):
    peft_model, tok = make(
        lm, template="{text_a} Question: {text_b} Answer: {mask}", label_words={"no": ["bad"], "yes": ["great"]}
    )
    data = {
        "sentence1": ["a film", "a movie", "the plot", "the story"] * 2,
        "sentence2": ["it was fun", "it was dull", "very good", "very bad"] * 2,
        "label": [1, 0, 1, 0] * 2,
    }
    peft_model.fit(data, tokenizer=tok, show_progress=False)
    assert len(peft_model.predict([("a film", "it was fun"), ("x", "y")])) == 2


def test_several_classes_and_label_words(lm):
    words = {"neg": ["bad", "awful"], "neu": ["fine"], "pos": ["great", "good"]}
    peft_model, tok = make(lm, label_words=words)
    data = {
        "text": ["bad film", "fine film", "great film", "awful film", "fine plot", "good plot"],
        "label": ["neg", "neu", "pos", "neg", "neu", "pos"],
    }
    peft_model.fit(data, tokenizer=tok, show_progress=False)
    assert peft_model.predict_proba(["a film"]).shape == (1, 3)


def test_several_adapters_on_one_model(lm, sentiment_train, sentiment_test, tmp_path):
    peft_model, tok = make(lm)
    peft_model.fit(sentiment_train, tokenizer=tok, show_progress=False)
    first = peft_model.predict_proba(sentiment_test["sentence"])
    peft_model.add_adapter("flipped", DecTConfig(template=TEMPLATE, label_words={"pos": ["great"], "neg": ["bad"]}))
    peft_model.set_adapter("flipped")
    flipped = {
        "sentence": sentiment_train["sentence"],
        "label": ["neg" if y == 0 else "pos" for y in sentiment_train["label"]],
    }
    peft_model.fit(flipped, show_progress=False)
    assert peft_model.predict_proba(sentiment_test["sentence"]).shape == (50, 2)
    peft_model.set_adapter("default")
    np.testing.assert_allclose(peft_model.predict_proba(sentiment_test["sentence"]), first, atol=1e-6)


def test_feature_cache_on_disk_is_reused(lm, sentiment_train, tmp_path):
    peft_model, tok = make(lm)
    first = peft_model.fit(sentiment_train, tokenizer=tok, cache_dir=tmp_path, show_progress=False)
    assert first["model_passes"] > 0 and list(tmp_path.glob("features-*.safetensors"))
    again, tok2 = make((rebuild(lm[0], tok), tok, lm[2]))
    second = again.fit(sentiment_train, tokenizer=tok2, cache_dir=tmp_path, show_progress=False)
    assert second["model_passes"] == 0
    np.testing.assert_allclose(again.predict_proba(["a film"]), peft_model.predict_proba(["a film"]), atol=1e-6)


def test_adapter_config_is_plain_json(lm, sentiment_train, tmp_path):
    peft_model, tok = make(lm)
    peft_model.fit(sentiment_train, tokenizer=tok, show_progress=False)
    peft_model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "DECT" and cfg["task_type"] == "FEW_SHOT_CLS" and cfg["template"] == TEMPLATE


def test_albert_whose_hidden_size_differs_from_its_embeddings(wordpiece_tokenizer, sentiment_train):
    from transformers import AlbertConfig, AlbertForMaskedLM

    torch.manual_seed(0)
    albert = AlbertForMaskedLM(
        AlbertConfig(
            vocab_size=len(wordpiece_tokenizer),
            embedding_size=16,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
        )
    )
    model = get_peft_model(albert.eval(), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    model.fit(sentiment_train, tokenizer=wordpiece_tokenizer, show_progress=False)
    assert model.predict_proba(["a film"]).shape == (1, 2)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "adapter_model.safetensors").unlink(), "has no adapter_model.safetensors"),
        (lambda d: (d / "adapter_model.safetensors").rename(d / "adapter_model.bin"), "is a pickle"),
        (lambda d: (d / "adapter_model.safetensors").write_bytes(b"\\x00" * 64), "not a valid safetensors file"),
    ],
    ids=["missing", "pickle-only", "corrupt"],
)
def test_damaged_adapter_folders_are_refused(bpe_tokenizer, sentiment_train, tmp_path, damage, message):
    model = get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    model.fit(sentiment_train, tokenizer=bpe_tokenizer, show_progress=False)
    model.save_pretrained(tmp_path)
    damage(tmp_path)
    with pytest.raises(ValueError, match=message):
        PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)


def test_tensors_of_the_wrong_shape_are_refused(bpe_tokenizer, sentiment_train, tmp_path):
    from safetensors.torch import save_file

    model = get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    key = next(k for k in tensors if "dect_W" in k)
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="do not fit this adapter's shapes"):
        PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)


def test_weights_of_another_method_are_refused(bpe_tokenizer, tmp_path):
    from safetensors.torch import save_file

    model = get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    model.save_pretrained(tmp_path)
    save_file({"base_model.model.lm_head.lora_A.weight": torch.zeros(2, 2)}, tmp_path / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="come from different adapters"):
        PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)


def test_fit_shows_the_decoders_progress_with_show_progress(bpe_tokenizer, sentiment_train, capsys):
    """fit(show_progress=True) shows the decoder's epochs beside the extraction's batches; False silences both."""
    peft_model = get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    peft_model.fit(sentiment_train, tokenizer=bpe_tokenizer, show_progress=False)
    assert "decoder" not in capsys.readouterr().err
    peft_model.fit(sentiment_train, tokenizer=bpe_tokenizer, show_progress=True)
    assert "decoder" in capsys.readouterr().err
