"""Prompt tuning with PEFT's PromptTuningConfig: task types, the paper's initialisations, bad input."""

import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE, tiny_bert, tiny_llama
from peft import PeftModel, PeftModelForCausalLM, PeftModelForFeatureExtraction, PromptTuningConfig, get_peft_model

from peft_dect.prompt_tuning import (
    VOCAB_POOL,
    check_prompt_adapter,
    get_prompt_tuning_model,
    init_soft_prompt,
    prompt_tuning_config,
    vocab_pool,
)


def prompt_of(peft_model, name="default"):
    return peft_model.prompt_encoder[name].embedding.weight.detach()


def test_task_type_makes_peft_prepend_the_prompt(lm):
    model, tok, kind = lm
    peft_model = get_prompt_tuning_model(model, tok, label_words=LABEL_WORDS, template=TEMPLATE, num_virtual_tokens=6)
    expected = PeftModelForCausalLM if kind == "causal" else PeftModelForFeatureExtraction
    assert isinstance(peft_model, expected)
    batch = tok(["a dull film"], return_tensors="pt")
    out = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert out.logits.shape[1] == batch["input_ids"].shape[1] + 6  # the prompt is part of the sequence
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable == ["prompt_encoder.default.embedding.weight"]


def test_class_label_init_starts_with_the_label_words(lm):
    model, tok, _ = lm
    words = {"negative": ["bad", "awful"], "positive": ["great"]}
    peft_model = get_prompt_tuning_model(model, tok, label_words=words, template=TEMPLATE, num_virtual_tokens=8)
    emb = peft_model.word_embeddings.weight.detach()
    prompt = prompt_of(peft_model)
    for row, word in enumerate(["bad", "awful", "great"]):
        ids = tok.encode(" " + word, add_special_tokens=False)  # the template has a space before {mask}
        torch.testing.assert_close(prompt[row], emb[ids].mean(0))
    pool = emb[vocab_pool(tok, emb.shape[0])]
    for row in prompt[3:]:  # the rest: embeddings of sampled vocabulary tokens
        assert bool((pool == row).all(-1).any())


def test_multi_token_label_word_gets_the_mean_of_its_tokens(bpe_tokenizer):
    word = "tediously"  # not a single token of the tiny BPE vocabulary
    ids = bpe_tokenizer.encode(" " + word, add_special_tokens=False)
    assert len(ids) > 1
    peft_model = get_prompt_tuning_model(
        tiny_llama(bpe_tokenizer),
        bpe_tokenizer,
        label_words={"negative": [word], "positive": ["great"]},
        template=TEMPLATE,
        num_virtual_tokens=4,
    )
    torch.testing.assert_close(prompt_of(peft_model)[0], peft_model.word_embeddings.weight.detach()[ids].mean(0))


def test_sample_vocab_init_is_seeded(bpe_tokenizer):
    def prompt(seed):
        model = get_prompt_tuning_model(tiny_llama(bpe_tokenizer), bpe_tokenizer, init="sample_vocab", seed=seed)
        return prompt_of(model)

    assert torch.equal(prompt(3), prompt(3)) and not torch.equal(prompt(3), prompt(4))
    model = tiny_llama(bpe_tokenizer)
    pool = model.get_input_embeddings().weight.detach()[vocab_pool(bpe_tokenizer, len(bpe_tokenizer))]
    assert all(bool((pool == row).all(-1).any()) for row in prompt(3))


def test_vocab_pool_skips_special_and_placeholder_tokens(bpe_tokenizer, wordpiece_tokenizer):
    for tok in (bpe_tokenizer, wordpiece_tokenizer):
        pool = vocab_pool(tok, len(tok)).tolist()
        assert 0 < len(pool) <= VOCAB_POOL
        assert not set(pool) & set(tok.all_special_ids)
        assert not any(t.startswith(("[", "<")) and t.endswith(("]", ">")) for t in tok.convert_ids_to_tokens(pool))


def test_random_init_is_on_the_embedding_scale(bpe_tokenizer):
    model = tiny_llama(bpe_tokenizer)
    peft_model = get_prompt_tuning_model(model, bpe_tokenizer, init="random", num_virtual_tokens=50)
    scale = float(peft_model.word_embeddings.weight.std())
    assert float(prompt_of(peft_model).std()) == pytest.approx(scale, rel=0.2)


