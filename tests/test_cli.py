"""The peft-dect command, driven through a subprocess as a user would."""

import csv
import importlib.metadata
import json
import os
import subprocess
import sys

import pytest
from conftest import LABEL_WORDS, TEMPLATE, sentiment_data, tiny_llama


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def cli(*args, stdin=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "peft_dect.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=env or ENV,
        timeout=300,
    )


def write_workspace(root, tokenizer):
    """The tiny Llama saved under `root/tiny-llama` and 16 train / 10 test sentiment rows as `root/{train,test}.csv`
    (columns sentence, label); returns the model folder."""
    model_dir = root / "tiny-llama"
    tiny_llama(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    for name, data in (("train", sentiment_data(16, 1)), ("test", sentiment_data(10, 2))):
        with open(root / f"{name}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["sentence", "label"])
            writer.writerows(zip(data["sentence"], ["negative" if y == 0 else "positive" for y in data["label"]]))
    return model_dir


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, bpe_tokenizer):
    root = tmp_path_factory.mktemp("cli")
    model_dir = write_workspace(root, bpe_tokenizer)
    adapter = root / "adapter"
    fit = cli(
        "fit",
        "--model",
        str(model_dir),
        "--train",
        str(root / "train.csv"),
        "--template",
        TEMPLATE,
        "--label-words",
        json.dumps(LABEL_WORDS),
        "--out",
        str(adapter),
        "--json",
        "--quiet",
        "--budget",
        "1",  # the template alone, whose passes are counted
    )
    assert fit.returncode == 0, fit.stderr
    return root, model_dir, adapter, json.loads(fit.stdout.strip().splitlines()[-1])


def fit_file(model_dir, train, out, *extra, label_words="negative=bad,positive=great"):
    """`peft-dect fit` on a data file with the tests' template and label words (and `extra` options)."""
    return cli(
        "fit",
        "--model",
        str(model_dir),
        "--train",
        str(train),
        "--template",
        TEMPLATE,
        "--label-words",
        label_words,
        "--out",
        str(out),
        "--quiet",
        *extra,
    )


def test_help_documents_every_command():
    out = cli("--help")
    assert out.returncode == 0
    for command in ("fit", "evaluate", "predict", "suggest", "push", "demo"):
        assert command in out.stdout
    fit_help = cli("fit", "--help").stdout
    for option in ("--train", "--task", "--template", "--label-words", "--mode", "--out", "--json", "--quiet"):
        assert option in fit_help
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert [e.value for e in scripts if e.name == "peft-dect"] == ["peft_dect.cli:main"]


def test_fit_saves_an_adapter_and_reports_json(workspace):
    _, _, adapter, report = workspace
    assert (adapter / "adapter_model.safetensors").is_file()
    assert report["model_passes"] == 33 and report["mode"] == "auto"


def test_predict_reads_stdin_and_writes_labels_and_probabilities(workspace):
    _, _, adapter, _ = workspace
    out = cli("predict", str(adapter), "-", "--quiet", stdin="a lovely , moving film\nthe plot was dull\n")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].split("\t") == ["label", "negative", "positive"] and len(lines) == 3
    label, *probs = lines[1].split("\t")
    assert label in ("negative", "positive") and abs(sum(map(float, probs)) - 1) < 1e-3
    as_json = cli("predict", str(adapter), "-", "--json", "--quiet", stdin="a lovely film\n")
    row = json.loads(as_json.stdout.strip())
    assert row["text"] == "a lovely film" and set(row["probabilities"]) == {"negative", "positive"}


def test_predict_rejects_out_of_scope_texts_and_prints_prediction_sets(workspace):
    _, _, adapter, _ = workspace
    texts = "a lovely , moving film\nthe plot was dull\n"
    out = cli("predict", str(adapter), "-", "--json", "--quiet", "--reject", "--alpha", "0.2", stdin=texts)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert all(set(r) == {"text", "label", "probabilities", "unknown_score", "set"} for r in rows)
    classes = {"negative", "positive"}
    assert all((r["label"] in classes or r["label"] is None) and set(r["set"]) <= classes for r in rows)
    everything = cli("predict", str(adapter), "-", "--quiet", "--reject=-1e9", stdin=texts)
    assert everything.returncode == 0, everything.stderr
    lines = everything.stdout.strip().splitlines()
    assert lines[0].split("\t") == ["label", "negative", "positive", "unknown_score"]
    assert [line.split("\t")[0] for line in lines[1:]] == ["-", "-"]  # all rejected; no reject label set
    bad = cli("predict", str(adapter), "-", "--quiet", "--alpha", "1.5", stdin=texts)
    assert bad.returncode == 2 and "alpha must be a number strictly between 0 and 1" in bad.stderr


