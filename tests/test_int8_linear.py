"""The W8A8 linear layer: int8 weights per output channel, inputs quantised per token."""

import math
import warnings

import pytest
import torch
from conftest import tiny_bert, tiny_llama
from test_smoothing import TEXTS, gqa_llama, last_hidden
from torch import nn

from peft_dect.int8_linear import Int8Linear
from peft_dect.quantize import SMOOTH_ALPHA_PER_TOKEN, quantize_int8


def dequantized_reference(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """What the layer computes, in float64: per-channel rounded weights times per-row rounded inputs."""
    w, x = linear.weight.double(), x.double()
    w_step = w.abs().amax(1, keepdim=True) / 127
    x_step = x.abs().amax(-1, keepdim=True) / 127
    out = (torch.round(x / x_step) * x_step) @ (torch.round(w / w_step) * w_step).T
    return out + linear.bias.double() if linear.bias is not None else out


@pytest.mark.parametrize("bias", [True, False])
def test_the_layer_computes_the_rounded_product_exactly(bias):
    torch.manual_seed(0)
    linear = nn.Linear(48, 20, bias=bias)
    x = torch.randn(7, 48) * torch.linspace(0.1, 30, 7)[:, None]  # rows of very different sizes
    layer = Int8Linear.from_linear(linear)
    got = layer(x)
    torch.testing.assert_close(got.double(), dequantized_reference(linear, x), rtol=1e-5, atol=1e-4)
    assert float(nn.functional.cosine_similarity(got, linear(x).detach(), dim=-1).min()) > 0.999


def test_shapes_and_dtypes_follow_the_input():
    torch.manual_seed(0)
    layer = Int8Linear.from_linear(nn.Linear(16, 8))
    x = torch.randn(2, 5, 16)
    assert layer(x).shape == (2, 5, 8) and layer(x).dtype == torch.float32
    out = layer(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), layer(x), rtol=0.02, atol=0.02)
    assert {b.dtype for b in layer.buffers()} == {torch.int8, torch.float32}


def test_a_row_does_not_depend_on_its_neighbours():
    """One scale per token: a massive activation in one row of the batch leaves the other rows' results as they
    are. PyTorch's dynamic quantisation, one scale per input, does not."""
    torch.manual_seed(0)
    linear = nn.Linear(32, 16)
    x, loud = torch.randn(1, 32), torch.randn(1, 32) * 1000
    alone, together = Int8Linear.from_linear(linear)(x), Int8Linear.from_linear(linear)(torch.cat([x, loud]))[:1]
    torch.testing.assert_close(together, alone, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dynamic = torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)
    assert (dynamic(torch.cat([x, loud]))[:1] - dynamic(x)).abs().max() > 0.05


def test_bad_weights_are_refused():
    with pytest.raises(TypeError, match="takes an nn.Linear"):
        Int8Linear.from_linear(nn.Conv1d(2, 2, 1))
    with pytest.raises(TypeError, match="2-D int8 weight"):
        Int8Linear(torch.zeros(4, 3), torch.ones(3))
    with pytest.raises(ValueError, match=r"weight_scale must have shape \(3,\)"):
        Int8Linear(torch.zeros(4, 3, dtype=torch.int8), torch.ones(4))


def test_per_token_quantisation_of_a_model_makes_every_body_layer_int8(bpe_tokenizer):
    model = gqa_llama(bpe_tokenizer, outlier=50.0)
    ref = last_hidden(model, bpe_tokenizer)
    quantized, kept = quantize_int8(model, bpe_tokenizer, TEXTS, activations="per_token")
    assert kept == ["lm_head"]  # no outlier layer by default: the head alone stays float32
    int8 = [n for n, m in quantized.named_modules() if isinstance(m, Int8Linear)]
    assert len(int8) == 14 and not any(type(m) is nn.Linear for n, m in quantized.named_modules() if n in int8)
    cosine = {}
    for name, kwargs in (
        ("per_tensor", dict(outlier_threshold=math.inf)),
        ("per_token", dict(activations="per_token")),
        ("per_token_smoothed", dict(activations="per_token", smooth_alpha=SMOOTH_ALPHA_PER_TOKEN)),
    ):
        got = last_hidden(quantize_int8(model, bpe_tokenizer, TEXTS, **kwargs)[0], bpe_tokenizer)
        cosine[name] = float(nn.functional.cosine_similarity(ref, got, dim=-1).mean())
    assert cosine["per_token"] > cosine["per_tensor"]
    assert cosine["per_token_smoothed"] > 0.995
    torch.testing.assert_close(last_hidden(model, bpe_tokenizer), ref)  # the original is left as it was


def test_an_unknown_activation_scheme_names_the_choices(bpe_tokenizer):
    with pytest.raises(ValueError, match=r"activations must be one of \('per_tensor', 'per_token'\)"):
        quantize_int8(tiny_llama(bpe_tokenizer), bpe_tokenizer, TEXTS, activations="per_row")


def test_a_masked_lm_is_quantised_per_token_without_smoothing(wordpiece_tokenizer):
    """What `peft-dect --int8` does for a model without Llama-style layers (BERT, RoBERTa)."""
    model = tiny_bert(wordpiece_tokenizer).eval()
    quantized, kept = quantize_int8(model, wordpiece_tokenizer, TEXTS, activations="per_token")
    assert any(isinstance(m, Int8Linear) for m in quantized.modules())
    ids = wordpiece_tokenizer(TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        ref, got = model(**ids).logits, quantized(**ids).logits
    assert float(nn.functional.cosine_similarity(ref, got, dim=-1).min()) > 0.99