def test_user_made_peft_model_can_be_initialised(wordpiece_tokenizer):
    model = tiny_bert(wordpiece_tokenizer)
    peft_model = get_peft_model(model, prompt_tuning_config(model, num_virtual_tokens=3))
    assert peft_model.peft_config["default"].task_type == "FEATURE_EXTRACTION"
    init_soft_prompt(peft_model, wordpiece_tokenizer, label_words=LABEL_WORDS, template=TEMPLATE, seed=1)
    emb = peft_model.word_embeddings.weight.detach()
    torch.testing.assert_close(
        prompt_of(peft_model)[:2], emb[wordpiece_tokenizer.convert_tokens_to_ids(["bad", "great"])]
    )
    assert peft_model.prompt_init == {"default": {"init": "class_label", "seed": 1}}


def test_class_label_init_needs_a_prompt_token_per_label_word(bpe_tokenizer):
    words = {"negative": ["bad", "awful", "dull"], "positive": ["great", "fine"]}
    with pytest.raises(ValueError, match="5 label words and only num_virtual_tokens=4"):
        get_prompt_tuning_model(
            tiny_llama(bpe_tokenizer), bpe_tokenizer, label_words=words, template=TEMPLATE, num_virtual_tokens=4
        )


def test_unknown_init_and_non_prompt_adapters_are_refused(bpe_tokenizer):
    with pytest.raises(ValueError, match="init must be one of"):
        get_prompt_tuning_model(tiny_llama(bpe_tokenizer), bpe_tokenizer, init="text")
    from peft import LoraConfig

    lora = get_peft_model(tiny_llama(bpe_tokenizer), LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(TypeError, match="not prompt tuning"):
        init_soft_prompt(lora, bpe_tokenizer, init="sample_vocab")


def test_prompt_adapter_onto_another_embedding_size_is_refused(bpe_tokenizer, tmp_path):
    peft_model = get_prompt_tuning_model(
        tiny_llama(bpe_tokenizer), bpe_tokenizer, label_words=LABEL_WORDS, template=TEMPLATE
    )
    peft_model.save_pretrained(tmp_path)
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**tiny_llama(bpe_tokenizer).config.to_dict(), "hidden_size": 48})
    other = LlamaForCausalLM(cfg)  # same vocabulary, 48-dimensional embeddings
    with pytest.raises(ValueError, match="32-dimensional tokens, but LlamaForCausalLM embeds tokens in 48"):
        check_prompt_adapter(other, tmp_path)
    check_prompt_adapter(tiny_llama(bpe_tokenizer), tmp_path)  # the right base model passes
    assert isinstance(PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path), PeftModelForCausalLM)
    assert isinstance(PromptTuningConfig.from_pretrained(tmp_path), PromptTuningConfig)


# ---------------------------------------------------------------- training as a label-word classifier
def _train(clf, data, tmp_path, epochs=8, lr=0.05):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=8,
        num_train_epochs=epochs,
        learning_rate=lr,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    Trainer(model=clf, args=args, train_dataset=clf.prepare_dataset(data), data_collator=clf.collate).train()


def classifier(model, tok, **kwargs):
    from peft_dect import LabelWordClassifier

    peft_model = get_prompt_tuning_model(model, tok, label_words=LABEL_WORDS, template=TEMPLATE, **kwargs)
    return LabelWordClassifier(peft_model, tok, TEMPLATE, LABEL_WORDS, show_progress=False)


def test_trainer_trains_only_the_soft_prompt(lm, sentiment_train, sentiment_test, tmp_path):
    model, tok, _ = lm
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    clf = classifier(model, tok, num_virtual_tokens=4)
    before_prompt = prompt_of(clf.model).clone()
    before = clf.predict_logits(sentiment_test)
    _train(clf, sentiment_train, tmp_path, epochs=2)
    assert not torch.equal(prompt_of(clf.model), before_prompt)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters())
    assert not torch.allclose(clf.predict_logits(sentiment_test), before)
    metrics = clf.evaluate(sentiment_test)
    proba = clf.predict_proba(sentiment_test["sentence"][:5])
    assert 0.0 <= metrics["accuracy"] <= 1.0 and proba.shape == (5, 2)


