"""The benchmark grid's runner logic on tiny LM-BFF-layout data with a fake method (no model is loaded)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from benchmarks.grid.data import capped_sample, load_cell, per_class_subsample
from benchmarks.grid.methods import MethodResult
from benchmarks.grid.records import Cell, PeakMemory, read_all, read_record, write_record
from benchmarks.grid.report import Grid, render, write_report
from benchmarks.grid.runner import grid_cells, run_grid


SEEDS = (13, 21, 42, 87, 100)


def _write_sst2(root, n_test: int = 30) -> None:
    """SST-2 in LM-BFF's layout: 16 examples per class per seed, and a test file one level up."""
    task = root / "SST-2"
    for seed in SEEDS:
        folder = task / f"16-{seed}"
        folder.mkdir(parents=True)
        for split in ("train", "dev"):
            rows = [f"{split} {seed} sentence {i}\t{i % 2}" for i in range(32)]
            (folder / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    rows = [f"test sentence {i}\t{i % 2}" for i in range(n_test)]
    (task / "test.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")


def _write_snli(root) -> None:
    """SNLI without a test file, where seed 21's dev repeats one example of seed 13's train split."""
    names = ("entailment", "neutral", "contradiction")
    for seed in SEEDS:
        folder = root / "SNLI" / f"16-{seed}"
        folder.mkdir(parents=True)
        for split in ("train", "dev"):
            rows = [f"{split} {seed} premise {i}\thypothesis {i}\t{names[i % 3]}" for i in range(48)]
            if seed == 21 and split == "dev":
                rows[0] = f"train 13 premise 0\thypothesis 0\t{names[0]}"
            (folder / f"{split}.tsv").write_text("sentence1\tsentence2\tgold_label\n" + "\n".join(rows) + "\n")


@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path / "fewshot"
    _write_sst2(root)
    return root


class FakeMethod:
    """Predicts the label of a text from its parity; counts its runs."""

    name = "fake"

    def __init__(self) -> None:
        self.runs = 0

    def run(self, data) -> MethodResult:
        self.runs += 1
        pred = [int(t.split()[-1]) % 2 for t in data.test["text_a"]]
        pred[0] = 1 - pred[0]  # one mistake, so the score is not trivially 1
        return MethodResult(pred, 0.5, len(data.train), len(data.test), {"timing": "cold"})


def _run(data_dir, out, method, shots=(4, 1), seeds=(13, 21)):
    cells = grid_cells(["SST-2"], ["fake"], shots, seeds)
    return run_grid(cells, {"fake": lambda: method}, data_dir, out, test_cap=20, show_progress=False)


def test_subsample_is_per_class_seeded_and_nested():
    labels = [i % 3 for i in range(48)]
    four = per_class_subsample(labels, 4, seed=13)
    one = per_class_subsample(labels, 1, seed=13)
    assert sorted(labels[i] for i in four) == [0] * 4 + [1] * 4 + [2] * 4
    assert set(one) <= set(four)
    assert four == per_class_subsample(labels, 4, seed=13)
    assert four != per_class_subsample(labels, 4, seed=21)
    with pytest.raises(ValueError, match="shots"):
        per_class_subsample(labels, 0, seed=13)


def test_capped_sample_is_fixed_and_only_when_needed():
    assert capped_sample(10, 20) == list(range(10))
    sample = capped_sample(1000, 50)
    assert len(sample) == 50 and sample == sorted(sample) == capped_sample(1000, 50)


def test_load_cell_samples_train_and_dev_to_the_shots(data_dir):
    cell = load_cell("SST-2", data_dir, shots=4, seed=13, test_cap=20)
    for split in (cell.train, cell.dev):
        assert sorted(split["label"]) == [0] * 4 + [1] * 4
    assert len(cell.test) == 20 and cell.info["test_total"] == 30 and cell.info["test_cap"] == 20
    assert len(load_cell("SST-2", data_dir, shots=16, seed=13, test_cap=None).train) == 32


def test_task_without_test_file_is_scored_on_other_seeds_dev_splits(tmp_path):
    _write_snli(tmp_path)
    cell = load_cell("SNLI", tmp_path, shots=16, seed=13, test_cap=None)
    pairs = set(zip(cell.test["text_a"], cell.test["text_b"]))
    assert ("train 13 premise 0", "hypothesis 0") not in pairs  # this seed's training example is left out
    assert not any(a.startswith(("dev 13", "train")) for a, _ in pairs)
    assert len(cell.test) == 4 * 48 - 1
    assert "no test file" in cell.info["test_source"]


def test_missing_task_folder_names_the_expected_layout(data_dir, tmp_path):
    cells = grid_cells(["cr"], ["fake"], [16], [13])
    with pytest.raises(FileNotFoundError, match=r"cr/16-<seed>/train\.csv.*cr/test\.csv"):
        run_grid(cells, {"fake": FakeMethod}, data_dir, tmp_path / "out", test_cap=20, show_progress=False)


def test_records_are_written_and_finished_cells_read_back(data_dir, tmp_path):
    out = tmp_path / "out"
    method = FakeMethod()
    assert _run(data_dir, out, method) == {"done": 4, "read_back": 0, "failed": 0}
    record = json.loads((out / "SST-2" / "fake" / "4-21.json").read_text())
    assert (record["task"], record["method"], record["shots"], record["seed"]) == ("SST-2", "fake", 4, 21)
    assert record["score"] == pytest.approx(19 / 20) and record["train_size"] == 8 and record["test_size"] == 20
    assert record["model_passes"] == 8 + 20 and record["peak_memory_mb"] > 0 and "torch" in record["versions"]
    assert not list(out.rglob("*.tmp"))
    again = FakeMethod()
    assert _run(data_dir, out, again) == {"done": 0, "read_back": 4, "failed": 0}
    assert again.runs == 0


def test_half_written_record_is_skipped_with_a_warning_and_rerun(data_dir, tmp_path, caplog):
    out = tmp_path / "out"
    _run(data_dir, out, FakeMethod())
    path = out / "SST-2" / "fake" / "1-13.json"
    path.write_text(path.read_text()[:40])
    method = FakeMethod()
    with caplog.at_level(logging.WARNING):
        assert _run(data_dir, out, method)["done"] == 1
    assert method.runs == 1 and "not a readable JSON record" in caplog.text
    assert read_record(path)["seed"] == 13


def test_foreign_json_is_skipped_by_the_report(data_dir, tmp_path, caplog):
    out = tmp_path / "out"
    _run(data_dir, out, FakeMethod())
    (out / "notes.json").write_text(json.dumps({"hello": "world"}))
    (out / "SST-2" / "broken.json").write_text("{")
    with caplog.at_level(logging.WARNING):
        records = read_all(out)
        text = write_report(out, tmp_path / "results", plots=False)
    assert len(records) == 4
    assert "notes.json" in caplog.text and "broken.json" in caplog.text
    assert "| SST-2 | 95.0 ± 0.0 (2 seeds) |" in text
    assert (tmp_path / "results" / "grid_report.md").read_text() == text


def test_record_of_another_cell_is_not_taken_for_this_one(tmp_path, caplog):
    path = Cell("SST-2", "fake", 4, 13).path(tmp_path)
    write_record(path, {"task": "SST-2", "method": "fake", "shots": 4, "seed": 21, "metric": "accuracy"})
    assert read_record(path) is None  # no score: not a grid record
    write_record(
        path,
        {"task": "SST-2", "method": "fake", "shots": 4, "seed": 21, "metric": "accuracy", "score": 1.0,
         "train_seconds": 0.0},
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        assert read_record(path, Cell("SST-2", "fake", 4, 13)) is None
    assert "another cell" in caplog.text


def test_failing_method_leaves_its_cell_unfinished(data_dir, tmp_path):
    class Broken(FakeMethod):
        def run(self, data):
            raise RuntimeError("boom")

    out = tmp_path / "out"
    assert _run(data_dir, out, Broken(), shots=(1,), seeds=(13,)) == {"done": 0, "read_back": 0, "failed": 1}
    assert not list(out.rglob("*.json"))


def test_report_compares_dect_with_its_peers():
    def rec(method, task, score, seed, **details):
        return {"task": task, "method": method, "shots": 16, "seed": seed, "metric": "accuracy", "score": score,
                "train_seconds": 1.0, "model_passes": 10, "peak_memory_mb": 100.0, "test_source": "t",
                "details": details}  # fmt: skip

    records = [rec("dect", t, s, 13, timing="cold", fit_over_inference=1.05) for t, s in (("SST-2", 0.9), ("cr", 0.6))]
    records += [rec("linear_probe", t, s, 13) for t, s in (("SST-2", 0.8), ("cr", 0.8))]
    text = render(Grid(records))
    assert "DecT is NOT ahead of linear probe: 75.0 vs 80.0 (mean over 2 tasks); behind on cr (60.0 vs 80.0)." in text
    assert "within 1.1x" in text and "median fit / plain-inference ratio 1.05" in text


def test_report_pairs_a_peer_run_on_fewer_seeds():
    """A peer at a larger budget, run on one seed of five, is compared with DecT on that seed alone."""

    def rec(method, score, seed):
        return {"task": "SST-2", "method": method, "shots": 16, "seed": seed, "metric": "accuracy", "score": score,
                "train_seconds": 1.0, "model_passes": 10, "peak_memory_mb": 100.0, "test_source": "t"}  # fmt: skip

    records = [rec("dect", s, seed) for s, seed in ((0.9, 13), (0.5, 21), (0.5, 42))]
    records += [rec("prompt_tuning_e8", 0.8, 13)] + [rec("prompt_tuning", 0.7, seed) for seed in (13, 21, 42)]
    text = render(Grid(records))
    assert "DecT is ahead of prompt tuning (8 epochs): 90.0 vs 80.0 (mean over 1 tasks, paired on seed 13)" in text
    assert "DecT is NOT ahead of prompt tuning: 63.3 vs 70.0 (mean over 1 tasks); behind" in text


def test_peak_memory_is_measured():
    with PeakMemory() as mem:
        block = bytearray(50_000_000)
    del block
    assert mem.mb > 40 and mem.source


@pytest.mark.parametrize("name", ["prompt_tuning", "lmbff_ft", "prompt_tuning_e8", "lmbff_ft_s96"])
def test_methods_that_train_the_model_run_a_cell(name, data_dir, tmp_path, bpe_tokenizer):
    """Prompt tuning and LM-BFF fine-tuning as grid methods, on a tiny Llama: they train, predict the test
    subsample and hand the base model back unchanged for the next cell."""
    from conftest import tiny_llama

    from benchmarks.grid.trained_methods import TRAINED_METHODS

    model = tiny_llama(bpe_tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = TRAINED_METHODS[name](test_cap=6, loader=lambda: (model, bpe_tokenizer))
    out = tmp_path / "grid"
    cells = grid_cells(["SST-2"], [name], [4], [13, 21])
    counts = run_grid(cells, {name: lambda: method}, data_dir, out, test_cap=20, show_progress=False)
    assert counts == {"done": 2, "read_back": 0, "failed": 0}
    record = read_record(cells[1].path(out), cells[1])
    assert record["test_size"] == 6 and record["train_seconds"] > 0 and record["train_passes"] > 0
    assert "6 of the 20 capped test rows" in record["details"]["test_subsample"]
    base = method.base if name.startswith("lmbff_ft") else method.prompt_model.get_base_model()
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
