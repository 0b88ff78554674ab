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