def steerable(kind, bpe_tokenizer, wordpiece_tokenizer):
    """A tiny random LM whose output depends on its context: with the usual 0.02 init attention is near uniform and
    tiny, so no soft prompt can move the prediction; 0.2 makes the context matter."""
    from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "causal":
        cfg = LlamaConfig(**{**tiny_llama(bpe_tokenizer).config.to_dict(), "initializer_range": 0.2})
        return LlamaForCausalLM(cfg).eval(), bpe_tokenizer
    cfg = BertConfig(**{**tiny_bert(wordpiece_tokenizer).config.to_dict(), "initializer_range": 0.2})
    return BertForMaskedLM(cfg).eval(), wordpiece_tokenizer


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_training_moves_the_prediction_through_the_prompt(
    kind, bpe_tokenizer, wordpiece_tokenizer, sentiment_train, tmp_path
):
    # Trained on positive examples only, the soft prompt must learn to make the model say "great".
    import torch.nn.functional as F

    model, tok = steerable(kind, bpe_tokenizer, wordpiece_tokenizer)
    clf = classifier(model, tok, num_virtual_tokens=8)
    keep = [i for i, label in enumerate(sentiment_train["label"]) if label == 1]
    positives = {"sentence": [sentiment_train["sentence"][i] for i in keep], "label": [1] * len(keep)}

    def loss():
        return float(F.cross_entropy(clf.predict_logits(positives), torch.ones(len(keep), dtype=torch.long)))

    before = loss()
    _train(clf, positives, tmp_path, epochs=5, lr=0.05)
    assert loss() < before / 4


def test_save_load_reproduce_predictions_and_card_says_method_and_init(lm, sentiment_test, tmp_path):
    from huggingface_hub import ModelCard

    from peft_dect import LabelWordClassifier

    model, tok, _ = lm
    clf = classifier(model, tok, num_virtual_tokens=6, seed=5)
    expected = clf.predict_proba(sentiment_test)
    clf.save_pretrained(tmp_path / "pt")
    loaded = LabelWordClassifier.from_pretrained(rebuild(model, tok), tok, str(tmp_path / "pt"))
    assert abs(loaded.predict_proba(sentiment_test) - expected).max() < 1e-5
    card = ModelCard.load(tmp_path / "pt" / "README.md")
    assert {"prompt-tuning", "peft-dect"} <= set(card.data.tags) and card.data.library_name == "peft"
    assert "prompt tuning" in card.text and "6 virtual tokens" in card.text
    assert "class-label init" in card.text and "(seed 5)" in card.text
    loaded.save_pretrained(tmp_path / "again")  # the init survives a reload
    assert "class-label init" in (tmp_path / "again" / "README.md").read_text()


def rebuild(model, tok):
    from conftest import tiny_roberta

    maker = {"RobertaForMaskedLM": tiny_roberta, "BertForMaskedLM": tiny_bert, "LlamaForCausalLM": tiny_llama}
    return maker[type(model).__name__](tok)


