"""Streaming prediction: batches with memory independent of the input's length, JSON Lines output, resumption."""

import csv
import gc
import itertools
import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE, sentiment_data, tiny_llama, tiny_roberta
from openai_stub import OpenAIStub
from peft import get_peft_model

from peft_dect import DecTConfig, LabelWordClassifier
from peft_dect.remote import BlackBoxDecT, OpenAIEndpoint
from peft_dect.stream import predict_file, sidecar_path


MASKED_TEMPLATE = "{text_a} In summary, it was {mask}."
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def fitted_dect(tokenizer, kind: str = "causal"):
    if kind == "causal":
        model, template = tiny_llama(tokenizer), TEMPLATE
    else:
        model, template = tiny_roberta(tokenizer), MASKED_TEMPLATE
    peft_model = get_peft_model(model, DecTConfig(template=template, label_words=LABEL_WORDS))
    peft_model.fit(sentiment_data(8, seed=3), tokenizer=tokenizer, show_progress=False)
    return peft_model


@pytest.fixture(scope="module")
def dect(bpe_tokenizer):
    return fitted_dect(bpe_tokenizer)


def texts(n: int, seed: int = 9) -> list[str]:
    return sentiment_data((n + 1) // 2, seed=seed)["sentence"][:n]


def write_lines(path, rows):
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- predict_stream, every classifier
@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_stream_records_match_predict_proba(kind, bpe_tokenizer, wordpiece_tokenizer):
    tokenizer = bpe_tokenizer if kind == "causal" else wordpiece_tokenizer
    model = fitted_dect(tokenizer, kind)
    inputs = texts(23)
    records = list(model.predict_stream(inputs, batch_size=5, show_progress=False))
    probs = model.predict_proba(inputs)
    assert [r["text"] for r in records] == inputs
    assert [r["label"] for r in records] == model.predict(inputs)
    got = np.array([[r["probabilities"][c] for c in model.base_model.classes] for r in records])
    np.testing.assert_allclose(got, probs, atol=1e-6)


def test_stream_reads_datasets_generators_and_row_dicts(dect):
    inputs = texts(11)
    expected = [r["label"] for r in dect.predict_stream(inputs, batch_size=4, show_progress=False)]
    table = datasets.Dataset.from_dict({"sentence": inputs})
    assert [r["label"] for r in dect.predict_stream(table, batch_size=4, show_progress=False)] == expected
    generator = (t for t in inputs)
    assert [r["label"] for r in dect.predict_stream(generator, batch_size=3, show_progress=False)] == expected
    rows = [{"sentence": t, "id": i} for i, t in enumerate(inputs)]
    assert [r["label"] for r in dect.predict_stream(rows, batch_size=4, show_progress=False)] == expected
    assert [r["label"] for r in dect.predict_stream(table.to_iterable_dataset(), show_progress=False)] == expected


def test_stream_gives_rejection_scores_and_prediction_sets(dect):
    model = fitted_dect(dect.base_model.sources.tokenizer)
    model.base_model.calibrate(sentiment_data(6, seed=4))
    inputs = texts(9)
    records = list(model.predict_stream(inputs, batch_size=4, reject=True, alpha=0.2, show_progress=False))
    assert [r["label"] for r in records] == model.predict(inputs, reject=True)
    assert [r["set"] for r in records] == model.predict_set(inputs, alpha=0.2)
    np.testing.assert_allclose([r["unknown_score"] for r in records], model.unknown_score(inputs), atol=1e-6)


def test_stream_works_for_a_label_word_classifier(bpe_tokenizer):
    clf = LabelWordClassifier(tiny_llama(bpe_tokenizer), bpe_tokenizer, TEMPLATE, LABEL_WORDS, show_progress=False)
    inputs = texts(10)
    records = list(clf.predict_stream(inputs, batch_size=3, show_progress=False))
    assert [r["label"] for r in records] == clf.predict(inputs)


def test_stream_works_for_black_box_dect_and_keeps_no_answers():
    with OpenAIStub() as stub:
        endpoint = OpenAIEndpoint(stub.url, "stub-model", show_progress=False, backoff=0.01)
        clf = BlackBoxDecT(DecTConfig(template="{text_a} It was {mask}.", label_words=LABEL_WORDS), endpoint)
        clf.fit({"text": ["a great film", "a terrible film", "great fun", "terrible plot"], "label": [1, 0, 1, 0]})
        cached = len(endpoint.cache)
        inputs = [f"the film {i} was great" if i % 2 else f"the film {i} was terrible" for i in range(12)]
        records = list(clf.predict_stream(inputs, batch_size=5, show_progress=False))
        assert len(endpoint.cache) == cached  # the stream kept none of its answers
        assert [r["label"] for r in records] == clf.predict(inputs)
        assert len(endpoint.cache) > cached  # predict keeps its own


# ---------------------------------------------------------------- memory independent of the count
def test_streaming_leaves_the_feature_cache_as_it_was(dect):
    cache = dect.base_model.backbone().cache
    before = len(cache)
    for n in (10, 60):
        assert sum(1 for _ in dect.predict_stream(texts(n, seed=n), batch_size=8, show_progress=False)) == n
        assert len(cache) == before and dect.base_model.backbone().cache is cache


def test_an_endless_stream_holds_a_bounded_number_of_tensors(dect):
    """An infinite generator is consumed lazily, and the tensors alive after 40 batches are as many as after 5."""
    pool = texts(50)
    endless = (pool[i % len(pool)] + f" {i}" for i in itertools.count())
    stream = dect.predict_stream(endless, batch_size=4, show_progress=False)

    def live_tensors() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    list(itertools.islice(stream, 5 * 4))
    early = live_tensors()
    list(itertools.islice(stream, 35 * 4))
    assert live_tensors() <= early
    stream.close()


def test_a_bad_batch_size_is_refused(dect):
    with pytest.raises(ValueError, match="batch_size"):
        dect.predict_stream(texts(3), batch_size=0)  # at the call, before any record is asked for
    with pytest.raises(TypeError, match="predict_file"):
        dect.predict_stream("one text")
    with pytest.raises(ValueError, match="alpha"):
        dect.predict_stream(texts(3), alpha=1.5)


# ---------------------------------------------------------------- files and resumption
class Interrupted(RuntimeError):
    pass


def interrupt_after(classifier, batches: int, monkeypatch):
    """Make the classifier fail at batch `batches + 1` (a run killed midway)."""
    calls = {"n": 0}
    original = classifier.checked_logits

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > batches:
            raise Interrupted("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(classifier, "checked_logits", failing)


def test_an_interrupted_file_resumes_to_the_uninterrupted_output(dect, tmp_path, monkeypatch):
    clf = dect.base_model
    source = write_lines(tmp_path / "in.txt", texts(37))
    whole = tmp_path / "whole.jsonl"
    assert predict_file(clf, source, whole, batch_size=5, show_progress=False)["written"] == 37
    out = tmp_path / "out.jsonl"
    with monkeypatch.context() as patch:
        interrupt_after(clf, 3, patch)
        with pytest.raises(Interrupted):
            predict_file(clf, source, out, batch_size=5, show_progress=False)
    assert len(out.read_text().splitlines()) == 15
    with open(out, "a") as fh:  # the run was killed while writing a line
        fh.write('{"text": "the film was gre')
    summary = predict_file(clf, source, out, batch_size=5, show_progress=False)
    assert summary == {"input": str(source), "output": str(out), "written": 22, "resumed_from": 15, "total": 37}
    assert out.read_bytes() == whole.read_bytes()
    again = predict_file(clf, source, out, batch_size=5, show_progress=False)  # finished: nothing more to do
    assert again["written"] == 0 and out.read_bytes() == whole.read_bytes()


def test_resuming_inside_a_batch_keeps_every_line_once(dect, tmp_path):
    clf = dect.base_model
    source = write_lines(tmp_path / "in.txt", texts(23))
    whole = tmp_path / "whole.jsonl"
    predict_file(clf, source, whole, batch_size=4, show_progress=False)
    out = tmp_path / "out.jsonl"
    lines = whole.read_text().splitlines(keepends=True)
    sidecar_path(out).write_bytes(sidecar_path(whole).read_bytes())
    out.write_text("".join(lines[:10]) + lines[10][:7])  # 10 lines and a torn one: mid-batch
    assert predict_file(clf, source, out, batch_size=4, show_progress=False)["resumed_from"] == 10
    resumed = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [json.loads(line) for line in lines]
    assert [r["text"] for r in resumed] == [r["text"] for r in expected]
    assert [r["label"] for r in resumed] == [r["label"] for r in expected]
    for a, b in zip(resumed, expected):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)


def test_csv_and_jsonl_inputs_stream_their_text_column(dect, tmp_path):
    clf = dect.base_model
    inputs = texts(9)
    with open(tmp_path / "in.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "sentence"])
        writer.writerows(enumerate(inputs))
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"sentence": t}) + "\n" for t in inputs))
    labels = clf.predict(inputs)
    for name in ("in.csv", "in.jsonl"):
        out = tmp_path / f"{name}.out.jsonl"
        predict_file(clf, tmp_path / name, out, batch_size=4, show_progress=False)
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["text"] for r in records] == inputs and [r["label"] for r in records] == labels


