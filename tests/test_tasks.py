import pytest

from peft_dect.tasks import TASKS, get_task, load_task, packaged_data_dir


def test_packaged_sst2_split_loads():
    data = load_task("SST-2", packaged_data_dir(), k=16, seed=13)
    assert {k: len(v) for k, v in data.items()} == {"train": 32, "validation": 32, "test": 872}
    assert data["train"].features["label"].names == ["negative", "positive"]
    assert sum(data["train"]["label"]) == 16
    first = data["train"][0]
    assert first["text_a"] == "nothing happens , and it happens to flat characters ." and first["label"] == 0


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="known tasks: SST-2"):
        get_task("imdb")


def test_missing_data_folder_names_the_layout(tmp_path):
    with pytest.raises(ValueError, match="LM-BFF's k-shot layout"):
        load_task("cr", tmp_path, seed=13)


def test_every_task_template_fits_its_method():
    from peft_dect.prompting import Template

    for spec in TASKS.values():
        Template(spec.template)
        Template(spec.causal_template).check_causal()
        assert Template(spec.template).is_pair == Template(spec.causal_template).is_pair


def test_tsv_rows_with_missing_fields_name_the_line(tmp_path):
    folder = tmp_path / "RTE" / "16-13"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly\n")
    (folder / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(ValueError, match="train.tsv:3: expected 4 tab-separated fields"):
        load_task("RTE", tmp_path, seed=13)


def test_all_fifteen_lmbff_tasks_are_known():
    names = {spec.name for spec in TASKS.values()}
    assert names == {
        "SST-2", "sst-5", "mr", "cr", "mpqa", "subj", "trec", "CoLA",
        "MNLI", "SNLI", "QNLI", "RTE", "MRPC", "QQP", "STS-B",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("task", "classes"),
    [("mr", ["negative", "positive"]), ("subj", ["subjective", "objective"]), ("trec", None)],
)
def test_headerless_csv_tasks_load(tmp_path, task, classes):
    folder = tmp_path / task / "16-42"
    folder.mkdir(parents=True)
    rows = '0,"a dull, tedious film"\n1,a moving film\n'
    (folder / "train.csv").write_text(rows + ('5,"How many, exactly?"\n' if task == "trec" else ""))
    (folder / "dev.csv").write_text(rows)
    (tmp_path / task / "test.csv").write_text(rows)
    data = load_task(task, tmp_path, seed=42)
    assert {k: len(v) for k, v in data.items()} == {"train": 3 if task == "trec" else 2, "validation": 2, "test": 2}
    assert data["train"][0]["text_a"] == "a dull, tedious film"
    names = data["train"].features["label"].names
    assert names == (classes or ["description", "entity", "expression", "human", "location", "number"])
    if task == "trec":
        assert data["train"][2] == {"text_a": "How many, exactly?", "text_b": "", "label": 5}


def test_stsb_loads_float_scores(tmp_path):
    folder = tmp_path / "STS-B" / "16-13"
    folder.mkdir(parents=True)
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    row = "1\tmain-captions\timages\t2014\t0024\tnone\tnone\tsheep in a field.\tA sheep grazing.\t3.2\n"
    (folder / "train.tsv").write_text(head + row)
    (folder / "dev.tsv").write_text(head + row.replace("3.2", "0.5"))
    data = load_task("STS-B", tmp_path)
    assert data["train"][0]["label"] == pytest.approx(3.2) and data["validation"][0]["label"] == pytest.approx(0.5)
    assert data["train"][0]["text_b"] == "A sheep grazing."
    (folder / "dev.tsv").write_text(head + row.replace("3.2", "high"))
    with pytest.raises(ValueError, match="not a number"):
        load_task("STS-B", tmp_path)


def test_missing_data_dir_names_the_layout(tmp_path):
    with pytest.raises(ValueError, match=r"<data_dir>/<TASK>/<k>-<seed>"):
        load_task("mr", tmp_path / "nowhere")


def test_task_metrics_match_sklearn_and_scipy():
    import numpy as np
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    from peft_dect.tasks import main_metric, task_metric

    rng = np.random.default_rng(0)
    ref, pred = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    assert task_metric("SST-2", pred, ref) == {"accuracy": pytest.approx(accuracy_score(ref, pred))}
    assert task_metric("MRPC", pred, ref)["f1"] == pytest.approx(f1_score(ref, pred))
    assert task_metric("QQP", pred, ref)["f1"] == pytest.approx(f1_score(ref, pred))
    assert task_metric("CoLA", pred, ref)["matthews_correlation"] == pytest.approx(matthews_corrcoef(ref, pred))
    scores, guess = rng.integers(0, 6, 40).astype(float), rng.normal(size=40)  # ties in the references
    got = task_metric("STS-B", guess, scores)
    assert got["pearson"] == pytest.approx(pearsonr(guess, scores)[0])
    assert got["spearman"] == pytest.approx(spearmanr(guess, scores)[0])
    assert [main_metric(t) for t in ("RTE", "MRPC", "CoLA", "STS-B")] == [
        "accuracy", "f1", "matthews_correlation", "pearson",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="equally long"):
        task_metric("RTE", [1, 0], [1])
