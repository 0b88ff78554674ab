"""Adapters saved in adapter format 1.0 (tests/fixtures/format1) load and predict as when they were saved."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_llama, tiny_roberta
from peft import PeftModel

import peft_dect  # noqa: F401  (registers DecT with peft)
from peft_dect import LabelWordClassifier
from peft_dect.lmbff import LMBFFModel


FIXTURES = Path(__file__).parent / "fixtures" / "format1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
TEXTS = EXPECTED["texts"]


@pytest.fixture
def folder(request, tmp_path):
    """A writable copy of one fixture folder (loading must not need to write, but saving it again may)."""
    target = tmp_path / request.param
    shutil.copytree(FIXTURES / request.param, target)
    return target


def expected(name):
    return np.array(EXPECTED["probabilities"][name])


@pytest.mark.parametrize(
    "folder,base", [("dect_llama", tiny_llama), ("dect_demos_roberta", tiny_roberta)], indirect=["folder"]
)
def test_dect_adapters_of_format_1_predict_as_saved(folder, base, bpe_tokenizer):
    model = PeftModel.from_pretrained(base(bpe_tokenizer), folder)
    np.testing.assert_allclose(model.predict_proba(TEXTS, tokenizer=bpe_tokenizer), expected(folder.name), atol=1e-6)


@pytest.mark.parametrize("folder", ["dect_soft_prompt"], indirect=True)
def test_dect_on_a_soft_prompt_of_format_1_predicts_as_saved(folder, bpe_tokenizer):
    model = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), folder)
    np.testing.assert_allclose(model.predict_proba(TEXTS, tokenizer=bpe_tokenizer), expected(folder.name), atol=1e-6)


@pytest.mark.parametrize("folder", ["dect_llama", "dect_demos_roberta"], indirect=True)
def test_a_format_1_dect_adapter_saves_again_and_reloads(folder, bpe_tokenizer, tmp_path):
    base = tiny_roberta if "roberta" in folder.name else tiny_llama
    model = PeftModel.from_pretrained(base(bpe_tokenizer), folder)
    model.save_pretrained(tmp_path / "again")
    again = PeftModel.from_pretrained(base(bpe_tokenizer), tmp_path / "again")
    np.testing.assert_allclose(again.predict_proba(TEXTS, tokenizer=bpe_tokenizer), expected(folder.name), atol=1e-6)


@pytest.mark.parametrize("folder", ["lmbff_lora"], indirect=True)
def test_an_lmbff_lora_save_of_format_1_predicts_as_saved(folder, bpe_tokenizer):
    model = LMBFFModel.from_pretrained(str(folder), base_model=tiny_llama(bpe_tokenizer), tokenizer=bpe_tokenizer)
    np.testing.assert_allclose(model.predict_proba(TEXTS), expected("lmbff_lora"), atol=1e-6)


@pytest.mark.parametrize("folder", ["prompt_tuning"], indirect=True)
def test_a_prompt_tuned_classifier_of_format_1_predicts_as_saved(folder, bpe_tokenizer):
    classifier = LabelWordClassifier.from_pretrained(tiny_llama(bpe_tokenizer), bpe_tokenizer, str(folder))
    np.testing.assert_allclose(classifier.predict_proba(TEXTS), expected("prompt_tuning"), atol=1e-6)