def test_an_output_of_another_input_is_refused(dect, tmp_path, monkeypatch):
    clf = dect.base_model
    first = write_lines(tmp_path / "first.txt", texts(12))
    second = write_lines(tmp_path / "second.txt", texts(12, seed=5))
    out = tmp_path / "out.jsonl"
    with monkeypatch.context() as patch:
        interrupt_after(clf, 1, patch)
        with pytest.raises(Interrupted):
            predict_file(clf, first, out, batch_size=4, show_progress=False)
    kept = out.read_bytes()
    with pytest.raises(ValueError, match="another input file"):
        predict_file(clf, second, out, batch_size=4, show_progress=False)
    write_lines(first, texts(12, seed=6))  # the same path, edited since
    with pytest.raises(ValueError, match="another input file"):
        predict_file(clf, first, out, batch_size=4, show_progress=False)
    assert out.read_bytes() == kept  # a refused resumption leaves the output alone
    assert predict_file(clf, second, out, batch_size=4, show_progress=False, overwrite=True)["total"] == 12
    with pytest.raises(ValueError, match="another options"):
        predict_file(clf, second, out, batch_size=4, reject=5.0, show_progress=False)


def test_an_output_without_its_sidecar_or_of_another_classifier_is_refused(dect, tmp_path):
    clf = dect.base_model
    source = write_lines(tmp_path / "in.txt", texts(6))
    stray = tmp_path / "stray.jsonl"
    stray.write_text('{"text": "x"}\n')
    with pytest.raises(ValueError, match="stream.json"):
        predict_file(clf, source, stray, show_progress=False)
    out = tmp_path / "out.jsonl"
    predict_file(clf, source, out, identity={"adapter": "a"}, show_progress=False)
    with pytest.raises(ValueError, match="another classifier"):
        predict_file(clf, source, out, identity={"adapter": "b"}, show_progress=False)
    with pytest.raises(ValueError, match="standard input"):
        predict_file(clf, "-", out)


