"""k-shot splits of any labelled dataset, class names as label words, and the BANKING77 loader (on a tiny copy)."""

import json
import logging

import datasets
import pytest

from peft_dect.prompting import label_name_words
from peft_dect.tasks import load_banking77, sample_k_shot


def labelled(counts: dict[str, int]) -> datasets.Dataset:
    names = list(counts)
    rows = [(f"{name} text {i}", c) for c, name in enumerate(names) for i in range(counts[name])]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]}, features=features)


def test_k_shot_split_has_k_per_class_disjoint_train_and_dev_and_is_seeded():
    data = labelled({"a": 30, "b": 12, "c": 50})
    split = sample_k_shot(data, 4, seed=13)
    for part in ("train", "validation"):
        counts = [split[part]["label"].count(c) for c in range(3)]
        assert counts == [4, 4, 4]
    assert not set(split["train"]["text"]) & set(split["validation"]["text"])
    again = sample_k_shot(data, 4, seed=13)
    assert again["train"]["text"] == split["train"]["text"]
    assert sample_k_shot(data, 4, seed=21)["train"]["text"] != split["train"]["text"]
    assert set(split["train"]["text"]) <= set(sample_k_shot(data, 6, seed=13)["train"]["text"])  # nested in k


def test_a_class_too_small_for_k_is_counted_or_refused(caplog):
    data = labelled({"a": 30, "b": 5})
    with caplog.at_level(logging.WARNING):
        split = sample_k_shot(data, 4, seed=0)
    assert "missing rows: {'b': 3}" in caplog.text
    assert split["train"]["label"].count(1) == 4 and split["validation"]["label"].count(1) == 1
    with pytest.raises(ValueError, match="fewer than 2 x 4 rows"):
        sample_k_shot(data, 4, seed=0, strict=True)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        sample_k_shot(data, 0, seed=0)
    with pytest.raises(ValueError, match=r"Classes \['c'\] have no row"):
        sample_k_shot(labelled({"a": 3, "b": 3, "c": 0}), 1, seed=0)


def test_class_names_become_words():
    assert label_name_words("lost_or_stolen_card") == "lost or stolen card"
    assert label_name_words("top-up  failed") == "top up failed"


def test_banking77_loader_reads_polyai_csvs(tmp_path):
    (tmp_path / "categories.json").write_text(json.dumps(["card_arrival", "card_linking"]))
    train = 'text,category\n"Where is my card, please?",card_arrival\nLink it,card_linking\n'
    (tmp_path / "train.csv").write_text(train)
    (tmp_path / "test.csv").write_text("text,category\nhas my card shipped,card_arrival\n")
    data = load_banking77(tmp_path)
    assert data["train"]["text"][0] == "Where is my card, please?" and data["train"]["label"] == [0, 1]
    assert data["test"].features["label"].names == ["card_arrival", "card_linking"]
    (tmp_path / "test.csv").write_text("text,category\nwhat is this,unknown_intent\n")
    with pytest.raises(ValueError, match="not in categories.json"):
        load_banking77(tmp_path)
    with pytest.raises(ValueError, match="not a BANKING77 folder"):
        load_banking77(tmp_path / "nope")


def test_banking77_quoted_fields_may_span_lines(tmp_path):
    """PolyAI's train.csv has a few texts with line breaks inside quotes (RFC 4180); they become spaces."""
    (tmp_path / "categories.json").write_text(json.dumps(["card_not_working", "card_linking"]))
    train = 'text,category\r\n"\nI can\'t seem to use my card\n\n",card_not_working\r\nLink it,card_linking\r\n'
    (tmp_path / "train.csv").write_text(train, newline="")
    (tmp_path / "test.csv").write_text("text,category\nhas my card shipped,card_linking\n")
    data = load_banking77(tmp_path)
    assert data["train"]["text"] == ["I can't seem to use my card", "Link it"] and data["train"]["label"] == [0, 1]


def test_macro_f1_matches_scikit_learn():
    from sklearn.metrics import f1_score

    from peft_dect.metrics import metric_value

    pred, ref = [0, 2, 1, 1, 3, 0, 2], [0, 1, 1, 2, 2, 0, 2]  # class 3 is only predicted
    assert metric_value("macro_f1", pred, ref) == pytest.approx(f1_score(ref, pred, average="macro"))


def test_label_words_from_a_list_of_names_or_a_class_label_column():
    from peft_dect import DecTConfig
    from peft_dect.prompting import label_words_from_names

    cfg = DecTConfig(label_words=["card_arrival", "card_linking", "lost_or_stolen_card"])
    assert cfg.label_words == {
        "card_arrival": ["card arrival"],
        "card_linking": ["card linking"],
        "lost_or_stolen_card": ["lost or stolen card"],
    }
    data = labelled({"card_arrival": 2, "verify_top_up": 2})
    assert label_words_from_names(data) == {"card_arrival": ["card arrival"], "verify_top_up": ["verify top up"]}
    assert label_words_from_names(data.features) == label_words_from_names(["card_arrival", "verify_top_up"])


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["card_arrival", "card_arrival"], "'card_arrival' is given twice"),
        (["card_arrival", "  "], "non-empty strings"),
        (["card_arrival", "__"], "non-empty strings"),
        ("names", "label_words_from_names"),
    ],
)
def test_bad_class_names_are_refused(names, message):
    from peft_dect import DecTConfig

    with pytest.raises(ValueError, match=message):
        DecTConfig(label_words=names)


def test_names_need_a_class_label_column():
    from peft_dect.prompting import label_words_from_names

    plain = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    with pytest.raises(ValueError, match="ClassLabel column"):
        label_words_from_names(plain)