def test_suggest_names_pool_texts_to_label_next(workspace, tmp_path):
    root, _, adapter, _ = workspace
    pool = tmp_path / "pool.txt"
    pool.write_text("a lovely film\nthe plot was dull\nit was fine\nthe acting , and\n")
    out = cli("suggest", str(adapter), str(pool), "--k", "2", "--strategy", "diverse", "--json", "--quiet")
    assert out.returncode == 0, out.stderr
    picked = json.loads(out.stdout)
    assert len(set(picked["indices"])) == 2 and all(0 <= i < 4 for i in picked["indices"])
    too_many = cli("suggest", str(adapter), str(pool), "--k", "9", "--quiet")
    assert too_many.returncode == 2 and "k must be an integer from 1 to 4" in too_many.stderr


def test_evaluate_a_labelled_file(workspace):
    root, _, adapter, _ = workspace
    out = cli("evaluate", str(adapter), "--test", str(root / "test.csv"), "--json", "--quiet")
    assert out.returncode == 0, out.stderr
    assert 0.0 <= json.loads(out.stdout)["accuracy"] <= 1.0


def test_rows_of_the_wrong_shape_name_the_line(workspace, tmp_path):
    _, model_dir, _, _ = workspace
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\ngood film\tpositive\nno label here\n")
    out = fit_file(model_dir, bad, tmp_path / "a")
    assert out.returncode == 2 and "bad.tsv:3: expected 2 fields" in out.stderr


def test_missing_label_column_and_non_utf8_input(workspace, tmp_path):
    _, model_dir, adapter, _ = workspace
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("sentence\ngood film\n")
    out = fit_file(model_dir, nolabel, tmp_path / "a")
    assert out.returncode == 2 and "nolabel.csv has no column(s) ['label']" in out.stderr
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café noir\n".encode("latin-1"))
    out = cli("predict", str(adapter), str(latin), "--quiet")
    assert out.returncode == 2 and "not valid UTF-8" in out.stderr and "latin.txt:1" in out.stderr


