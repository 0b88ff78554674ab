"""Task registry: LM-BFF k-shot data loaders, default templates, label words and metrics for its 15 tasks.

The k-shot layout is the one LM-BFF's `tools/generate_k_shot_data.py` writes:
``<data_dir>/<TASK>/<k>-<seed>/{train,dev}.<ext>`` and a test file either beside them or one level up
(``<data_dir>/<TASK>/test.<ext>``). Every loader returns a `datasets.DatasetDict` with columns ``text_a``
(``text_b`` for pairs) and ``label`` (a `ClassLabel` whose names are the keys of the task's label words; a float
score for the regression task STS-B). `task_metric` scores predictions with the task's metric.

Beside them, PolyAI's intent data sets: BANKING77 (`load_banking77`, 77 classes) and NLU++ (`load_nlupp`,
multi-label, with `sample_multilabel_k_shot` for a k-positive-rows-per-class split).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import datasets
import numpy as np

from .data import read_labels
from .io import read_columns, require_columns
from .metrics import metric_value


logger = logging.getLogger(__name__)


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
BINARY_LABELS = {"0": "negative", "1": "positive"}
SENTIMENT_PROMPT = "{text_a} It was {mask}."
SENTIMENT_CAUSAL = "{text_a} In summary, it was {mask}."
NLI_PROMPT = "{text_a}? {mask}, {text_b}"
PAIR_PROMPT = "{text_a}{mask}, {text_b}"
PARAPHRASE_CAUSAL = "{text_a}\n{text_b}\nDo both sentences mean the same? Answer:{mask}"
NLI3_CAUSAL = "{text_a}\nQuestion: {text_b} Yes, no, or maybe?\nAnswer:{mask}"
ENTAILMENT = {"entailment": "entailment", "not_entailment": "not_entailment"}
ENTAILMENT_WORDS = {"entailment": ["Yes"], "not_entailment": ["No"]}
NLI3 = {"entailment": "entailment", "neutral": "neutral", "contradiction": "contradiction"}
NLI3_WORDS = {"entailment": ["Yes"], "neutral": ["Maybe"], "contradiction": ["No"]}


def _sentiment(name: str, ext: str = "csv", reader=_csv) -> TaskSpec:
    """A binary sentiment task with LM-BFF's prompt and words (SST-2, CR, MPQA, MR)."""
    return TaskSpec(name, ext, reader, BINARY_LABELS, BINARY_SENTIMENT, SENTIMENT_PROMPT, SENTIMENT_CAUSAL)


SST5_WORDS = {"very negative": ["terrible"], "negative": ["bad"], "neutral": ["okay"], "positive": ["good"]}
TREC_CLASSES = ("description", "entity", "expression", "human", "location", "number")

