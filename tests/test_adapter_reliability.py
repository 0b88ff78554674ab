"""Issue 15: adapter files must not unpickle, read outside their folder, allocate before checking, mix two saves or
give NaN answers silently; in-place config changes and dtype moves must work or fail clearly."""

import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE, sentiment_data, tiny_llama
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

import peft_dect.dect.layer
from peft_dect import DecTConfig
from peft_dect.hub import push_adapter_folder
from peft_dect.peft_model import PeftModelForFewShotClassification
from peft_dect.saving import staged_folder


TEXTS = ["a gorgeous , moving film", "a dull , tedious film"]


def fitted(tok, flip=False, **config):
    # budget=1: the template alone, whose model passes these tests count (prompt candidates: test_prompt_search.py)
    config = {"template": TEMPLATE, "label_words": LABEL_WORDS, "budget": 1, **config}
    model = get_peft_model(tiny_llama(tok), DecTConfig(**config))
    data = sentiment_data(8, 1)
    if flip:
        data["label"] = [1 - y for y in data["label"]]
    model.fit(data, tokenizer=tok, show_progress=False)
    return model


def rewrite_config(folder, **changes):
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


# ---------------------------------------------------------------- 3: task_type edits
@pytest.mark.parametrize("task_type", ["SEQ_CLS", "FEATURE_EXTRACTION", "CAUSAL_LM"])
def test_edited_task_type_still_loads_through_the_checks(bpe_tokenizer, tmp_path, monkeypatch, task_type):
    model = fitted(bpe_tokenizer)
    model.save_pretrained(tmp_path / "ok")
    rewrite_config(tmp_path / "ok", task_type=task_type)
    loaded = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path / "ok")
    assert isinstance(loaded, PeftModelForFewShotClassification)
    np.testing.assert_array_equal(loaded.predict_proba(TEXTS, tokenizer=bpe_tokenizer), model.predict_proba(TEXTS))

    pickled = tmp_path / "pickled"
    shutil.copytree(tmp_path / "ok", pickled)
    torch.save(load_file(pickled / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called on an adapter file")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(ValueError, match="adapter_model.bin is a pickle, which peft-dect never loads"):
        PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), pickled)


# ---------------------------------------------------------------- 4: paths outside the adapter folder
@pytest.mark.parametrize("soft_prompt", ["../elsewhere", "/tmp", "soft_prompt/../../elsewhere"])
def test_soft_prompt_outside_the_adapter_folder_is_refused(bpe_tokenizer, tmp_path, soft_prompt):
    (tmp_path / "elsewhere").mkdir()
    fitted(bpe_tokenizer).save_pretrained(tmp_path / "adapter")
    rewrite_config(tmp_path / "adapter", soft_prompt=soft_prompt)
    with pytest.raises(ValueError, match="soft_prompt .*(relative path inside|climbs out)"):
        PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path / "adapter")


def test_soft_prompt_linked_outside_the_adapter_folder_is_refused(bpe_tokenizer, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    fitted(bpe_tokenizer).save_pretrained(tmp_path / "adapter")
    os.symlink(tmp_path / "elsewhere", tmp_path / "adapter" / "soft_prompt")
    rewrite_config(tmp_path / "adapter", soft_prompt="soft_prompt")
    with pytest.raises(ValueError, match="leads outside the adapter folder"):
        PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path / "adapter")


def test_missing_soft_prompt_folder_is_named(bpe_tokenizer, tmp_path):
    fitted(bpe_tokenizer).save_pretrained(tmp_path / "adapter")
    rewrite_config(tmp_path / "adapter", soft_prompt="soft_prompt")
    with pytest.raises(ValueError, match="soft prompt in its soft_prompt/ folder, which is missing"):
        PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path / "adapter")