def test_a_bad_input_file_names_its_line(dect, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sentence": "fine"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object"):
        predict_file(dect.base_model, bad, tmp_path / "out.jsonl", show_progress=False)


# ---------------------------------------------------------------- the command line
def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "peft_dect.cli", *args], capture_output=True, text=True, env=ENV, timeout=300
    )


def test_cli_predict_output_resumes_and_refuses_another_input(tmp_path, bpe_tokenizer):
    model_dir, adapter = tmp_path / "tiny-llama", tmp_path / "adapter"
    tiny_llama(bpe_tokenizer).save_pretrained(model_dir)
    bpe_tokenizer.save_pretrained(model_dir)
    train = sentiment_data(8, seed=1)
    with open(tmp_path / "train.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["sentence", "label"], *zip(train["sentence"], train["label"])])
    fit = cli(
        "fit", "--model", str(model_dir), "--train", str(tmp_path / "train.csv"), "--template", TEMPLATE,
        "--label-words", json.dumps(LABEL_WORDS), "--out", str(adapter), "--quiet",
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    source = write_lines(tmp_path / "in.txt", texts(21))
    whole, out = tmp_path / "whole.jsonl", tmp_path / "out.jsonl"
    done = cli("predict", str(adapter), str(source), "--output", str(whole), "--batch-size", "4", "--quiet", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["written"] == 21 and len(whole.read_text().splitlines()) == 21
    lines = whole.read_text().splitlines(keepends=True)
    sidecar_path(out).write_bytes(sidecar_path(whole).read_bytes())
    out.write_text("".join(lines[:8]) + lines[8][:20])  # killed after two batches, inside the next line
    resumed = cli("predict", str(adapter), str(source), "--output", str(out), "--batch-size", "4", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed after 8" in resumed.stdout and out.read_bytes() == whole.read_bytes()
    other = write_lines(tmp_path / "other.txt", texts(21, seed=4))
    refused = cli("predict", str(adapter), str(other), "--output", str(out), "--quiet")
    assert refused.returncode == 2 and "another input file" in refused.stderr
    assert out.read_bytes() == whole.read_bytes()