TASKS: dict[str, TaskSpec] = {
    spec.name.lower(): spec
    for spec in [
        _sentiment("SST-2", "tsv", _tsv(("sentence",), "label")),
        TaskSpec(
            "sst-5", "csv", _csv, {str(i): c for i, c in enumerate([*SST5_WORDS, "very positive"])},
            {**SST5_WORDS, "very positive": ["great"]}, SENTIMENT_PROMPT, SENTIMENT_CAUSAL,
        ),
        _sentiment("cr"),
        _sentiment("mpqa"),
        TaskSpec(
            "CoLA", "tsv", _cola, {"0": "unacceptable", "1": "acceptable"},
            {"unacceptable": ["incorrect"], "acceptable": ["correct"]}, "{text_a} This is {mask}.",
            "{text_a} Grammatically, this sentence is {mask}.", metric="matthews_correlation",
        ),
        TaskSpec(
            "MRPC", "tsv", _tsv(("#1 String", "#2 String"), "Quality", encoding="utf-8-sig"),
            {"0": "not_equivalent", "1": "equivalent"}, {"not_equivalent": ["No"], "equivalent": ["Yes"]},
            PAIR_PROMPT, PARAPHRASE_CAUSAL, metric="f1",
        ),
        TaskSpec(
            "QQP", "tsv", _tsv(("question1", "question2"), "is_duplicate"),
            {"0": "not_duplicate", "1": "duplicate"}, {"not_duplicate": ["No"], "duplicate": ["Yes"]}, PAIR_PROMPT,
            "{text_a}\n{text_b}\nAre both questions the same? Answer:{mask}", metric="f1",
        ),
        TaskSpec(
            "QNLI", "tsv", _tsv(("question", "sentence"), "label"), ENTAILMENT, ENTAILMENT_WORDS, NLI_PROMPT,
            "{text_b}\nQuestion: does this answer {text_a}? Answer:{mask}",
        ),
        TaskSpec(
            "RTE", "tsv", _tsv(("sentence1", "sentence2"), "label"), ENTAILMENT, ENTAILMENT_WORDS, NLI_PROMPT,
            "{text_a}\nQuestion: {text_b} Yes or no?\nAnswer:{mask}",
        ),
        TaskSpec(
            "SNLI", "tsv", _tsv(("sentence1", "sentence2"), "gold_label", label_last=True), NLI3, NLI3_WORDS,
            NLI_PROMPT, NLI3_CAUSAL,
        ),
        TaskSpec(
            "STS-B", "tsv", _tsv_float(("sentence1", "sentence2"), "score"), {}, {"low": ["No"], "high": ["Yes"]},
            PAIR_PROMPT, PARAPHRASE_CAUSAL, metric="pearson_spearman", regression=True,
        ),
        _sentiment("mr"),
        TaskSpec(
            "subj", "csv", _csv, {"0": "subjective", "1": "objective"},
            {"subjective": ["subjective"], "objective": ["objective"]}, "{text_a} This is {mask}.",
            "{text_a} Is this sentence a subjective opinion or an objective fact? It is {mask}.",
        ),
        TaskSpec(
            "trec", "csv", _csv, {str(i): c for i, c in enumerate(TREC_CLASSES)},
            {c: [c.capitalize()] for c in TREC_CLASSES}, "{mask}: {text_a}",
            "Question: {text_a}\nThe answer is a {mask}",
        ),
        TaskSpec(
            "MNLI", "tsv", _tsv(("sentence1", "sentence2"), "gold_label", label_last=True), NLI3, NLI3_WORDS,
            NLI_PROMPT, NLI3_CAUSAL, dev_name="dev_matched", test_names=("test_matched",),
        ),
    ]
}  # fmt: skip


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


def task_metric(task: str, predictions, references) -> dict[str, float]:
    """The task's metric(s) as in LM-BFF / GLUE: accuracy; F1 (positive class 1) for MRPC and QQP, with accuracy;
    Matthews correlation for CoLA; Pearson and Spearman correlation for STS-B (float predictions).

    The formulas are `peft_dect.metrics`' (numpy, offline).
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


def sample_k_shot(
    dataset, k: int, seed: int, *, label_column: str = "label", strict: bool = False
) -> datasets.DatasetDict:
    """A k-shot split of any labelled dataset: `k` rows per class for training and `k` more for a dev split.

    As LM-BFF's `generate_k_shot_data`: the rows are shuffled with `seed`, then each class's first `k` rows go to
    `train` and its next `k` to `validation`, so the two splits are disjoint and a larger `k` with the same seed
    contains a smaller one. A class with fewer than `2 k` rows is filled as far as it goes, with a warning that
    counts the missing rows (an error with `strict=True`); a class with no row at all is an error.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (rows per class), got {k!r}.")
    if label_column not in dataset.column_names:
        raise ValueError(f"The label column {label_column!r} is not in the data (columns: {dataset.column_names}).")
    labels = list(dataset[label_column])
    order = np.random.RandomState(seed).permutation(len(labels))
    per_class: dict = {}
    for i in order:
        per_class.setdefault(labels[i], []).append(int(i))
    names = getattr(dataset.features.get(label_column), "names", None)
    classes = list(range(len(names))) if names is not None else sorted(per_class, key=str)
    empty = [names[c] if names is not None else c for c in classes if c not in per_class]
    if empty:
        raise ValueError(f"Classes {empty} have no row in the data: a k-shot split needs examples of every class.")
    short = {c: 2 * k - len(per_class[c]) for c in classes if len(per_class[c]) < 2 * k}
    if short:
        shown = {names[c] if names is not None else c: n for c, n in short.items()}
        message = f"{len(short)} class(es) have fewer than 2 x {k} rows for train and dev; missing rows: {shown}."
        if strict:
            raise ValueError(message + " Lower k, or pass strict=False to use what there is.")
        logger.warning("%s The splits use what there is.", message)
    train = sorted(i for c in classes for i in per_class[c][:k])
    dev = sorted(i for c in classes for i in per_class[c][k : 2 * k])
    return datasets.DatasetDict({"train": dataset.select(train), "validation": dataset.select(dev)})