# ---------------------------------------------------------------- 5: linked cards
def test_a_linked_card_is_neither_followed_nor_replaced(bpe_tokenizer, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    target = tmp_path / "adapter"
    target.mkdir()
    os.symlink(secret, target / "README.md")
    fitted(bpe_tokenizer).save_pretrained(target)
    assert os.path.islink(target / "README.md")
    assert secret.read_text() == "password=hunter2\n"
    copied = [p for p in target.rglob("*") if p.is_file() and not p.is_symlink() and b"hunter2" in p.read_bytes()]
    assert copied == []
    with pytest.raises(ValueError, match="symbolic links \\(README.md\\).*nothing was uploaded"):
        push_adapter_folder(target, "user/dect", api=object())


# ---------------------------------------------------------------- 6: sizes checked before allocation
@pytest.mark.parametrize(
    "changes",
    [{"decoder_dim": 10**9}, {"label_words": {f"class{i}": [f"w{i}"] for i in range(200_000)}}],
    ids=["decoder_dim", "classes"],
)
def test_absurd_sizes_are_refused_before_allocation(bpe_tokenizer, tmp_path, monkeypatch, changes):
    fitted(bpe_tokenizer).save_pretrained(tmp_path)
    rewrite_config(tmp_path, **changes)

    def no_allocation(*args, **kwargs):
        raise AssertionError("the decoder was allocated before the shapes were checked")

    monkeypatch.setattr(peft_dect.dect.layer, "init_weights", no_allocation)
    with pytest.raises(ValueError, match="holds base_model.model.lm_head.dect_.* do not fit this adapter's shapes"):
        PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)


# ---------------------------------------------------------------- 13: one save, one folder
def test_weights_of_another_save_are_refused(bpe_tokenizer, tmp_path):
    fitted(bpe_tokenizer).save_pretrained(tmp_path / "a")
    fitted(bpe_tokenizer, flip=True).save_pretrained(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "adapter_model.safetensors", tmp_path / "a" / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="mixes files of two saves.*save the adapter again"):
        PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path / "a")


def test_a_save_killed_between_the_renames_is_refused(bpe_tokenizer, tmp_path, monkeypatch):
    target = tmp_path / "adapter"
    fitted(bpe_tokenizer).save_pretrained(target)
    newer = fitted(bpe_tokenizer, flip=True)
    real_replace = os.replace

    def killed_after_the_weights(src, dst):
        real_replace(src, dst)
        if str(dst).endswith(".safetensors"):
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed_after_the_weights)
    with pytest.raises(KeyboardInterrupt):
        newer.save_pretrained(target)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="mixes files of two saves"):
        PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), target)


def test_saves_into_one_folder_run_one_at_a_time(tmp_path):
    inside, release, order = threading.Event(), threading.Event(), []

    def first():
        with staged_folder(tmp_path / "adapter"):
            order.append("first in")
            inside.set()
            release.wait(5)
            order.append("first out")

    def second():
        inside.wait(5)
        with staged_folder(tmp_path / "adapter"):
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    inside.wait(5)
    time.sleep(0.3)
    release.set()
    for t in threads:
        t.join(10)
    assert order == ["first in", "first out", "second in"]
    assert list(tmp_path.iterdir()) == []  # nothing was staged, no staging folder is left


# ---------------------------------------------------------------- 9: NaN in adapter tensors
def test_nan_in_saved_decoder_tensors_is_an_error(bpe_tokenizer, tmp_path):
    fitted(bpe_tokenizer).save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    from safetensors import safe_open

    with safe_open(path, framework="pt") as shard:
        metadata = shard.metadata()
    tensors = load_file(path)
    name = next(n for n in tensors if n.endswith("dect_W"))
    tensors[name][0, 0] = float("nan")
    save_file(tensors, path, metadata=metadata)
    loaded = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)
    with pytest.raises(ValueError, match="adapter's decoder tensors hold NaN or infinite values \\(dect_W\\)"):
        loaded.predict_proba(TEXTS, tokenizer=bpe_tokenizer)
    with pytest.raises(ValueError, match="NaN or infinite"):
        loaded.predict(TEXTS)


