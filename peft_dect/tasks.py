"""Task registry: LM-BFF k-shot data loaders, default templates, label words and metrics for its 15 tasks.

The k-shot layout is the one LM-BFF's `tools/generate_k_shot_data.py` writes:
``<data_dir>/<TASK>/<k>-<seed>/{train,dev}.<ext>`` and a test file either beside them or one level up
(``<data_dir>/<TASK>/test.<ext>``). Every loader returns a `datasets.DatasetDict` with columns ``text_a``
(``text_b`` for pairs) and ``label`` (a `ClassLabel` whose names are the keys of the task's label words; a float
score for the regression task STS-B). `task_metric` scores predictions with the task's metric.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class TaskSpec:
    """How to read one task and how to prompt for it."""

    name: str
    ext: str  # "tsv" (GLUE-style, no quoting) or "csv" (label,sentence, no header)
    reader: Callable[[Path], list[tuple[str, str | None, str]]]  # rows of (text_a, text_b, raw label)
    label_map: dict[str, str]  # raw label -> class name
    label_words: dict[str, list[str]]  # class name -> words (LM-BFF's manual choice)
    template: str  # masked-LM template (LM-BFF's manual template)
    causal_template: str  # the same prompt for causal LMs: it ends at the mask
    metric: str = "accuracy"
    regression: bool = False  # STS-B: float labels; the two "classes" are LM-BFF's low/high label words
    dev_name: str = "dev"
    test_names: tuple[str, ...] = field(default=("test",))

    @property
    def classes(self) -> list[str]:
        return list(self.label_words)

    def template_for(self, kind: str) -> str:
        return self.causal_template if kind == "causal" else self.template


def _read_tsv(path: Path, header: bool = True, encoding: str = "utf-8"):
    with open(path, encoding=encoding, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quotechar=None, quoting=csv.QUOTE_NONE))
    if not header:
        return rows, None
    return rows[1:], rows[0]


def _tsv(text_cols: tuple[str, ...], label_col: str, encoding: str = "utf-8", label_last: bool = False):
    def read(path: Path):
        rows, head = _read_tsv(path, encoding=encoding)
        idx = [head.index(c) for c in text_cols]
        li = head.index(label_col)
        out = []
        for line, row in enumerate(rows, start=2):
            if len(row) < len(head):
                raise ValueError(f"{path}:{line}: expected {len(head)} tab-separated fields, got {len(row)}.")
            a = row[idx[0]]
            b = row[idx[1]] if len(idx) > 1 else None
            out.append((a, b, row[-1] if label_last else row[li]))
        return out

    return read


def _csv(path: Path):
    with open(path, encoding="utf-8", newline="") as fh:
        return [(row[1], None, row[0]) for row in csv.reader(fh) if row]


def _tsv_float(text_cols: tuple[str, str], label_col: str):
    read = _tsv(text_cols, label_col)

    def parse(path: Path):
        rows = read(path)
        for line, (_, _, raw) in enumerate(rows, start=2):
            try:
                float(raw)
            except ValueError:
                raise ValueError(f"{path}:{line}: the score {raw!r} is not a number.") from None
        return rows

    return parse


def _cola(path: Path):
    rows, _ = _read_tsv(path, header=False)
    return [(row[3], None, row[1]) for row in rows if row]


BINARY_SENTIMENT = {"negative": ["terrible"], "positive": ["great"]}
SENTIMENT_PROMPT = "{text_a} It was {mask}."
NLI_PROMPT = "{text_a}? {mask}, {text_b}"
NLI_CAUSAL = "{text_a}\nQuestion: {text_b} True or false?\nAnswer:{mask}"

TASKS: dict[str, TaskSpec] = {
    spec.name.lower(): spec
    for spec in [
        TaskSpec(
            "SST-2",
            "tsv",
            _tsv(("sentence",), "label"),
            {"0": "negative", "1": "positive"},
            BINARY_SENTIMENT,
            SENTIMENT_PROMPT,
            "{text_a} In summary, it was {mask}.",
        ),
        TaskSpec(
            "sst-5",
            "csv",
            _csv,
            {"0": "very negative", "1": "negative", "2": "neutral", "3": "positive", "4": "very positive"},
            {
                "very negative": ["terrible"],
                "negative": ["bad"],
                "neutral": ["okay"],
                "positive": ["good"],
                "very positive": ["great"],
            },
            SENTIMENT_PROMPT,
            "{text_a} In summary, it was {mask}.",
        ),
        TaskSpec(
            "cr",
            "csv",
            _csv,
            {"0": "negative", "1": "positive"},
            BINARY_SENTIMENT,
            SENTIMENT_PROMPT,
            "{text_a} In summary, it was {mask}.",
        ),
        TaskSpec(
            "mpqa",
            "csv",
            _csv,
            {"0": "negative", "1": "positive"},
            BINARY_SENTIMENT,
            SENTIMENT_PROMPT,
            "{text_a} In summary, it was {mask}.",
        ),
        TaskSpec(
            "CoLA",
            "tsv",
            _cola,
            {"0": "unacceptable", "1": "acceptable"},
            {"unacceptable": ["incorrect"], "acceptable": ["correct"]},
            "{text_a} This is {mask}.",
            "{text_a} Grammatically, this sentence is {mask}.",
            metric="matthews_correlation",
        ),
        TaskSpec(
            "MRPC",
            "tsv",
            _tsv(("#1 String", "#2 String"), "Quality", encoding="utf-8-sig"),
            {"0": "not_equivalent", "1": "equivalent"},
            {"not_equivalent": ["No"], "equivalent": ["Yes"]},
            "{text_a}{mask}, {text_b}",
            "{text_a}\n{text_b}\nDo both sentences mean the same? Answer:{mask}",
            metric="f1",
        ),
        TaskSpec(
            "QQP",
            "tsv",
            _tsv(("question1", "question2"), "is_duplicate"),
            {"0": "not_duplicate", "1": "duplicate"},
            {"not_duplicate": ["No"], "duplicate": ["Yes"]},
            "{text_a}{mask}, {text_b}",
            "{text_a}\n{text_b}\nAre both questions the same? Answer:{mask}",
            metric="f1",
        ),
        TaskSpec(
            "QNLI",
            "tsv",
            _tsv(("question", "sentence"), "label"),
            {"entailment": "entailment", "not_entailment": "not_entailment"},
            {"entailment": ["Yes"], "not_entailment": ["No"]},
            NLI_PROMPT,
            "{text_b}\nQuestion: does this answer {text_a}? Answer:{mask}",
        ),
        TaskSpec(
            "RTE",
            "tsv",
            _tsv(("sentence1", "sentence2"), "label"),
            {"entailment": "entailment", "not_entailment": "not_entailment"},
            {"entailment": ["Yes"], "not_entailment": ["No"]},
            NLI_PROMPT,
            "{text_a}\nQuestion: {text_b} Yes or no?\nAnswer:{mask}",
        ),
        TaskSpec(
            "SNLI",
            "tsv",
            _tsv(("sentence1", "sentence2"), "gold_label", label_last=True),
            {"entailment": "entailment", "neutral": "neutral", "contradiction": "contradiction"},
            {"entailment": ["Yes"], "neutral": ["Maybe"], "contradiction": ["No"]},
            NLI_PROMPT,
            "{text_a}\nQuestion: {text_b} Yes, no, or maybe?\nAnswer:{mask}",
        ),
        TaskSpec(
            "STS-B",
            "tsv",
            _tsv_float(("sentence1", "sentence2"), "score"),
            {},
            {"low": ["No"], "high": ["Yes"]},
            "{text_a}{mask}, {text_b}",
            "{text_a}\n{text_b}\nDo both sentences mean the same? Answer:{mask}",
            metric="pearson_spearman",
            regression=True,
        ),
        TaskSpec(
            "mr",
            "csv",
            _csv,
            {"0": "negative", "1": "positive"},
            BINARY_SENTIMENT,
            SENTIMENT_PROMPT,
            "{text_a} In summary, it was {mask}.",
        ),
        TaskSpec(
            "subj",
            "csv",
            _csv,
            {"0": "subjective", "1": "objective"},
            {"subjective": ["subjective"], "objective": ["objective"]},
            "{text_a} This is {mask}.",
            "{text_a} Is this sentence a subjective opinion or an objective fact? It is {mask}.",
        ),
        TaskSpec(
            "trec",
            "csv",
            _csv,
            {"0": "description", "1": "entity", "2": "expression", "3": "human", "4": "location", "5": "number"},
            {
                "description": ["Description"],
                "entity": ["Entity"],
                "expression": ["Expression"],
                "human": ["Human"],
                "location": ["Location"],
                "number": ["Number"],
            },
            "{mask}: {text_a}",
            "Question: {text_a}\nThe answer is a {mask}",
        ),
        TaskSpec(
            "MNLI",
            "tsv",
            _tsv(("sentence1", "sentence2"), "gold_label", label_last=True),
            {"entailment": "entailment", "neutral": "neutral", "contradiction": "contradiction"},
            {"entailment": ["Yes"], "neutral": ["Maybe"], "contradiction": ["No"]},
            NLI_PROMPT,
            "{text_a}\nQuestion: {text_b} Yes, no, or maybe?\nAnswer:{mask}",
            dev_name="dev_matched",
            test_names=("test_matched",),
        ),
    ]
}


def get_task(name: str) -> TaskSpec:
    """The spec of a task by name (case-insensitive)."""
    try:
        return TASKS[name.lower()]
    except KeyError:
        raise ValueError(f"Unknown task {name!r}; known tasks: {', '.join(t.name for t in TASKS.values())}.") from None


def _find(folder: Path, stem: str, ext: str) -> Path | None:
    for candidate in (folder / f"{stem}.{ext}", folder.parent / f"{stem}.{ext}"):
        if candidate.is_file():
            return candidate
    return None


def load_task(name: str, data_dir: str | Path, k: int = 16, seed: int = 13):
    """Load the k-shot train/dev splits (and the test split when present) of a task as a `DatasetDict`."""
    import datasets

    spec = get_task(name)
    folder = Path(data_dir) / spec.name / f"{k}-{seed}"
    if not Path(data_dir).is_dir():
        raise ValueError(
            f"The data folder {data_dir} does not exist: give the folder of LM-BFF's k-shot layout, "
            f"<data_dir>/<TASK>/<k>-<seed>/{{train,dev}}.<tsv|csv> (e.g. {Path(data_dir) / spec.name / '16-13'})."
        )
    if not folder.is_dir():
        raise ValueError(
            f"No data for {spec.name} {k}-shot seed {seed}: expected the folder {folder} holding "
            f"train.{spec.ext} and {spec.dev_name}.{spec.ext} (LM-BFF's k-shot layout, "
            "<data_dir>/<TASK>/<k>-<seed>/), with the test file beside them or one level up."
        )
    label_feature = datasets.Value("float32") if spec.regression else datasets.ClassLabel(names=spec.classes)
    features = datasets.Features(
        {"text_a": datasets.Value("string"), "text_b": datasets.Value("string"), "label": label_feature}
    )
    splits = {}
    for split, stem in [("train", "train"), ("validation", spec.dev_name)] + [("test", t) for t in spec.test_names]:
        path = _find(folder, stem, spec.ext)
        if path is None:
            if split == "test":
                continue
            raise ValueError(f"Missing {stem}.{spec.ext} in {folder}.")
        rows = spec.reader(path)
        labels = []
        for _, _, raw in rows:
            if spec.regression:
                labels.append(float(raw))
                continue
            if raw not in spec.label_map:
                raise ValueError(f"{path}: unknown label {raw!r} for {spec.name} (known: {list(spec.label_map)}).")
            labels.append(spec.classes.index(spec.label_map[raw]))
        columns = {"text_a": [r[0] for r in rows], "text_b": [r[1] or "" for r in rows], "label": labels}
        splits[split] = datasets.Dataset.from_dict(columns, features=features)
    return datasets.DatasetDict(splits)


def packaged_data_dir() -> Path:
    """The folder of the SST-2 16-shot (seed 13) split shipped with peft-dect for the demo and tests."""
    return Path(__file__).parent / "data"


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    values, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else 0.0


METRICS = ("accuracy", "f1", "matthews_correlation", "pearson", "spearman")


def metric_value(name: str, predictions, references) -> float:
    """One metric by name: accuracy, F1 of class 1, Matthews correlation (binary), Pearson or Spearman correlation."""
    pred, ref = np.asarray(predictions, dtype=float), np.asarray(references, dtype=float)
    if name == "accuracy":
        return float((pred == ref).mean())
    if name == "f1":
        tp = float(((pred == 1) & (ref == 1)).sum())
        fp, fn = float(((pred == 1) & (ref != 1)).sum()), float(((pred != 1) & (ref == 1)).sum())
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    if name == "matthews_correlation":
        tp, tn = float(((pred == 1) & (ref == 1)).sum()), float(((pred == 0) & (ref == 0)).sum())
        fp, fn = float(((pred == 1) & (ref == 0)).sum()), float(((pred == 0) & (ref == 1)).sum())
        denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        return float((tp * tn - fp * fn) / denom) if denom > 0 else 0.0
    if name == "pearson":
        return _pearson(pred, ref)
    if name == "spearman":
        return _pearson(_ranks(pred), _ranks(ref))
    raise ValueError(f"Unknown metric {name!r}; known metrics: {', '.join(METRICS)}.")


def task_metric(task: str, predictions, references) -> dict[str, float]:
    """The task's metric(s) as in LM-BFF / GLUE: accuracy; F1 (positive class 1) for MRPC and QQP, with accuracy;
    Matthews correlation for CoLA; Pearson and Spearman correlation for STS-B (float predictions).

    The issue asked for `evaluate`, but `evaluate.load("accuracy")` fetches its metric script from the Hub and fails
    offline (as on machines without Hub access), so the same formulas are computed here with numpy; the tests check
    them against scikit-learn and scipy.
    """
    spec = get_task(task)
    pred, ref = np.asarray(predictions, dtype=float), np.asarray(references, dtype=float)
    if pred.shape != ref.shape or pred.ndim != 1 or not len(ref):
        raise ValueError(f"Expected two equally long, non-empty 1-D sequences, got {pred.shape} and {ref.shape}.")
    names = (
        ("pearson", "spearman")
        if spec.regression
        else ("accuracy",) + ((spec.metric,) if spec.metric in ("f1", "matthews_correlation") else ())
    )
    return {name: metric_value(name, pred, ref) for name in names}


def main_metric(task: str) -> str:
    """The name of the task's headline metric in `task_metric`'s result (Pearson for STS-B)."""
    spec = get_task(task)
    return "pearson" if spec.regression else spec.metric


def load_files(
    files: dict[str, str],
    classes: list[str],
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
):
    """A user's own CSV/TSV/JSON Lines files as the same `DatasetDict` layout as `load_task`.

    `files` maps split names (e.g. ``train``, ``validation``, ``test``) to paths; labels are class names of
    `classes` or integer indices into it. A `datasets.Dataset` with these columns works with every method as is.
    """
    import datasets

    from .data import read_labels
    from .io import read_columns, require_columns

    features = datasets.Features(
        {
            "text_a": datasets.Value("string"),
            "text_b": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(classes)),
        }
    )
    splits = {}
    for split, path in files.items():
        columns = read_columns(str(path))
        require_columns(
            columns, str(path), [text_column, label_column] + ([text_pair_column] if text_pair_column else [])
        )
        labels = read_labels({label_column: columns[label_column]}, list(classes), label_column)
        splits[split] = datasets.Dataset.from_dict(
            {
                "text_a": [str(t) for t in columns[text_column]],
                "text_b": [str(t) for t in columns[text_pair_column]] if text_pair_column else [""] * len(labels),
                "label": labels.tolist(),
            },
            features=features,
        )
    return datasets.DatasetDict(splits)