def read_rfc4180(path: Path) -> dict[str, list[str]]:
    """Columns of a CSV file with a header row, quoted fields spanning lines allowed (BANKING77 has some: their line
    breaks become spaces, as a prompt has no use for them)."""
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError(f"{path} is empty; it needs a header row and data rows.")
    head, body = rows[0], [r for r in rows[1:] if r]
    bad = next((i for i, r in enumerate(body) if len(r) != len(head)), None)
    if bad is not None:
        raise ValueError(f"{path}: data row {bad + 1} has {len(body[bad])} fields, the header {len(head)}.")
    return {name: [" ".join(r[j].split()) for r in body] for j, name in enumerate(head)}


# BANKING77's prompt: the intent names themselves are the label words (`card_arrival` -> `card arrival`)
BANKING77_TEMPLATE = "{text_a} This banking question is about {mask}."
BANKING77_CAUSAL = "{text_a}\nThis banking question is about {mask}"


def load_banking77(data_dir: str | Path) -> datasets.DatasetDict:
    """BANKING77 (PolyAI, CC BY 4.0): `train` and `test` with columns `text` and `label` (a ClassLabel of the 77
    intent names in `categories.json` order). `data_dir` holds `train.csv`, `test.csv` and `categories.json`.
    Prompt it with `BANKING77_TEMPLATE` / `BANKING77_CAUSAL` and `label_words_from_names(data["train"])`."""
    folder = Path(data_dir)
    missing = [f for f in ("train.csv", "test.csv", "categories.json") if not (folder / f).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a BANKING77 folder: {missing} missing (PolyAI's banking_data files).")
    names = json.loads((folder / "categories.json").read_text(encoding="utf-8"))
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    splits = {}
    for split in ("train", "test"):
        columns = read_rfc4180(folder / f"{split}.csv")
        require_columns(columns, str(folder / f"{split}.csv"), ["text", "category"])
        unknown = sorted(set(columns["category"]) - set(names))
        if unknown:
            raise ValueError(f"{folder / f'{split}.csv'}: intents {unknown[:5]} are not in categories.json.")
        splits[split] = datasets.Dataset.from_dict(
            {"text": columns["text"], "label": [names.index(c) for c in columns["category"]]}, features=features
        )
    return datasets.DatasetDict(splits)


# NLU++'s prompt, as BANKING77's: the intent names are the label words (`how_long` -> `how long`); a sentence may
# carry several intents (or none), so a multi-label DecT adapter scores every class on its own
NLUPP_CAUSAL = "{text_a}\nThis banking message is about {mask}"
NLUPP_FOLDS = 20
NLUPP_SHARED_DOMAIN = "general"  # the ontology's domain-independent intents (affirm, how_long, ...)


class NLUPPData(NamedTuple):
    """NLU++ rows as columns, the class list and its descriptions (a tuple: ``columns, classes, descriptions =``)."""

    columns: dict[str, list]  # {"text": [str], "labels": [[intent, ...]], "fold": [int]}
    classes: list[str]  # intent names in ontology order
    descriptions: dict[str, str]  # intent -> the ontology's yes/no question ("is the intent to ...?")


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {what}") from None


def nlupp_classes(ontology: dict, domain: str = "banking") -> tuple[list[str], dict[str, str]]:
    """The intents of a domain in ontology order, and their descriptions.

    The ontology tags each intent with domains; the generic intents (`affirm`, `how_long`, `change`, ...) carry
    the tag ``general`` and are used by every domain's folds. So a domain's classes are its own intents plus the
    general ones: for ``banking`` that is 23 + 25 = 48, exactly the intents found in the 20 banking folds (the
    ``banking`` tag alone gives only 23 of them).
    """
    intents = ontology.get("intents") if isinstance(ontology, dict) else None
    if not isinstance(intents, dict) or not intents:
        raise ValueError('The NLU++ ontology needs an "intents" object {name: {"description", "domain"}}.')
    classes = [name for name, info in intents.items() if {domain, NLUPP_SHARED_DOMAIN} & set(info.get("domain", []))]
    if not any(domain in info.get("domain", []) for info in intents.values()):
        known = sorted({d for info in intents.values() for d in info.get("domain", [])} - {NLUPP_SHARED_DOMAIN})
        raise ValueError(f"No intent of the NLU++ ontology has the domain {domain!r}; its domains: {known}.")
    return classes, {name: str(intents[name].get("description", "")) for name in classes}


def load_nlupp(data_dir: str | Path, folds: list[int] | None = None, domain: str = "banking") -> NLUPPData:
    """NLU++ (PolyAI, CC BY 4.0; multi-label intents): the rows of `folds` (all 20 when None) of a domain.

    `data_dir` holds ``ontology.json`` and ``<domain>/fold0.json`` .. ``fold19.json`` (PolyAI's ``nlupp/data``
    folder), each fold a JSON list of ``{"text", "intents", "slots"}``; a row without ``intents`` has no intent (88
    banking sentences). Returns `NLUPPData`: columns ``text``, ``labels`` (a list of intent names per row) and
    ``fold``; the classes (see `nlupp_classes`: 48 for banking) and their descriptions. The slots are dropped.
    Prompt it with `NLUPP_CAUSAL` and `label_words_from_names(classes)`. The paper's low-data setting trains on
    one fold (about 100 sentences) and tests on the other 19; its high-data setting trains on 10 and tests on 10.
    """
    folder = Path(data_dir)
    layout = f"<data_dir>/ontology.json and <data_dir>/{domain}/fold0.json .. fold{NLUPP_FOLDS - 1}.json"
    if not folder.is_dir():
        raise ValueError(f"The NLU++ folder {folder} does not exist: give PolyAI's nlupp/data folder ({layout}).")
    if not (folder / "ontology.json").is_file():
        raise ValueError(
            f"{folder} has no ontology.json: copy nlupp/data/ontology.json of PolyAI's task-specific-datasets "
            f"beside the {domain}/ folder ({layout})."
        )
    if not (folder / domain).is_dir():
        present = sorted(p.name for p in folder.iterdir() if p.is_dir())
        raise ValueError(
            f"{folder} has no {domain}/ folder of folds (folders there: {present}): give the folder that holds "
            f"{domain}/, or another domain ({layout})."
        )
    if folds is None:
        folds = list(range(NLUPP_FOLDS))
    bad = [f for f in folds if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < NLUPP_FOLDS]
    if bad or not folds:
        raise ValueError(f"folds must be a non-empty list of fold numbers 0..{NLUPP_FOLDS - 1}, got {folds!r}.")
    missing = [f"fold{f}.json" for f in folds if not (folder / domain / f"fold{f}.json").is_file()]
    if missing:
        raise ValueError(f"{folder / domain} lacks {missing}: copy all {NLUPP_FOLDS} folds of the domain ({layout}).")
    ontology = _read_json(folder / "ontology.json", "copy PolyAI's nlupp/data/ontology.json again.")
    classes, descriptions = nlupp_classes(ontology, domain)
    known = set(classes)
    columns: dict[str, list] = {"text": [], "labels": [], "fold": []}
    for fold in folds:
        path = folder / domain / f"fold{fold}.json"
        rows = _read_json(path, "copy the fold again.")
        if not isinstance(rows, list):
            raise ValueError(f"{path} must hold a JSON list of {{'text', 'intents'}} objects, got {type(rows)}.")
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(f"{path}: row {i} has no string 'text'.")
            intents = row.get("intents") or []
            if not isinstance(intents, list) or not all(isinstance(x, str) for x in intents):
                raise ValueError(f"{path}: row {i}'s 'intents' must be a list of intent names, got {intents!r}.")
            unknown = sorted(set(intents) - known)
            if unknown:
                raise ValueError(
                    f"{path}: row {i} has intents {unknown} that ontology.json does not give for the domain "
                    f"{domain!r} (nor {NLUPP_SHARED_DOMAIN!r}): is the ontology that of the same release?"
                )
            columns["text"].append(row["text"])
            columns["labels"].append(list(dict.fromkeys(intents)))
            columns["fold"].append(fold)
    return NLUPPData(columns, classes, descriptions)


def sample_multilabel_k_shot(
    rows: dict[str, list],
    classes: list[str],
    k: int,
    seed: int,
    *,
    label_column: str = "labels",
    strict: bool = False,
) -> dict[str, list]:
    """A k-shot split of multi-label data: rows drawn until every class has at least `k` positive rows.

    Multi-label rows cannot be split k per class exactly, so the rule is greedy: the rows are shuffled with `seed`
    (as `sample_k_shot`), then walked in that order, and a row is taken when one of its classes still has fewer
    than `k` taken rows; the walk stops once every class has `k` or the pool is exhausted. A row with several
    classes counts for each, so frequent classes co-occurring with rare ones end with more than `k` rows, and rows
    without any class (or only with classes already full) are never taken. `rows` is a dict of equally long
    columns (e.g. `load_nlupp`'s); the taken rows are returned, every column kept, in their original order. A
    class that ends with fewer than `k` rows is a warning that counts the shortfall (an error with `strict=True`).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (positive rows per class), got {k!r}.")
    if label_column not in rows:
        raise ValueError(f"The label column {label_column!r} is not in the data (columns: {list(rows)}).")
    labels = list(rows[label_column])
    lengths = {name: len(column) for name, column in rows.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"The columns must be equally long, got {lengths}.")
    known = set(classes)
    for i, row in enumerate(labels):
        unknown = sorted(set(row) - known)
        if unknown:
            raise ValueError(f"Row {i} has labels {unknown} that are not in classes ({len(classes)} given).")
    counts = dict.fromkeys(classes, 0)
    taken = []
    for i in np.random.RandomState(seed).permutation(len(labels)):
        if all(n >= k for n in counts.values()):
            break
        row = set(labels[i])
        if any(counts[c] < k for c in row):
            taken.append(int(i))
            for c in row:
                counts[c] += 1
    short = {c: k - n for c, n in counts.items() if n < k}
    if short:
        message = f"{len(short)} class(es) have fewer than {k} positive rows in the pool; missing rows: {short}."
        if strict:
            raise ValueError(message + " Lower k, use a larger pool, or pass strict=False to use what there is.")
        logger.warning("%s The split uses what there is.", message)
    taken.sort()
    return {name: [column[i] for i in taken] for name, column in rows.items()}