def test_nan_in_content_free_scores_is_an_error(bpe_tokenizer):
    model = fitted(bpe_tokenizer)
    with torch.no_grad():
        model.base_model.state().content_free = torch.tensor([float("inf"), 0.0])
    with pytest.raises(ValueError, match="content-free"):
        model.predict(TEXTS)
    with model.disable_adapter(), pytest.raises(ValueError, match="content-free"):
        model.predict(TEXTS)


# ---------------------------------------------------------------- 10: label words edited in place
def test_label_words_edited_in_place_are_used_by_the_next_fit(bpe_tokenizer, tmp_path):
    model = fitted(bpe_tokenizer)
    model.peft_config["default"].label_words = {"negative": ["awful"], "positive": ["good"]}
    with pytest.raises(ValueError, match="label words of adapter 'default' were changed after it was fitted"):
        model.predict(TEXTS)
    report = model.fit(sentiment_data(8, 1), show_progress=False)
    # the new words' scores come from the hidden states cached by the first fit (no model pass), and they are the
    # new words' scores: the refit equals a fresh fit with them
    assert report["model_passes"] == 0
    fresh = fitted(bpe_tokenizer, label_words={"negative": ["awful"], "positive": ["good"]})
    np.testing.assert_allclose(model.predict_proba(TEXTS), fresh.predict_proba(TEXTS), atol=1e-6)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)
    np.testing.assert_array_equal(loaded.predict_proba(TEXTS, tokenizer=bpe_tokenizer), model.predict_proba(TEXTS))


def test_a_new_class_count_refits_or_is_a_clear_error(bpe_tokenizer, tmp_path):
    model = fitted(bpe_tokenizer)
    three = {"negative": ["bad"], "neutral": ["fine"], "positive": ["great"]}
    model.peft_config["default"].label_words = three
    with pytest.raises(ValueError, match="fitted for 2 classes, but its config's label_words now name 3"):
        model.predict(TEXTS)
    data = sentiment_data(8, 1)
    data["sentence"] = data["sentence"] + ["an ordinary film"] * 4
    data["label"] = data["label"] + [2] * 4
    model.fit(data, show_progress=False)
    assert model.predict_proba(TEXTS).shape == (2, 3)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)
    assert loaded.predict_proba(TEXTS, tokenizer=bpe_tokenizer).shape == (2, 3)


# ---------------------------------------------------------------- 12: any dtype
def test_predict_and_fit_after_moving_the_model_to_bfloat16(bpe_tokenizer):
    model = fitted(bpe_tokenizer)
    expected = model.predict_proba(TEXTS)
    model.to(torch.bfloat16)
    np.testing.assert_allclose(model.predict_proba(TEXTS), expected, atol=0.05)
    model.fit(sentiment_data(8, 1), show_progress=False)
    assert model.predict(TEXTS) == fitted(bpe_tokenizer).predict(TEXTS)
    assert np.isfinite(model.evaluate(sentiment_data(4, 2))["accuracy"])


# ---------------------------------------------------------------- loading without a tokenizer argument
def test_loading_finds_the_recorded_tokenizer(bpe_tokenizer, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    bpe_tokenizer.save_pretrained(tmp_path / "tokenizer")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    model = fitted(tok)
    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path / "adapter")
    np.testing.assert_array_equal(loaded.predict_proba(TEXTS), model.predict_proba(TEXTS))

    shutil.rmtree(tmp_path / "tokenizer")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gone = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path / "adapter")
    with pytest.raises(ValueError, match="records .*tokenizer.*could not be loaded.*pass tokenizer="):
        gone.predict(TEXTS)


def test_without_a_recorded_tokenizer_the_error_says_to_pass_one(bpe_tokenizer, tmp_path):
    fitted(bpe_tokenizer).save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)
    with pytest.raises(ValueError, match="pass tokenizer="):
        loaded.predict(TEXTS)


