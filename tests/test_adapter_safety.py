"""Issue 9, requirement 2: saving is atomic, and adapters from a newer format or another base model are refused."""

import json

import numpy as np
import peft.peft_model
import pytest
from conftest import LABEL_WORDS, TEMPLATE, sentiment_data, tiny_llama
from peft import PeftConfig, PeftModel, get_peft_model

from peft_dect import DecTConfig
from peft_dect.saving import FORMAT_VERSION


TEXTS = ["a gorgeous , moving film", "a dull , tedious film"]


def fitted(tok, data=None):
    model = get_peft_model(tiny_llama(tok), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    model.fit(data or sentiment_data(8, 1), tokenizer=tok, show_progress=False)
    return model


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_interrupted_save_keeps_the_previous_adapter(bpe_tokenizer, tmp_path, monkeypatch):
    target = tmp_path / "adapter"
    good = fitted(bpe_tokenizer)
    good.save_pretrained(target)
    before, expected = snapshot(target), good.predict_proba(TEXTS)

    flipped = sentiment_data(8, 1)
    flipped["label"] = [1 - y for y in flipped["label"]]
    newer = fitted(bpe_tokenizer, flipped)
    real_save = peft.peft_model.safe_save_file

    def crash_midway(tensors, path, metadata=None):
        real_save(tensors, path, metadata=metadata)
        with open(path, "r+b") as fh:  # half the bytes are on disk when the "power fails"
            fh.truncate(len(fh.read()) // 2)
        raise OSError("No space left on device")

    monkeypatch.setattr(peft.peft_model, "safe_save_file", crash_midway)
    with pytest.raises(OSError, match="No space left"):
        newer.save_pretrained(target)
    monkeypatch.undo()

    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no staging folder left behind
    loaded = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), target)
    np.testing.assert_array_equal(loaded.predict_proba(TEXTS, tokenizer=bpe_tokenizer), expected)


def test_save_over_a_previous_adapter_replaces_it_and_keeps_other_files(bpe_tokenizer, tmp_path):
    target = tmp_path / "adapter"
    fitted(bpe_tokenizer).save_pretrained(target)
    (target / "notes.txt").write_text("mine")
    flipped = sentiment_data(8, 1)
    flipped["label"] = [1 - y for y in flipped["label"]]
    newer = fitted(bpe_tokenizer, flipped)
    newer.save_pretrained(target)
    assert (target / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    loaded = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), target)
    np.testing.assert_array_equal(loaded.predict_proba(TEXTS, tokenizer=bpe_tokenizer), newer.predict_proba(TEXTS))


def _rewrite_config(folder, **changes):
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_config_records_its_format(bpe_tokenizer, tmp_path):
    fitted(bpe_tokenizer).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["format_version"] == FORMAT_VERSION


@pytest.mark.filterwarnings("ignore:Unexpected keyword arguments")  # peft's note on the field of the future
@pytest.mark.parametrize("version", ["3.0", "17.3"])
def test_newer_major_format_is_refused(bpe_tokenizer, tmp_path, version):
    fitted(bpe_tokenizer).save_pretrained(tmp_path)
    _rewrite_config(tmp_path, format_version=version, field_of_the_future=[1, 2])
    message = f"adapter format {version}, newer than the format {FORMAT_VERSION}.*pip install -U peft-dect"
    with pytest.raises(ValueError, match=message):
        PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)
    with pytest.raises(ValueError, match=message):
        PeftConfig.from_pretrained(tmp_path)
    model = fitted(bpe_tokenizer)
    with pytest.raises(ValueError, match=message):
        model.load_adapter(str(tmp_path), adapter_name="future")


@pytest.mark.parametrize("version", [None, "0.9", "1.0", "1.7", "2.0", "2.4"])
def test_older_equal_and_newer_minor_formats_load(bpe_tokenizer, tmp_path, version):
    model = fitted(bpe_tokenizer)
    model.save_pretrained(tmp_path)
    if version is None:  # written before the field existed
        config = json.loads((tmp_path / "adapter_config.json").read_text())
        del config["format_version"]
        (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    else:
        _rewrite_config(tmp_path, format_version=version)
    loaded = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)
    np.testing.assert_array_equal(loaded.predict_proba(TEXTS, tokenizer=bpe_tokenizer), model.predict_proba(TEXTS))


def test_unreadable_format_or_config_is_refused(bpe_tokenizer, tmp_path):
    fitted(bpe_tokenizer).save_pretrained(tmp_path)
    _rewrite_config(tmp_path, format_version="latest")
    with pytest.raises(ValueError, match="unreadable format_version 'latest'"):
        PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON file"):
        get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS)).load_adapter(
            str(tmp_path), adapter_name="broken"
        )


def test_adapter_with_another_vocabulary_size_is_refused(bpe_tokenizer, tmp_path):
    fitted(bpe_tokenizer).save_pretrained(tmp_path)
    _rewrite_config(tmp_path, base_vocab_size=32000)
    with pytest.raises(ValueError, match="vocabulary 32000, but LlamaForCausalLM has hidden size 32 and vocabulary"):
        PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)


def swapped_tokenizer(tok):
    """The same tokenizer with the ids of 'Ġgreat' and 'Ġbad' swapped: same size, another vocabulary."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tok.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    vocab["Ġgreat"], vocab["Ġbad"] = vocab["Ġbad"], vocab["Ġgreat"]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), **tok.special_tokens_map)


def test_adapter_used_with_another_tokenizer_is_refused(bpe_tokenizer, tmp_path):
    """Same vocabulary size, other vocabulary: the label words would silently score other tokens."""
    sp = swapped_tokenizer(bpe_tokenizer)
    assert len(sp) == len(bpe_tokenizer)
    fitted(bpe_tokenizer).save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)
    with pytest.raises(ValueError, match="fitted with label-word token ids .* but this tokenizer gives"):
        loaded.predict(TEXTS, tokenizer=sp)
    assert loaded.predict(TEXTS, tokenizer=bpe_tokenizer)  # the right tokenizer still works


def test_refitting_with_another_tokenizer_records_its_ids(bpe_tokenizer):
    sp = swapped_tokenizer(bpe_tokenizer)
    model = fitted(bpe_tokenizer)
    first = model.peft_config["default"].recorded.label_token_ids
    model.fit(sentiment_data(8, 1), tokenizer=sp, show_progress=False)
    assert model.peft_config["default"].recorded.label_token_ids != first
    assert len(model.predict(TEXTS)) == 2
