"""User data that is not what it seems ends in an error naming the row (or a documented rule), never a repr scored."""

import logging

import numpy as np
import pytest
import torch

from peft_dect.data import read_labels, read_texts


CLASSES = ["negative", "positive"]


@pytest.mark.parametrize(
    "value, message",
    [
        (b"a good film", "bytes .*decode"),
        (float("nan"), "float .*missing value"),
        (["a", "film"], "list"),
        ({"text": "a film"}, "dict"),
        (3, "int"),
    ],
)
def test_non_string_texts_are_refused_naming_the_row(value, message):
    with pytest.raises(TypeError, match=f"Row 1 of the text column 'text' is a {message}"):
        read_texts({"text": ["a good film", value]}, needs_pair=False)


def test_non_string_second_texts_and_list_items_are_refused():
    with pytest.raises(TypeError, match="Row 0 of the second text column 'text_b' is a bytes"):
        read_texts({"text_a": ["a"], "text_b": [b"b"]}, needs_pair=True)
    with pytest.raises(TypeError, match="Row 1 of the texts is a float"):
        read_texts(["a", float("nan")], needs_pair=False)
    with pytest.raises(TypeError, match="Row 0 of the second text is a bytes"):
        read_texts([("a", b"b")], needs_pair=True)


def test_none_is_an_empty_text_with_the_documented_warning(caplog):
    with caplog.at_level(logging.WARNING):
        texts, _ = read_texts({"text": ["a film", None]}, needs_pair=False)
    assert texts == ["a film", ""] and "empty or whitespace-only text, at index 1" in caplog.text


@pytest.mark.parametrize("label", ["²", "--1", "1.5.2"])
def test_label_strings_that_look_numeric_name_the_row(label):
    with pytest.raises(ValueError, match=f"Row 1 has label '{label}', which label_words does not name"):
        read_labels({"label": ["positive", label]}, CLASSES)


@pytest.mark.parametrize(
    "label", [np.float32(1.0), np.int64(1), torch.tensor(1), torch.tensor([1]), torch.tensor(1.0), np.array(1)]
)
def test_integral_numpy_and_torch_labels_are_accepted(label):
    assert read_labels({"label": [0, label]}, CLASSES).tolist() == [0, 1]


@pytest.mark.parametrize(
    "label, message",
    [
        (np.float32(0.5), "Row 1 has a float label 0.5"),
        (torch.tensor([0, 1]), "Row 1 has a label of shape \\(2,\\)"),
        (float("nan"), "Row 1 has label nan: a missing label"),
    ],
)
def test_other_numpy_and_torch_labels_are_refused_naming_the_row(label, message):
    with pytest.raises(ValueError, match=message):
        read_labels({"label": [0, label]}, CLASSES)