def test_a_refused_tokenizer_is_not_remembered(bpe_tokenizer, tmp_path):
    from test_adapter_safety import swapped_tokenizer

    fitted(bpe_tokenizer).save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)
    expected = loaded.predict_proba(TEXTS, tokenizer=bpe_tokenizer)
    with pytest.raises(ValueError, match="but this tokenizer gives"):
        loaded.predict(TEXTS, tokenizer=swapped_tokenizer(bpe_tokenizer))
    np.testing.assert_array_equal(loaded.predict_proba(TEXTS), expected)  # the accepted one is still in use

    fresh = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)
    with pytest.raises(ValueError, match="but this tokenizer gives"):
        fresh.predict(TEXTS, tokenizer=swapped_tokenizer(bpe_tokenizer))
    with pytest.raises(ValueError, match="pass tokenizer="):
        fresh.predict(TEXTS)  # not the refused one


# ---------------------------------------------------------------- prompt ensembles
def test_a_failed_ensemble_save_leaves_the_previous_ensemble_loadable(bpe_tokenizer, tmp_path, monkeypatch):
    from test_prompt_tuning import ensemble_of

    import peft_dect.prompt_tuning.ensemble as ensemble_module
    from peft_dect.prompt_tuning import PromptEnsemble

    _, first = ensemble_of(tiny_llama(bpe_tokenizer), bpe_tokenizer)
    expected = first.predict_proba(TEXTS)
    first.save_pretrained(str(tmp_path / "ensemble"))
    _, second = ensemble_of(tiny_llama(bpe_tokenizer, seed=1), bpe_tokenizer, lengths=(3, 5, 2))
    calls = []
    real = ensemble_module.write_prompt_files

    def fail_on_the_second_member(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(ensemble_module, "write_prompt_files", fail_on_the_second_member)
    with pytest.raises(OSError, match="No space left"):
        second.save_pretrained(str(tmp_path / "ensemble"))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ensemble"]
    loaded = PromptEnsemble.from_pretrained(tiny_llama(bpe_tokenizer), bpe_tokenizer, str(tmp_path / "ensemble"))
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), expected, atol=1e-5)


def test_an_ensemble_member_linked_outside_the_folder_is_refused(bpe_tokenizer, tmp_path):
    from test_prompt_tuning import ensemble_of

    from peft_dect.prompt_tuning import PromptEnsemble

    _, ensemble = ensemble_of(tiny_llama(bpe_tokenizer), bpe_tokenizer, lengths=(4,))
    ensemble.save_pretrained(str(tmp_path / "ensemble"))
    shutil.move(tmp_path / "ensemble" / "m0", tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", tmp_path / "ensemble" / "m0")
    with pytest.raises(ValueError, match="An ensemble member 'm0' leads outside the adapter folder"):
        PromptEnsemble.from_pretrained(tiny_llama(bpe_tokenizer), bpe_tokenizer, str(tmp_path / "ensemble"))


# ---------------------------------------------------------------- clear messages
@pytest.mark.parametrize(
    "text, message", [("{not json", "is not a readable JSON file"), ("[1, 2]", "does not hold a JSON object")]
)
def test_a_corrupt_config_is_named_through_peft(bpe_tokenizer, tmp_path, text, message):
    fitted(bpe_tokenizer).save_pretrained(tmp_path)
    (tmp_path / "adapter_config.json").write_text(text)
    with pytest.raises(ValueError, match=f"adapter_config.json {message}.*save the adapter config again"):
        PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("lam", float("nan"), ValueError, "lam must be a finite number"),
        ("lam", float("inf"), ValueError, "lam must be a finite number"),
        ("learning_rate", float("inf"), ValueError, "learning_rate must be a finite number"),
        ("decoder_dim", "128", TypeError, "decoder_dim must be an integer"),
        ("epochs", 30.0, TypeError, "epochs must be an integer"),
        ("seed", 2**70, ValueError, "seed must be between 0 and"),
    ],
)
def test_configs_refuse_non_finite_and_mistyped_numbers(field, value, error, message):
    with pytest.raises(error, match=message):
        DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, **{field: value})
