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
