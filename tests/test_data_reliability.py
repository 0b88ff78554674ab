"""User data that is not what it seems ends in an error naming the row (or a documented rule), never a repr scored."""

import logging

import numpy as np
import pytest
import torch

from peft_dect.data import read_labels, read_texts
from peft_dect.io import read_columns


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


# ---------------------------------------------------------------- files: one record a line, errors name file and line


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return str(path)


def test_an_unbalanced_csv_quote_is_refused_naming_the_lines(tmp_path):
    path = write(tmp_path, "train.csv", 'sentence,label\n"a good film,positive\na bad film,negative\nfun,positive\n')
    with pytest.raises(ValueError, match=r"train.csv:2: a quoted field runs over lines 2-4"):
        read_columns(path)


def test_errors_after_a_quoted_field_name_the_right_line(tmp_path):
    path = write(tmp_path, "train.csv", 'sentence,label\n"a ""quoted"" film",positive\r\nbad,negative,extra\n')
    with pytest.raises(ValueError, match=r"train.csv:3: expected 2 fields"):
        read_columns(path)
    columns = read_columns(write(tmp_path, "ok.csv", 'sentence,label\r\n"a, film",positive\r\n\r\nbad,negative\r\n'))
    assert columns["sentence"] == ["a, film", "bad"] and columns.lines == [2, 4]


def test_a_field_over_the_csv_field_limit_names_file_and_line(tmp_path):
    path = write(tmp_path, "big.csv", "sentence,label\nfine,positive\n" + "x" * 200_000 + ",negative\n")
    with pytest.raises(ValueError, match=r"big.csv:3: not valid CSV \(field larger than field limit"):
        read_columns(path)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("head.csv", "sentence,label\n", r"head.csv has a header row \(sentence, label\) but no data rows"),
        ("dup.csv", "text,text,label\na,b,positive\n", r"dup.csv:1: column\(s\) \['text'\] appear more than once"),
        ("none.jsonl", "\n\n", "none.jsonl has no JSON objects"),
        ("blank.txt", "\n  \n", "blank.txt has no text"),
    ],
)
def test_files_without_data_or_with_duplicate_columns_are_named(tmp_path, name, text, message):
    with pytest.raises(ValueError, match=message):
        read_columns(write(tmp_path, name, text))


def test_json_lines_text_values_that_are_not_strings_name_the_line(tmp_path):
    from peft_dect.io import check_text_values

    path = write(tmp_path, "in.jsonl", '{"text": "a film"}\n\n{"text": null}\n{"text": [1, 2]}\n')
    columns = read_columns(path)
    with pytest.raises(ValueError, match=r"in.jsonl:4: the text field 'text' is a JSON list \(\[1, 2\]\)"):
        check_text_values(columns, path, ["text"])