def test_classifier_refuses_a_prompt_of_another_width(bpe_tokenizer, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from peft_dect import LabelWordClassifier

    classifier(tiny_llama(bpe_tokenizer), bpe_tokenizer).save_pretrained(tmp_path)
    cfg = LlamaConfig(**{**tiny_llama(bpe_tokenizer).config.to_dict(), "hidden_size": 48})
    with pytest.raises(ValueError, match="32-dimensional tokens"):
        LabelWordClassifier.from_pretrained(LlamaForCausalLM(cfg), bpe_tokenizer, str(tmp_path))


# ---------------------------------------------------------------- DecT on a prompt-tuned model
def dect_on_prompt(model, tok, sentiment_train):
    from peft_dect import DecTConfig

    prompt_model = get_prompt_tuning_model(model, tok, label_words=LABEL_WORDS, template=TEMPLATE, seed=3)
    dect = get_peft_model(model, DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    dect.use_soft_prompt(prompt_model)
    report = dect.fit(sentiment_train, tokenizer=tok, show_progress=False)
    return prompt_model, dect, report


def test_dect_reads_features_with_the_soft_prompt(lm, sentiment_train, sentiment_test):
    from peft_dect import LabelWordClassifier

    model, tok, _ = lm
    prompt_model, dect, report = dect_on_prompt(model, tok, sentiment_train)
    assert report["model_passes"] == len(sentiment_train["sentence"]) + 1  # its own passes, with the prompt
    # DecT's zero-shot term is the prompt-tuned classifier's prediction, from the same forward pass
    clf = LabelWordClassifier(prompt_model, tok, TEMPLATE, LABEL_WORDS, show_progress=False)
    zero_shot = dect.base_model.zero_shot_logits(sentiment_test, calibrate=False)
    torch.testing.assert_close(zero_shot, clf.predict_logits(sentiment_test).log_softmax(-1), atol=1e-5, rtol=1e-5)
    prompted = dect.base_model.predict_logits(sentiment_test)
    dect.use_soft_prompt(None)  # back to the bare model: other features, and the decoder must be refitted
    assert dect.peft_config["default"].soft_prompt is None
    dect.fit(sentiment_train, show_progress=False)
    assert (dect.base_model.predict_logits(sentiment_test) - prompted).abs().max() > 1e-3


def test_dect_on_prompt_saves_both_and_reloads_the_same_predictions(lm, sentiment_train, sentiment_test, tmp_path):
    from huggingface_hub import ModelCard

    model, tok, _ = lm
    prompt_model, dect, _ = dect_on_prompt(model, tok, sentiment_train)
    expected = dect.predict_proba(sentiment_test)
    dect.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert (tmp_path / "soft_prompt" / "adapter_model.safetensors").is_file()
    assert "soft prompt prepended" in ModelCard.load(tmp_path / "README.md").text
    loaded = PeftModel.from_pretrained(rebuild(model, tok), tmp_path)  # one call brings both back
    assert loaded.peft_config["default"].soft_prompt == "soft_prompt"
    assert abs(loaded.predict_proba(sentiment_test, tokenizer=tok) - expected).max() < 1e-5
    stacked, name = loaded.base_model.soft_prompt_of()
    torch.testing.assert_close(prompt_of(stacked, name), prompt_of(prompt_model))


def test_dect_on_prompt_keeps_training_the_decoder_after_loading(bpe_tokenizer, sentiment_train, tmp_path):
    model = tiny_llama(bpe_tokenizer)
    _, dect, _ = dect_on_prompt(model, bpe_tokenizer, sentiment_train)
    dect.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path, is_trainable=True)
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable and all(".dect_W." in n or ".dect_radii." in n for n in trainable)


def test_dect_refuses_a_prompt_model_on_another_base(bpe_tokenizer):
    from peft_dect import DecTConfig

    prompt_model = get_prompt_tuning_model(tiny_llama(bpe_tokenizer), bpe_tokenizer, init="sample_vocab")
    dect = get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    with pytest.raises(ValueError, match="same base model object"):
        dect.use_soft_prompt(prompt_model)
    with pytest.raises(TypeError, match="Expected a PEFT prompt-tuning model"):
        dect.use_soft_prompt(tiny_llama(bpe_tokenizer))


# ---------------------------------------------------------------- ensembles
def ensemble_of(model, tok, lengths=(4, 4, 4), combine="mean"):
    from peft_dect import LabelWordClassifier
    from peft_dect.prompt_tuning import PromptEnsemble

    peft_model = model
    for i, length in enumerate(lengths):
        peft_model = get_prompt_tuning_model(
            peft_model,
            tok,
            label_words=LABEL_WORDS,
            template=TEMPLATE,
            init="sample_vocab" if i else "class_label",
            num_virtual_tokens=length,
            seed=i,
            adapter_name=f"m{i}",
        )
    clf = LabelWordClassifier(peft_model, tok, TEMPLATE, LABEL_WORDS, show_progress=False)
    return clf, PromptEnsemble(clf, combine=combine)


def test_ensemble_members_score_as_each_prompt_alone_in_one_pass(lm, sentiment_test):
    model, tok, _ = lm
    clf, ensemble = ensemble_of(model, tok)
    base = clf.model.get_base_model()
    body = clf.backbone.head_split[0] if clf.backbone.head_split is not None else base
    calls = []
    hook = body.register_forward_hook(lambda module, args, kwargs, out: calls.append(1), with_kwargs=True)
    try:
        scores = ensemble.member_log_probs(sentiment_test, batch_size=64)
    finally:
        hook.remove()
    assert len(calls) == 1 and scores.shape == (3, 50, 2)  # 3 prompts x 50 inputs: one forward pass
    for i, name in enumerate(ensemble.adapter_names):
        clf.model.set_adapter(name)
        torch.testing.assert_close(scores[i], clf.predict_logits(sentiment_test), atol=1e-5, rtol=1e-5)
    mean = torch.softmax(scores, -1).mean(0)
    torch.testing.assert_close(torch.from_numpy(ensemble.predict_proba(sentiment_test)), mean)
    assert ensemble.predict(sentiment_test) == [clf.classes[i] for i in mean.argmax(-1).tolist()]
    metrics = ensemble.evaluate(sentiment_test)
    assert set(metrics["member_accuracy"]) == {"m0", "m1", "m2"}


def test_ensemble_of_prompts_of_different_lengths(bpe_tokenizer, sentiment_test):
    clf, ensemble = ensemble_of(tiny_llama(bpe_tokenizer), bpe_tokenizer, lengths=(2, 5, 2))
    scores = ensemble.member_log_probs(sentiment_test)
    clf.model.set_adapter("m1")
    torch.testing.assert_close(scores[1], clf.predict_logits(sentiment_test), atol=1e-5, rtol=1e-5)


def test_majority_vote(bpe_tokenizer, sentiment_test):
    _, ensemble = ensemble_of(tiny_llama(bpe_tokenizer), bpe_tokenizer, combine="vote")
    scores = ensemble.member_log_probs(sentiment_test)
    votes = torch.nn.functional.one_hot(scores.argmax(-1), 2).sum(0)
    predicted = ensemble.predict_logits(sentiment_test).argmax(-1)
    assert bool((votes.gather(1, predicted[:, None]).squeeze(1) >= 2).all())  # 3 voters, 2 classes: the majority


def test_ensemble_save_and_load(lm, sentiment_test, tmp_path):
    from peft_dect.prompt_tuning import PromptEnsemble

    model, tok, _ = lm
    _, ensemble = ensemble_of(model, tok)
    expected = ensemble.predict_proba(sentiment_test)
    ensemble.save_pretrained(str(tmp_path))
    assert all((tmp_path / name / "adapter_model.safetensors").is_file() for name in ("m0", "m1", "m2"))
    assert "class-label init" in (tmp_path / "m0" / "README.md").read_text()
    loaded = PromptEnsemble.from_pretrained(rebuild(model, tok), tok, str(tmp_path))
    assert loaded.adapter_names == ["m0", "m1", "m2"]
    assert abs(loaded.predict_proba(sentiment_test) - expected).max() < 1e-5
    # a member alone is an ordinary saved classifier
    from peft_dect import LabelWordClassifier

    alone = LabelWordClassifier.from_pretrained(rebuild(model, tok), tok, str(tmp_path / "m1"), show_progress=False)
    assert alone.predict_proba(sentiment_test).shape == expected.shape


@pytest.mark.parametrize(
    "change, message",
    [
        ({"template": "{text_a} Overall it was {mask}."}, "differs .* in template"),
        ({"label_words": {"negative": ["awful"], "positive": ["great"]}}, "differs .* in label_words"),
    ],
)
def test_ensemble_members_must_share_template_and_label_words(bpe_tokenizer, tmp_path, change, message):
    from peft_dect import LabelWordClassifier
    from peft_dect.prompt_tuning import PromptEnsemble

    words = change.get("label_words", LABEL_WORDS)
    template = change.get("template", TEMPLATE)
    for name, (t, w) in {"a": (TEMPLATE, LABEL_WORDS), "b": (template, words)}.items():
        peft_model = get_prompt_tuning_model(
            tiny_llama(bpe_tokenizer), bpe_tokenizer, label_words=w, template=t, num_virtual_tokens=4
        )
        LabelWordClassifier(peft_model, bpe_tokenizer, t, w).save_pretrained(str(tmp_path / name))
    with pytest.raises(ValueError, match=message):
        PromptEnsemble.from_pretrained(tiny_llama(bpe_tokenizer), bpe_tokenizer, [tmp_path / "a", tmp_path / "b"])


def test_ensemble_refuses_non_prompt_members_and_bad_combine(bpe_tokenizer):
    from peft import LoraConfig

    from peft_dect import LabelWordClassifier
    from peft_dect.prompt_tuning import PromptEnsemble

    clf, _ = ensemble_of(tiny_llama(bpe_tokenizer), bpe_tokenizer)
    with pytest.raises(ValueError, match="combine must be one of"):
        PromptEnsemble(clf, combine="median")
    with pytest.raises(ValueError, match="no adapter 'nope'"):
        PromptEnsemble(clf, ["m0", "nope"])
    lora = get_peft_model(tiny_llama(bpe_tokenizer), LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(TypeError, match="not prompt tuning"):
        PromptEnsemble(LabelWordClassifier(lora, bpe_tokenizer, TEMPLATE, LABEL_WORDS))


def test_dect_on_prompt_pushes_the_soft_prompt_with_the_adapter(bpe_tokenizer, sentiment_train, monkeypatch):
    from pathlib import Path

    import peft_dect.hub

    uploaded = {}

    class Api:
        def __init__(self, token=None):
            pass

        def whoami(self):
            return {"name": "user"}

        def create_repo(self, repo_id, **kwargs):
            pass

        def upload_folder(self, folder_path, repo_id, **kwargs):
            root = Path(folder_path)
            uploaded.update({str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()})

    monkeypatch.setattr(peft_dect.hub, "HfApi", Api)
    _, dect, _ = dect_on_prompt(tiny_llama(bpe_tokenizer), bpe_tokenizer, sentiment_train)
    dect.push_to_hub("user/dect-on-prompt")
    assert {"adapter_model.safetensors", "soft_prompt/adapter_model.safetensors", "README.md"} <= set(uploaded)
    assert b"soft prompt prepended" in uploaded["README.md"]
