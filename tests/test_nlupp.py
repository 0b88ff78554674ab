"""NLU++ loader and multi-label k-shot sampler on a tiny synthetic NLU++-style folder (never the shared data)."""

from __future__ import annotations

import json
import logging
import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from peft_dect.tasks import (  # noqa: E402
    NLUPP_CAUSAL,
    NLUPP_FOLDS,
    load_nlupp,
    nlupp_classes,
    sample_multilabel_k_shot,
)


ONTOLOGY = {
    "intents": {
        "affirm": {"description": "is the intent to affirm something?", "domain": ["general"]},
        "hotel_only": {"description": "is the intent to book a room?", "domain": ["hotels"]},
        "card": {"description": "is the intent to ask about a card?", "domain": ["banking"]},
        "how_long": {"description": "is the intent to ask how long?", "domain": ["general"]},
        "refund": {"description": "is the intent to ask for a refund?", "domain": ["banking", "hotels"]},
    },
    "slots": {},
}
BANKING = ["affirm", "card", "how_long", "refund"]


def fold_rows(fold: int) -> list[dict]:
    """Three rows per fold: two intents with slots, one intent, and one with no `intents` key at all."""
    return [
        {"text": f"how long until my card arrives {fold}", "intents": ["how_long", "card"], "slots": {"x": {}}},
        {"text": f"yes please {fold}", "intents": ["affirm"]},
        {"text": f"it will be {fold}", "slots": {}},
    ]


def write_nlupp(root, folds=range(NLUPP_FOLDS), ontology=ONTOLOGY, rows=fold_rows):
    (root / "banking").mkdir(parents=True, exist_ok=True)
    if ontology is not None:
        (root / "ontology.json").write_text(json.dumps(ontology), encoding="utf-8")
    for fold in folds:
        (root / "banking" / f"fold{fold}.json").write_text(json.dumps(rows(fold)), encoding="utf-8")
    return root


@pytest.fixture
def nlupp_dir(tmp_path):
    return write_nlupp(tmp_path / "nlupp")


def test_classes_are_domain_and_general_intents_in_ontology_order(nlupp_dir):
    assert load_nlupp(nlupp_dir).classes == BANKING


def test_descriptions_are_the_ontology_questions_of_the_classes(nlupp_dir):
    descriptions = load_nlupp(nlupp_dir).descriptions
    assert list(descriptions) == BANKING
    assert descriptions["card"] == "is the intent to ask about a card?"


def test_all_folds_by_default_in_fold_order(nlupp_dir):
    columns = load_nlupp(nlupp_dir).columns
    assert len(columns["text"]) == 3 * NLUPP_FOLDS
    assert columns["fold"] == [f for f in range(NLUPP_FOLDS) for _ in range(3)]


def test_given_folds_only(nlupp_dir):
    columns = load_nlupp(nlupp_dir, folds=[3, 1]).columns
    assert columns["fold"] == [3, 3, 3, 1, 1, 1]
    assert columns["text"][0] == "how long until my card arrives 3"


def test_columns_are_text_labels_fold_and_slots_are_dropped(nlupp_dir):
    assert set(load_nlupp(nlupp_dir, folds=[0]).columns) == {"text", "labels", "fold"}


def test_labels_keep_every_intent_of_a_row(nlupp_dir):
    assert load_nlupp(nlupp_dir, folds=[0]).columns["labels"][:2] == [["how_long", "card"], ["affirm"]]


def test_row_without_intents_has_empty_labels(nlupp_dir):
    assert load_nlupp(nlupp_dir, folds=[0]).columns["labels"][2] == []


def test_empty_intents_list_is_empty_labels(tmp_path):
    root = write_nlupp(tmp_path, folds=[0], rows=lambda f: [{"text": "hi", "intents": []}])
    assert load_nlupp(root, folds=[0]).columns["labels"] == [[]]


def test_result_unpacks_as_a_tuple(nlupp_dir):
    columns, classes, descriptions = load_nlupp(nlupp_dir, folds=[0])
    assert len(columns["text"]) == 3 and classes == BANKING and set(descriptions) == set(BANKING)


def test_template_is_causal_and_ends_at_the_mask():
    assert NLUPP_CAUSAL.startswith("{text_a}") and NLUPP_CAUSAL.endswith("{mask}")


