"""SmoothQuant for int8 backbones: folding per-channel factors leaves the float model unchanged and the int8 one
closer to it."""

import pytest
import torch
from conftest import tiny_bert
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from peft_dect.quantize import SMOOTH_ALPHA, quantize_int8
from peft_dect.smoothing import channel_absmax, decoder_layers, smooth


TEXTS = ["a gripping , funny film", "the plot is thin and the acting worse", "it was fine"]


def gqa_llama(tokenizer, outlier: float = 1.0) -> LlamaForCausalLM:
    """A tiny Llama with grouped-query attention (4 query heads on 2 key/value heads); `outlier` > 1 makes input
    channel 3 of every layer's attention and MLP projections that many times larger by an exact rescaling (the norm's
    weight up, the projections' column down), as the outlier channels of real models are."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for norm, projs in (
                (layer.input_layernorm, (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)),
                (layer.post_attention_layernorm, (layer.mlp.gate_proj, layer.mlp.up_proj)),
            ):
                norm.weight[3] *= outlier
                for proj in projs:
                    proj.weight[:, 3] /= outlier
    return model


def last_hidden(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**tokenizer(t, return_tensors="pt"), output_hidden_states=True).hidden_states[-1][0]
                          for t in TEXTS])  # fmt: skip


def test_smoothing_keeps_the_float_model_and_flattens_the_inputs(bpe_tokenizer):
    model = gqa_llama(bpe_tokenizer, outlier=50.0)
    before, absmax = last_hidden(model, bpe_tokenizer), channel_absmax(model, bpe_tokenizer, TEXTS)
    assert len(decoder_layers(model)) == 2
    assert smooth(model, bpe_tokenizer, TEXTS, SMOOTH_ALPHA) == 2
    torch.testing.assert_close(last_hidden(model, bpe_tokenizer), before, rtol=1e-4, atol=1e-4)
    after = channel_absmax(model, bpe_tokenizer, TEXTS)
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.gate_proj", "model.layers.0.mlp.down_proj",
                 "model.layers.1.self_attn.o_proj"):  # fmt: skip
        ratio = lambda a: float(a.max() / a.median())  # noqa: E731
        assert ratio(after[name]) < ratio(absmax[name])


def test_smoothed_int8_is_closer_to_float32_on_an_outlier_channel(bpe_tokenizer):
    model = gqa_llama(bpe_tokenizer, outlier=50.0)
    ref = last_hidden(model, bpe_tokenizer)
    cosine = {}
    for alpha in (None, SMOOTH_ALPHA):
        quantized, kept = quantize_int8(
            model, bpe_tokenizer, TEXTS, outlier_threshold=float("inf"), smooth_alpha=alpha
        )
        assert len(kept) == 1  # the LM head alone
        got = last_hidden(quantized, bpe_tokenizer)
        cosine[alpha] = float(nn.functional.cosine_similarity(ref, got, dim=-1).mean())
    assert cosine[SMOOTH_ALPHA] > cosine[None] and cosine[SMOOTH_ALPHA] > 0.99
    torch.testing.assert_close(last_hidden(model, bpe_tokenizer), ref)  # the original is left as it was


@pytest.mark.parametrize("alpha", [-0.1, 1.5, True, "0.5"])
def test_a_bad_alpha_names_the_range(bpe_tokenizer, alpha):
    with pytest.raises(ValueError, match=r"smooth_alpha must be a number in \[0, 1\]"):
        quantize_int8(gqa_llama(bpe_tokenizer), bpe_tokenizer, TEXTS, smooth_alpha=alpha)


def test_a_model_without_llama_layers_is_refused(wordpiece_tokenizer):
    with pytest.raises(ValueError, match="Llama-style decoder layers"):
        quantize_int8(tiny_bert(wordpiece_tokenizer), wordpiece_tokenizer, TEXTS, smooth_alpha=SMOOTH_ALPHA)


def test_norms_that_do_not_fold_are_refused(bpe_tokenizer):
    """Gemma's RMSNorm scales by 1 + weight: a factor divided into its weight does not cancel."""
    from transformers import GemmaConfig, GemmaForCausalLM

    torch.manual_seed(0)
    pad = bpe_tokenizer.pad_token_id
    cfg = GemmaConfig(vocab_size=len(bpe_tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, pad_token_id=pad)  # fmt: skip
    model = GemmaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight.normal_(0, 0.5)
            layer.post_attention_layernorm.weight.normal_(0, 0.5)
    with pytest.raises(ValueError, match="norms do not fold"):
        quantize_int8(model, bpe_tokenizer, TEXTS, smooth_alpha=SMOOTH_ALPHA)
