"""int8 backbones: PyTorch's dynamic quantisation of the linear layers, outlier layers and the LM head kept float32."""

import math

import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE, sentiment_data, tiny_llama
from peft import get_peft_model
from torch import nn

from peft_dect import DecTConfig
from peft_dect.quantize import input_absmax, quantize_int8


TEXTS = ["a gripping , funny film", "the plot is thin and the acting worse", "it was fine"]


def linear_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if type(m) is nn.Linear}


def test_layers_over_the_threshold_and_the_head_stay_float32(bpe_tokenizer):
    model = tiny_llama(bpe_tokenizer).eval()
    absmax = input_absmax(model, bpe_tokenizer, TEXTS)
    head = next(n for n, m in model.named_modules() if m is model.get_output_embeddings())
    body = sorted(v for n, v in absmax.items() if n != head)
    threshold = (body[len(body) // 2] + body[len(body) // 2 + 1]) / 2  # between two measured values
    quantized, kept = quantize_int8(model, bpe_tokenizer, TEXTS, outlier_threshold=threshold)
    expected = {n for n, v in absmax.items() if v > threshold} | {head}
    assert set(kept) == expected and linear_names(quantized) == expected
    assert 0 < len(expected) < len(absmax)
    assert linear_names(model) == set(absmax)  # the original is left as it was


def test_without_outliers_every_body_layer_is_int8_and_features_stay_close(bpe_tokenizer):
    model = tiny_llama(bpe_tokenizer).eval()
    quantized, kept = quantize_int8(model, bpe_tokenizer, TEXTS, outlier_threshold=math.inf)
    assert len(kept) == 1  # the LM head
    ids = bpe_tokenizer(TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        ref = model(**ids, output_hidden_states=True).hidden_states[-1]
        got = quantized(**ids, output_hidden_states=True).hidden_states[-1]
    assert not torch.equal(ref, got)
    assert float(torch.nn.functional.cosine_similarity(ref, got, dim=-1).min()) > 0.95


@pytest.mark.parametrize("settings", [{}, {"activations": "per_token"}])
def test_dect_fits_and_predicts_on_an_int8_model(bpe_tokenizer, settings):
    model = tiny_llama(bpe_tokenizer).eval()
    train, test = sentiment_data(8, 1), sentiment_data(10, 2)
    quantized, _ = quantize_int8(model, bpe_tokenizer, list(train["sentence"][:8]), **settings)
    results = {}
    for name, base in (("float32", model), ("int8", quantized)):
        config = DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, budget=1)  # one prompt on both paths
        peft_model = get_peft_model(base, config)
        peft_model.fit(train, bpe_tokenizer, show_progress=False)
        results[name] = peft_model.predict_proba(test, bpe_tokenizer)
    assert results["int8"].shape == (20, 2)  # 10 per class
    assert abs(results["int8"] - results["float32"]).max() < 0.2


@pytest.mark.parametrize(
    "texts, threshold, message",
    [([], 20.0, "calibration texts"), ("one text", 20.0, "calibration texts"), (TEXTS, 0.0, "positive number")],
)
def test_bad_arguments_name_the_fix(bpe_tokenizer, texts, threshold, message):
    with pytest.raises(ValueError, match=message):
        quantize_int8(tiny_llama(bpe_tokenizer), bpe_tokenizer, texts, outlier_threshold=threshold)


def test_a_bfloat16_model_is_refused(bpe_tokenizer):
    with pytest.raises(ValueError, match="float32 models on the CPU"):
        quantize_int8(tiny_llama(bpe_tokenizer).to(torch.bfloat16), bpe_tokenizer, TEXTS)


def test_a_head_wrapped_by_a_dect_adapter_stays_float32(bpe_tokenizer):
    """`get_peft_model` wraps the base model's LM head in place; quantising that model afterwards keeps the linear
    layer inside the wrapper in float32, and a new DecT adapter goes onto the int8 copy."""
    model = tiny_llama(bpe_tokenizer).eval()
    get_peft_model(model, DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    quantized, kept = quantize_int8(model, bpe_tokenizer, TEXTS, outlier_threshold=math.inf)
    assert kept == ["lm_head.base_layer"] and linear_names(quantized) == {"lm_head.base_layer"}
    peft_model = get_peft_model(quantized, DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, budget=1))
    train = sentiment_data(8, 1)
    peft_model.fit(train, bpe_tokenizer, show_progress=False)
    assert peft_model.predict_proba(sentiment_data(2, 2), bpe_tokenizer).shape == (4, 2)