def test_push_without_credentials_names_the_fix(workspace):
    _, _, adapter, _ = workspace
    env = {k: v for k, v in ENV.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    out = cli("push", str(adapter), "user/dect-test", env=env)
    assert out.returncode == 2 and "nothing was uploaded" in out.stderr
    bad = cli("push", str(adapter), "not a repo", env=env)
    assert bad.returncode == 2 and "not a valid Hub repository id" in bad.stderr


def test_an_unbalanced_quote_and_an_oversized_field_exit_2_naming_file_and_line(workspace, tmp_path):
    _, model_dir, _, _ = workspace
    quote = tmp_path / "quote.csv"
    quote.write_text('sentence,label\n"good film,positive\nbad film,negative\nfun,positive\n')
    out = fit_file(model_dir, quote, tmp_path / "a")
    assert out.returncode == 2 and "quote.csv:2: a quoted field runs over lines 2-4" in out.stderr
    big = tmp_path / "big.csv"
    big.write_text("sentence,label\n" + "x" * 200_000 + ",positive\n")
    out = fit_file(model_dir, big, tmp_path / "b")
    assert out.returncode == 2 and "big.csv:2: not valid CSV" in out.stderr and "Traceback" not in out.stderr


def test_header_only_files_and_bad_label_words_json_name_the_file_or_option(workspace, tmp_path):
    _, model_dir, adapter, _ = workspace
    head = tmp_path / "head.csv"
    head.write_text("sentence,label\n")
    out = cli("predict", str(adapter), str(head), "--quiet")
    assert out.returncode == 2 and "head.csv has a header row (sentence, label) but no data rows" in out.stderr
    out = cli("fit", "--model", str(model_dir), "--train", str(head), "--template", TEMPLATE, "--out", str(tmp_path))
    assert out.returncode == 2 and "head.csv has a header row" in out.stderr
    train = tmp_path / "train.csv"
    train.write_text("sentence,label\ngood,positive\nbad,negative\n")
    args = ["fit", "--model", str(model_dir), "--train", str(train), "--template", TEMPLATE, "--out", str(tmp_path)]
    out = cli(*args, "--label-words", '{"negative": ["bad"], "positive": ["great"]')
    assert out.returncode == 2 and "--label-words is not valid JSON" in out.stderr


def test_a_cache_dir_that_cannot_be_written_is_a_warning(workspace, tmp_path):
    root, model_dir, _, _ = workspace
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = cli(
        "fit", "--model", str(model_dir), "--train", str(root / "train.csv"), "--template", TEMPLATE,
        "--label-words", "negative=bad,positive=great", "--out", str(tmp_path / "a"), "--quiet",
        "--cache-dir", str(blocker / "cache"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "cannot be written" in out.stderr and (tmp_path / "a" / "adapter_config.json").is_file()


def test_json_lines_texts_that_are_not_strings_exit_2_naming_the_line(workspace, tmp_path):
    _, _, adapter, _ = workspace
    data = tmp_path / "in.jsonl"
    data.write_text('{"text": "a lovely film"}\n{"text": 3.5}\n')
    out = cli("predict", str(adapter), str(data), "--quiet")
    assert out.returncode == 2 and "in.jsonl:2: the text field 'text' is a JSON float (3.5)" in out.stderr


def test_a_bad_label_in_a_file_names_its_line(workspace, tmp_path):
    _, model_dir, _, _ = workspace
    train = tmp_path / "train.csv"
    train.write_text('sentence,label\n"a ""good"" film",positive\nmeh,neutral\n')
    out = fit_file(model_dir, train, tmp_path / "a")
    assert out.returncode == 2 and "train.csv:3: Row 1 has label 'neutral'" in out.stderr


def test_fit_samples_k_per_class_from_a_big_file_and_names_become_words(workspace, tmp_path):
    root, model_dir, _, _ = workspace
    out = tmp_path / "k4"
    run = fit_file(
        model_dir, root / "train.csv", out, "--k", "4", "--seed", "21", "--json", "--budget", "1", label_words="names"
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    # 4 + 4 rows per class (train and its dev split, which auto mode reads) and the content-free input
    assert report["model_passes"] == 2 * (4 + 4) + 1
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["label_words"] == {"negative": ["negative"], "positive": ["positive"]}
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("sentence,label\na good film,1\na dull film,0\n")
    refused = fit_file(model_dir, numbers, tmp_path / "n", label_words="names")
    assert refused.returncode == 2 and "labels are numbers" in refused.stderr


def test_multi_label_fit_evaluate_and_predict_with_label_sets(workspace, tmp_path):
    _, model_dir, _, _ = workspace
    rows = [
        ("a great , lovely film with a plot", "positive|plot"),
        ("a bad , dull story", "negative"),
        ("the plot was fine and fun", "positive|plot"),
        ("the movie is awful and the plot weak", "negative|plot"),
        ("it was very moving", "positive"),
        ("a tedious , poor plot", "negative|plot"),
        ("this is the film", ""),
        ("a superb , brilliant story", "positive"),
        ("the plot and the acting", "plot"),
        ("ugly and messy", "negative"),
    ]
    with open(tmp_path / "train.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sentence", "label"])
        writer.writerows(rows)
    out = tmp_path / "ml"
    fit = fit_file(model_dir, tmp_path / "train.csv", out, "--multi-label", "--json",
                   label_words="negative=bad,positive=great,plot=plot")  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    assert json.loads(fit.stdout.strip().splitlines()[-1])["multi_label"] is True
    ev = cli("evaluate", str(out), "--test", str(tmp_path / "train.csv"), "--json", "--quiet")
    assert ev.returncode == 0, ev.stderr
    assert set(json.loads(ev.stdout.strip().splitlines()[-1])) == {
        "micro_f1",
        "macro_f1",
        "exact_match",
        "hamming_loss",
    }
    pred = cli("predict", str(out), "-", "--quiet", stdin="a lovely plot\n")
    assert pred.returncode == 0, pred.stderr
    header, line = pred.stdout.strip().splitlines()
    assert header.split("\t") == ["label", "negative", "positive", "plot"]
    label, *probs = line.split("\t")
    assert set(filter(None, label.split("|"))) <= {"negative", "positive", "plot"} and len(probs) == 3
    as_json = json.loads(cli("predict", str(out), "-", "--json", "--quiet", stdin="a lovely plot\n").stdout)
    assert isinstance(as_json["label"], list)
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,label\na film,plot|sarcasm\n")
    refused = fit_file(model_dir, bad, tmp_path / "no", "--multi-label", label_words="negative=bad,plot=plot")
    assert refused.returncode == 2 and "sarcasm" in refused.stderr


def test_fit_tries_the_templates_given_and_saves_the_choice(workspace, tmp_path):
    root, model_dir, _, _ = workspace
    other = "{text_a} All in all, it was {mask}."
    out = tmp_path / "templates"
    run = fit_file(model_dir, root / "train.csv", out, "--templates", other, "--budget", "4", "--json", "--quiet")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(report["prompt_candidates"]) == 4 and f"template {other!r}" in report["prompt_candidates"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["templates"] == [other] and config["template_chosen"] in (None, other)
    refused = fit_file(model_dir, root / "train.csv", tmp_path / "bad", "--templates", "{text_a} no mask")
    assert refused.returncode == 2 and "template candidate '{text_a} no mask' does not parse" in refused.stderr
