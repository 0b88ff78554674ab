"""Hub push and pull, offline: a fake HfApi records uploads; pulls come from a pre-populated local Hub cache."""

import json
import shutil

import huggingface_hub
import numpy as np
import pytest
from conftest import LABEL_WORDS, TEMPLATE, tiny_llama
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

import peft_dect.hub
from peft_dect import DecTConfig


class FakeApi:
    """Records what would be uploaded; `logged_in=False` behaves like a machine without a token."""

    def __init__(self, logged_in=True, **_):
        self.logged_in = logged_in
        self.repos, self.commits = [], []

    def whoami(self):
        if not self.logged_in:
            raise huggingface_hub.errors.LocalTokenNotFoundError("no token")
        return {"name": "user"}

    def create_repo(self, repo_id, **kwargs):
        self.repos.append((repo_id, kwargs))

    def upload_folder(self, folder_path, repo_id, **kwargs):
        files = {p.name: p.read_bytes() for p in sorted(__import__("pathlib").Path(folder_path).iterdir())}
        self.commits.append((repo_id, files, kwargs))


@pytest.fixture
def fake_api(monkeypatch):
    api = FakeApi()
    monkeypatch.setattr(peft_dect.hub, "HfApi", lambda token=None: api)
    return api


def wider_llama(tokenizer):
    """A causal LM with another hidden size than the tiny Llama adapters are made for."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=48,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )


def fitted(tokenizer, words=LABEL_WORDS, data=None):
    from conftest import sentiment_data

    model = get_peft_model(tiny_llama(tokenizer), DecTConfig(template=TEMPLATE, label_words=words))
    model.fit(data or sentiment_data(16, 1), tokenizer=tokenizer, show_progress=False)
    return model


def test_push_uploads_adapter_and_card_in_one_commit(bpe_tokenizer, fake_api):
    model = fitted(bpe_tokenizer)
    url = model.push_to_hub("user/dect-sst2", private=True)
    assert url.endswith("user/dect-sst2")
    assert fake_api.repos == [("user/dect-sst2", {"private": True, "exist_ok": True, "repo_type": "model"})]
    ((repo, files, _),) = fake_api.commits
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
    assert not any(name.endswith((".bin", ".pt")) for name in files)
    pushed = json.loads(files["adapter_config.json"])  # the held-out calibration travels with the adapter
    assert pushed["uncertainty"]["temperature"] == model.base_model.calibration.temperature
    assert b"temperature" in files["README.md"]


def test_push_without_credentials_uploads_nothing(bpe_tokenizer, monkeypatch):
    api = FakeApi(logged_in=False)
    monkeypatch.setattr(peft_dect.hub, "HfApi", lambda token=None: api)
    with pytest.raises(ValueError, match="not logged in.*nothing was uploaded"):
        fitted(bpe_tokenizer).push_to_hub("user/dect-sst2")
    assert api.repos == [] and api.commits == []


@pytest.mark.parametrize("repo_id", ["no-owner", "user/bad name", "a/b/c", "user/-dash-"])
def test_invalid_repo_id(bpe_tokenizer, fake_api, repo_id):
    with pytest.raises(ValueError, match="not a valid Hub repository id"):
        fitted(bpe_tokenizer).push_to_hub(repo_id)
    assert fake_api.commits == []


def _put_in_hub_cache(cache, repo_id, folder, revision="0" * 40):
    """Lay `folder` out as the local Hub cache would hold a download of `repo_id`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_pull_two_task_adapters_onto_one_model(bpe_tokenizer, hub_cache, tmp_path):
    from conftest import sentiment_data

    texts = sentiment_data(10, 3)["sentence"]
    first = fitted(bpe_tokenizer)
    flipped_data = {**sentiment_data(16, 1)}
    flipped_data["label"] = [1 - y for y in flipped_data["label"]]
    second = fitted(bpe_tokenizer, data=flipped_data)
    expected = {"a": first.predict_proba(texts), "b": second.predict_proba(texts)}
    for name, model in (("a", first), ("b", second)):
        model.save_pretrained(tmp_path / name)
        _put_in_hub_cache(hub_cache, f"user/dect-{name}", tmp_path / name)

    alone = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), "user/dect-b")
    np.testing.assert_allclose(alone.predict_proba(texts, tokenizer=bpe_tokenizer), expected["b"], atol=1e-6)
    assert alone.base_model.calibration == second.base_model.calibration

    shared = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), "user/dect-a", adapter_name="a")
    shared.load_adapter("user/dect-b", adapter_name="b")
    for name in ("a", "b", "a"):
        shared.set_adapter(name)
        np.testing.assert_allclose(shared.predict_proba(texts, tokenizer=bpe_tokenizer), expected[name], atol=1e-6)


def test_base_model_name_from_local_folder_and_hub_id(bpe_tokenizer, hub_cache, tmp_path):
    folder = tmp_path / "tiny-llama"
    tiny_llama(bpe_tokenizer).save_pretrained(folder)
    by_folder = get_peft_model(
        AutoModelForCausalLM.from_pretrained(folder), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS)
    )
    assert by_folder.peft_config["default"].base_model_name_or_path == str(folder)
    _put_in_hub_cache(hub_cache, "org/tiny-llama", folder)
    by_id = get_peft_model(
        AutoModelForCausalLM.from_pretrained("org/tiny-llama"), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS)
    )
    assert by_id.peft_config["default"].base_model_name_or_path == "org/tiny-llama"


def test_adapter_for_another_base_model_is_refused_before_prediction(bpe_tokenizer, tmp_path):
    fitted(bpe_tokenizer).save_pretrained(tmp_path)
    wider = wider_llama(bpe_tokenizer)
    with pytest.raises(ValueError, match="hidden size 32 and vocabulary 400, but LlamaForCausalLM has hidden size 48"):
        PeftModel.from_pretrained(wider, tmp_path)


def test_push_an_adapter_with_another_name(bpe_tokenizer, fake_api):
    model = fitted(bpe_tokenizer)
    model.add_adapter("cr", DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    model.set_adapter("cr")
    model.push_to_hub("user/dect-cr")
    ((_, files, _),) = fake_api.commits
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)


def test_load_adapter_for_another_base_model_is_refused(bpe_tokenizer, tmp_path):
    wider = wider_llama(bpe_tokenizer)
    other = get_peft_model(wider, DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    other.save_pretrained(tmp_path)
    model = fitted(bpe_tokenizer)
    with pytest.raises(ValueError, match="hidden size 48"):
        model.load_adapter(str(tmp_path), adapter_name="other")


def test_hub_adapter_with_pickled_weights_only_is_refused(bpe_tokenizer, hub_cache, tmp_path):
    """peft would fall back to adapter_model.bin on the Hub; peft-dect refuses before anything is unpickled."""
    folder = tmp_path / "adapter"
    fitted(bpe_tokenizer).save_pretrained(folder)
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    _put_in_hub_cache(hub_cache, "user/dect-pickle", folder)
    with pytest.raises(ValueError, match="never unpickles adapter_model.bin"):
        PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), "user/dect-pickle")
