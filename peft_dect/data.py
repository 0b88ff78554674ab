"""Turning user data (datasets, dicts, lists of texts) into texts and class indices."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .prompting.template import UNICODE_HINT, is_valid_unicode


logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "sentence", "text_a", "sentence1", "question", "question1", "premise")
PAIR_COLUMNS = ("text_b", "sentence2", "question2", "hypothesis")


def column_names(data) -> list[str]:
    """The columns of a `datasets.Dataset` or a dict of columns (a TypeError naming the fix for anything else)."""
    if hasattr(data, "column_names"):
        return list(data.column_names)
    if isinstance(data, Mapping):
        return list(data)
    raise TypeError(
        f"Expected a datasets.Dataset or a dict of columns, got {type(data).__name__}; "
        "for plain texts pass a list of strings (or of (text_a, text_b) pairs)."
    )


def _pick(columns: list[str], given: str | None, candidates: tuple[str, ...], what: str) -> str | None:
    if given is not None:
        if given not in columns:
            raise ValueError(f"The {what} column {given!r} is not in the data (columns: {columns}).")
        return given
    found = [c for c in candidates if c in columns]
    return found[0] if found else None


def check_texts(texts: Sequence[str], what: str = "text") -> None:
    """Refuse texts that are not valid Unicode and warn about empty ones, naming the inputs.

    An empty or whitespace-only text renders as the bare template, the content-free input of calibration: it is
    classified by the model's prior alone (uniform label-word probabilities after calibration, plus the decoder's
    view of the bare prompt). Real data has such rows (CR's test set has one), so they are kept, with a warning.
    """
    broken = [i for i, t in enumerate(texts) if not is_valid_unicode(t)]
    if broken:
        raise ValueError(
            f"{len(broken)} input(s) have a {what} that is not valid Unicode, at index {_shown(broken)}: it contains "
            f"{UNICODE_HINT}. Fix the text's encoding, or drop such characters."
        )
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        logger.warning(
            "%d input(s) have an empty or whitespace-only %s, at index %s: they are classified from the bare "
            "template (the model's prior). Drop those rows or fill in their text if that is not what you want.",
            len(empty),
            what,
            _shown(empty),
        )


def _shown(indices: list[int]) -> str:
    return ", ".join(map(str, indices[:10])) + (", ..." if len(indices) > 10 else "")


def read_texts(
    data: Any, *, needs_pair: bool, text_column: str | None = None, text_pair_column: str | None = None
) -> tuple[list[str], list[str] | None]:
    """Texts (and second texts when the template has {text_b}) from a list, a dict of columns or a Dataset.

    Texts that are not valid Unicode are refused; empty or whitespace-only texts are warned about (`check_texts`).
    """
    texts_a, texts_b = _read_texts(data, needs_pair, text_column, text_pair_column)
    check_texts(texts_a, "text" if texts_b is None else "first text (text_a)")
    if texts_b is not None:
        check_texts(texts_b, "second text (text_b)")
    return texts_a, texts_b


def _read_texts(
    data: Any, needs_pair: bool, text_column: str | None, text_pair_column: str | None
) -> tuple[list[str], list[str] | None]:
    if isinstance(data, str):
        data = [data]
    if isinstance(data, Sequence) and not isinstance(data, Mapping) and not hasattr(data, "column_names"):
        items = list(data)
        if not needs_pair:
            if any(isinstance(t, (tuple, list)) for t in items):
                raise TypeError("Expected a list of strings; the template has no {text_b}, so pairs are not used.")
            return _as_texts(items, "texts"), None
        if not all(isinstance(t, (tuple, list)) and len(t) == 2 for t in items):
            raise TypeError("The template has {text_b}: give (text_a, text_b) pairs.")
        return _as_texts([a for a, _ in items], "first text"), _as_texts([b for _, b in items], "second text")
    columns = column_names(data)
    col_a = _pick(columns, text_column, TEXT_COLUMNS, "text")
    if col_a is None:
        raise ValueError(f"No text column found among {columns}; set text_column in the config (e.g. 'sentence').")
    texts_a = _as_texts(data[col_a], f"text column {col_a!r}")
    if not needs_pair:
        return texts_a, None
    col_b = _pick([c for c in columns if c != col_a], text_pair_column, PAIR_COLUMNS, "second text")
    if col_b is None:
        raise ValueError(
            f"The template uses {{text_b}} but no second text column was found among {columns}; "
            "set text_pair_column in the config, or use a single-text template."
        )
    return texts_a, _as_texts(data[col_b], f"second text column {col_b!r}")


def _as_texts(values, what: str) -> list[str]:
    """The values of a text field as strings: None is an empty text (warned about by `check_texts`), and anything
    else that is not a string (bytes, numbers, NaN, lists, dicts) is refused naming the row, never turned into its
    repr ("b'...'", "nan", "[...]"), which the model would classify as if it were the text."""
    out = []
    for row, value in enumerate(values):
        if value is None:
            out.append("")
        elif isinstance(value, str):
            out.append(str(value))
        else:
            hint = (
                "a missing value (NaN, as pandas writes empty cells): drop the row or fill it in (df.fillna(''))"
                if isinstance(value, float) and math.isnan(value)
                else "decode bytes with .decode('utf-8')"
                if isinstance(value, (bytes, bytearray))
                else "give the text as a string"
            )
            raise TypeError(
                f"Row {row} of the {what} is a {type(value).__name__} ({_short(value)}), not a string: {hint}. "
                "Texts must be strings (None counts as an empty text)."
            )
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _label_names(data, column: str) -> list[str] | None:
    feature = getattr(data, "features", {}).get(column) if hasattr(data, "features") else None
    return list(feature.names) if feature is not None and hasattr(feature, "names") else None


INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only: "²" and "--1" are names, not numbers


def _scalar(value: Any, row: int) -> Any:
    """A label as a Python value: numpy and torch scalars (and one-element tensors) become int or float."""
    if hasattr(value, "item") and hasattr(value, "shape") and not isinstance(value, (str, bytes)):
        if tuple(value.shape) not in ((), (1,)):
            raise ValueError(
                f"Row {row} has a label of shape {tuple(value.shape)} ({_short(value)}): give one class per row "
                "(a name or an integer index), not a vector or one-hot encoding."
            )
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"Row {row} has label {value}: a missing label. Drop the row or give it a class.")
    return value


def read_labels(
    data: Any, classes: Sequence[str], column: str = "label", *, warn_missing: bool = True
) -> torch.Tensor:
    """Class indices of the labels in `data[column]`.

    A label maps to the class of the same name; otherwise an integer label `i` maps to the i-th class of
    `label_words` (their order). Anything else is an error naming the label and the known classes.
    `warn_missing=False` leaves out the warning about classes without examples (for a check before the real read).
    """
    if isinstance(data, (list, tuple, str)):
        raise TypeError(
            "Labelled data must be a datasets.Dataset or a dict of columns with a label column, "
            f"e.g. {{'text': [...], {column!r}: [...]}}; got a {type(data).__name__} of texts."
        )
    return _read_labels(data, classes, column, warn_missing)


def _read_labels(data: Any, classes: Sequence[str], column: str, warn_missing: bool = True) -> torch.Tensor:
    """Read labels after the type check of `read_labels`."""
    columns = column_names(data)
    if column not in columns:
        raise ValueError(f"The label column {column!r} is not in the data (columns: {columns}); set label_column.")
    names = _label_names(data, column)
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for row, value in enumerate(data[column]):
        if isinstance(value, (list, tuple)):
            raise ValueError(
                f"Row {row} has a list of labels ({_short(value)}), but this classifier takes one class per row: "
                "for several labels per text use a multi-label adapter (multi_label=True)."
            )
        value = _scalar(value, row)
        if names is not None and isinstance(value, int) and 0 <= value < len(names):
            value = names[value]
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(
                f"Row {row} has a float label {value}: this is a classifier; regression targets (e.g. STS-B scores) "
                "need to be binned into classes first."
            )
        key = str(int(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
        if key in index:
            out.append(index[key])
        elif INTEGER.fullmatch(key) and 0 <= int(key) < len(classes):
            out.append(int(key))
        else:
            raise ValueError(
                f"Row {row} has label {value!r}, which label_words does not name. Known classes: {list(classes)} "
                "(integer labels index them in this order). Add the class to label_words or fix the data."
            )
    labels = torch.tensor(out, dtype=torch.long)
    missing = [classes[c] for c in range(len(classes)) if not bool((labels == c).any())]
    if missing and len(labels) and warn_missing:
        logger.warning(
            "Classes %s have no example in the data: training still runs, but nothing teaches it those classes "
            "(DecT keeps their decoder radii at 0); they are scored by their label words.",
            missing,
        )
    return labels


def _is_multi_hot(value: list, names: list[str] | None) -> bool:
    """Whether a row's list is a multi-hot vector: floats or booleans, or integers of a plain (not ClassLabel)
    column that are all 0 or 1 with at least one 0 (``[1, 0, 1]``); a list of integer indices otherwise."""
    if not value or not all(isinstance(v, (int, float)) for v in value):
        return False
    if any(isinstance(v, (bool, float)) for v in value):
        return True
    return names is None and set(value) <= {0, 1} and 0 in value and len(value) > 1


def read_multi_labels(
    data: Any, classes: Sequence[str], column: str = "labels", *, warn_missing: bool = True
) -> torch.Tensor:
    """Multi-hot targets (N, C) float of the label sets in `data[column]`.

    A row is a list of class names (or of integer indices, as a `datasets.Sequence(ClassLabel)` column stores
    them), a multi-hot vector of width C (floats or booleans, or integers 0/1 with at least one 0: see
    `_is_multi_hot`), a string of class names separated by ``|`` (``"card|why"``, as CSV and TSV files give them;
    ``""`` for none), or a single label (read as a one-element list); an empty list is a row to which no class
    applies. Errors name the row and the bad class; every row empty is refused; a class with no
    positive row is warned about.
    """
    if isinstance(data, (list, tuple, str)):
        raise TypeError(
            "Labelled data must be a datasets.Dataset or a dict of columns with a label column, "
            f"e.g. {{'text': [...], {column!r}: [['a', 'b'], []]}}; got a {type(data).__name__} of texts."
        )
    columns = column_names(data)
    if column not in columns:
        raise ValueError(f"The label column {column!r} is not in the data (columns: {columns}); set label_column.")
    names = None
    feature = getattr(data, "features", {}).get(column) if hasattr(data, "features") else None
    inner = getattr(feature, "feature", None)
    if inner is not None and hasattr(inner, "names"):
        names = list(inner.names)
    index = {c: i for i, c in enumerate(classes)}
    out = torch.zeros(len(data[column]), len(classes))
    for row, value in enumerate(data[column]):
        if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
            value = value.tolist()
        if isinstance(value, str):  # a CSV / TSV cell: class names separated by "|" ("" for none)
            value = [v.strip() for v in value.split("|") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]  # one label: a one-element set
        if _is_multi_hot(value, names):
            if len(value) != len(classes):
                raise ValueError(
                    f"Row {row} is a multi-hot vector of width {len(value)}, but there are {len(classes)} classes; "
                    "give one 0/1 entry per class of label_words, in their order (or a list of class names)."
                )
            out[row] = torch.tensor([float(v) for v in value])
            continue
        for v in value:
            if names is not None and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(names):
                v = names[v]
            key = str(v)
            if key in index:
                out[row, index[key]] = 1.0
            elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(classes):
                out[row, v] = 1.0
            else:
                raise ValueError(
                    f"Row {row} has label {v!r} in {_short(value)}, which label_words does not name. Known classes: "
                    f"{list(classes)}. Add the class to label_words or fix the data."
                )
    if out.numel() and not bool(((out == 0) | (out == 1)).all()):
        raise ValueError("Multi-hot label vectors must hold 0 and 1 only.")
    if len(out) and not bool(out.any()):
        raise ValueError(
            "Every row has an empty label set: a multi-label fit needs rows with at least one class. Check the "
            f"label column {column!r}."
        )
    missing = [classes[c] for c in range(len(classes)) if len(out) and not bool(out[:, c].any())]
    if missing and warn_missing:
        logger.warning(
            "Classes %s have no positive example in the data: nothing teaches the decoder those classes; they are "
            "decided by their label words and the shared threshold.",
            missing,
        )
    return out


def split_by_label(data: Any, column: str, label: str) -> tuple[Any, Any]:
    """(rows whose label is not `label`, rows whose label is `label`) of a Dataset or a dict of columns, each in the
    type it came in; a ClassLabel column's integers are compared by their names (out-of-scope examples)."""
    columns = column_names(data)
    if column not in columns:
        raise ValueError(f"The label column {column!r} is not in the data (columns: {columns}); set label_column.")
    names = _label_names(data, column)
    hits = []
    for row, value in enumerate(data[column]):
        value = _scalar(value, row)
        if names is not None and isinstance(value, int) and 0 <= value < len(names):
            value = names[value]
        hits.append(str(value) == label)
    keep = [i for i, hit in enumerate(hits) if not hit]
    other = [i for i, hit in enumerate(hits) if hit]
    if hasattr(data, "select"):
        return data.select(keep), data.select(other)
    return ({c: [data[c][i] for i in keep] for c in columns}, {c: [data[c][i] for i in other] for c in columns})