def test_missing_folder_is_an_error_naming_the_layout(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*ontology.json"):
        load_nlupp(tmp_path / "nowhere")


def test_missing_ontology_is_an_error_naming_the_file(tmp_path):
    root = write_nlupp(tmp_path, folds=[0], ontology=None)
    with pytest.raises(ValueError, match="no ontology.json"):
        load_nlupp(root, folds=[0])


def test_missing_domain_folder_is_an_error_naming_it(nlupp_dir):
    with pytest.raises(ValueError, match="no hotels/ folder"):
        load_nlupp(nlupp_dir, domain="hotels")


def test_missing_fold_is_an_error_naming_it(tmp_path):
    root = write_nlupp(tmp_path, folds=[0, 1])
    with pytest.raises(ValueError, match=r"lacks \['fold2.json'\]"):
        load_nlupp(root, folds=[0, 2])


def test_all_folds_needs_all_twenty(tmp_path):
    root = write_nlupp(tmp_path, folds=[0])
    with pytest.raises(ValueError, match="fold19.json"):
        load_nlupp(root)


@pytest.mark.parametrize("folds", [[20], [-1], ["0"], [True], []])
def test_bad_fold_numbers_are_an_error(nlupp_dir, folds):
    with pytest.raises(ValueError, match="folds must be"):
        load_nlupp(nlupp_dir, folds=folds)


def test_intent_outside_the_domain_is_an_error(tmp_path):
    root = write_nlupp(tmp_path, folds=[0], rows=lambda f: [{"text": "a room", "intents": ["hotel_only"]}])
    with pytest.raises(ValueError, match=r"fold0.json: row 0 has intents \['hotel_only'\]"):
        load_nlupp(root, folds=[0])


def test_row_without_text_is_an_error(tmp_path):
    root = write_nlupp(tmp_path, folds=[0], rows=lambda f: [{"intents": ["card"]}])
    with pytest.raises(ValueError, match="row 0 has no string 'text'"):
        load_nlupp(root, folds=[0])


def test_broken_fold_json_is_an_error_naming_the_file(tmp_path):
    root = write_nlupp(tmp_path, folds=[0])
    (root / "banking" / "fold0.json").write_text("[{", encoding="utf-8")
    with pytest.raises(ValueError, match="fold0.json is not valid JSON"):
        load_nlupp(root, folds=[0])


def test_unknown_domain_is_an_error_listing_the_domains():
    with pytest.raises(ValueError, match=r"domain 'travel'.*\['banking', 'hotels'\]"):
        nlupp_classes(ONTOLOGY, "travel")


# ---------------------------------------------------------------- sample_multilabel_k_shot
CLASSES = ["a", "b", "c"]


def pool(n: int = 40) -> dict[str, list]:
    """Rows cycling through a, b, [a, c], [] (no class), with an id column."""
    cycle = [["a"], ["b"], ["a", "c"], []]
    return {"id": list(range(n)), "labels": [list(cycle[i % 4]) for i in range(n)]}


def counts(split: dict[str, list]) -> dict[str, int]:
    return {c: sum(c in row for row in split["labels"]) for c in CLASSES}


def test_every_class_gets_at_least_k_positive_rows():
    assert min(counts(sample_multilabel_k_shot(pool(), CLASSES, 3, seed=13)).values()) >= 3


def test_rows_with_several_classes_count_for_each():
    rows = {"labels": [["a", "c"]] * 3 + [["b"]] * 3}
    split = sample_multilabel_k_shot(rows, CLASSES, 2, seed=13)
    assert split["labels"] == [["a", "c"], ["a", "c"], ["b"], ["b"]]  # `a` is full from the rows of `c`


def test_stops_once_every_class_is_full():
    split = sample_multilabel_k_shot(pool(400), CLASSES, 2, seed=0)
    assert len(split["id"]) <= 2 * len(CLASSES)


def test_rows_without_classes_are_never_taken():
    split = sample_multilabel_k_shot(pool(), CLASSES, 5, seed=21)
    assert all(split["labels"])


def test_same_seed_same_split_other_seed_other_split():
    first = sample_multilabel_k_shot(pool(200), CLASSES, 3, seed=42)
    assert sample_multilabel_k_shot(pool(200), CLASSES, 3, seed=42) == first
    assert sample_multilabel_k_shot(pool(200), CLASSES, 3, seed=43)["id"] != first["id"]


def test_every_column_is_kept_in_original_order():
    split = sample_multilabel_k_shot(pool(), CLASSES, 3, seed=13)
    assert set(split) == {"id", "labels"}
    assert split["id"] == sorted(split["id"])
    assert all(split["labels"][j] == pool()["labels"][i] for j, i in enumerate(split["id"]))


def test_exhausted_pool_takes_what_there_is_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="peft_dect.tasks"):
        split = sample_multilabel_k_shot(pool(8), CLASSES, 5, seed=13)
    assert counts(split) == {"a": 4, "b": 2, "c": 2}
    assert "fewer than 5 positive rows" in caplog.text


def test_exhausted_pool_is_an_error_when_strict():
    with pytest.raises(ValueError, match="fewer than 5 positive rows"):
        sample_multilabel_k_shot(pool(8), CLASSES, 5, seed=13, strict=True)


def test_works_on_load_nlupp_columns(nlupp_dir):
    columns, classes, _ = load_nlupp(nlupp_dir, folds=list(range(10)))
    split = sample_multilabel_k_shot(columns, classes[:3], 2, seed=13, strict=True)  # no row has `refund`
    assert set(split) == {"text", "labels", "fold"} and set(split["fold"]) <= set(range(10))


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_k_is_an_error(k):
    with pytest.raises(ValueError, match="k must be an integer"):
        sample_multilabel_k_shot(pool(), CLASSES, k, seed=13)


def test_label_outside_classes_is_an_error():
    with pytest.raises(ValueError, match=r"Row 0 has labels \['z'\]"):
        sample_multilabel_k_shot({"labels": [["z"]]}, CLASSES, 1, seed=13)


def test_missing_label_column_is_an_error():
    with pytest.raises(ValueError, match="label column 'labels'"):
        sample_multilabel_k_shot({"intents": [["a"]]}, CLASSES, 1, seed=13)


def test_columns_of_unequal_length_are_an_error():
    with pytest.raises(ValueError, match="equally long"):
        sample_multilabel_k_shot({"labels": [["a"]], "text": []}, CLASSES, 1, seed=13)
