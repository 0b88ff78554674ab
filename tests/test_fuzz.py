"""Issue 9, requirement 3: random templates, label words and Unicode texts through render -> tokenize -> features
-> fit -> predict on tiny models. The only exceptions allowed are the named errors of bad input; anything else is a
bug. Derandomised, so CI runs the same cases every time (1300 in all, about half a minute; PEFT_DECT_FUZZ_SCALE
multiplies them)."""

from __future__ import annotations

import collections
import functools
import logging
import os
import re

import pytest
import torch
from conftest import (
    FILLER,
    NEGATIVE,
    POSITIVE,
    _byte_bpe,
    _sentencepiece,
    _wordpiece,
    tiny_bert,
    tiny_llama,
    tiny_roberta,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import get_peft_model

from peft_dect import Backbone, DecTConfig, LabelWordClassifier, Template, Verbalizer
from peft_dect.data import read_texts


# The named errors of bad input (docs/errors.md); any other exception fails the test.
NAMED_ERRORS = [
    r"exactly one \{mask\}",
    "unknown placeholder",
    "does not parse",
    r"must contain \{text_a\}",
    r"\{text_b\} without \{text_a\}",
    "would never see it",
    r"starts with \{mask\}",
    "not in the tokenizer's vocabulary",
    "cannot be told apart",
    "is given twice",
    "is given for both",
    "empty or non-string label word",
    "at least two classes",
    "not valid Unicode",
    "mask tokens after prompting",
    "alone needs more than max_length",
    "contains the mask token",
    "does not fit the model's context",
]
NAMED = re.compile("|".join(NAMED_ERRORS))
# PEFT_DECT_FUZZ_SCALE=10 runs ten times as many random (not derandomised) cases, for a longer local search.
SCALE = int(os.environ.get("PEFT_DECT_FUZZ_SCALE", "1"))
SETTINGS = {
    "derandomize": SCALE == 1,
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
}

WEIRD = [
    "😀",
    "👍🏽",
    "👨‍👩‍👧",  # emoji, a skin tone modifier, a zero-width-joiner sequence
    "שלום",
    "مرحبا بالعالم",
    "\u202e",
    "\u202a",
    "\u200f",  # Hebrew, Arabic, bidi overrides and marks
    "\u200b",
    "\u200c",
    "\u200d",
    "\ufeff",
    "\u2060",  # zero-width characters
    "\x00",
    "\x07",
    "\x1b[31m",
    "\r\n",
    "\t",
    "\x85",
    "\u2028",
    "\x7f",  # control characters
    "e\u0301",
    "Å",
    "ﷺ",
    "𝕳𝖊𝖑𝖑𝖔",
    "日本語",
    "ß",
    "İ",  # combining marks, ligatures, astral and case-changing letters
    "<mask>",
    "[MASK]",
    "<s>",
    "</s>",
    "[CLS]",
    "{",
    "}",
    "{text_a}",
    "{mask}",  # special tokens and template syntax inside the data
]
WORDS = POSITIVE + NEGATIVE + FILLER

piece = st.one_of(st.sampled_from(WORDS), st.sampled_from(WORDS), st.sampled_from(WEIRD), st.text(max_size=6))
text = st.builds(
    lambda parts, sep, repeat, broken: sep.join(parts) * repeat + ("\ud83d" if broken == 17 else ""),
    st.lists(piece, min_size=1, max_size=8),
    st.sampled_from([" ", "", "\n"]),
    st.one_of(st.just(1), st.just(1), st.integers(2, 80)),  # sometimes far beyond max_length
    st.integers(0, 49),  # 1 in 50 ends in a lone surrogate (a broken JSON escape, a cut emoji)
)
literal = st.one_of(st.sampled_from([" ", ": ", " It was ", "? ", "\n", " In summary, it was "]), st.text(max_size=6))


@st.composite
def templates(draw) -> str:
    """Templates of literal text (braces escaped) around the placeholders; 1 in 5 has the mask before a text field
    (an error for causal LMs), 1 in 10 has raw template syntax in it (mostly an error)."""
    fields = ["text_a"] + (["text_b"] if draw(st.booleans()) else [])
    if draw(st.integers(0, 4)):
        order = draw(st.permutations(fields)) + ["mask"]
    else:
        order = draw(st.permutations(fields + ["mask"]))
    out = [draw(literal).replace("{", "{{").replace("}", "}}")]
    for name in order:
        out.append("{" + name + "}")
        out.append(draw(literal).replace("{", "{{").replace("}", "}}"))
    if draw(st.integers(0, 9)) == 0:
        out.insert(draw(st.integers(0, len(out))), draw(st.sampled_from(["{", "}", "{x}", "{mask}", "{{"])))
    return "".join(out)


@st.composite
def label_words(draw) -> dict[str, list[str]]:
    """2-4 classes of 1-3 words from the tiny vocabulary; 1 in 5 sets also gets an arbitrary Unicode word."""
    n_classes = draw(st.integers(2, 4))
    words = draw(st.lists(st.sampled_from(WORDS), min_size=n_classes, max_size=3 * n_classes, unique=True))
    if draw(st.integers(0, 4)) == 0:
        words.append(draw(st.one_of(st.sampled_from(WEIRD), st.text(max_size=5))))
    names = draw(st.lists(st.text(min_size=1, max_size=4), min_size=n_classes, max_size=n_classes, unique=True))
    rest = len(words) - n_classes
    owner = list(range(n_classes)) + draw(st.lists(st.integers(0, n_classes - 1), min_size=rest, max_size=rest))
    return {name: [w for w, o in zip(words, owner) if o == c] for c, name in enumerate(names)}


@functools.cache
def tokenizer(name: str):
    return {"bpe": _byte_bpe, "wordpiece": _wordpiece, "sentencepiece": _sentencepiece}[name]()


@functools.cache
def base_model(kind: str, tok_name: str):
    tok = tokenizer(tok_name)
    if kind == "masked":
        return tiny_roberta(tok) if tok_name == "bpe" else tiny_bert(tok)
    return tiny_llama(tok)


COMBOS = [("masked", "bpe"), ("masked", "wordpiece"), ("causal", "bpe"), ("causal", "sentencepiece")]


OUTCOMES: collections.Counter = collections.Counter()  # (test, first words of the named error or "ok")


def allowed(err: Exception, test: str) -> bool:
    ok = isinstance(err, (ValueError, TypeError)) and bool(NAMED.search(str(err)))
    if ok:
        OUTCOMES[(test, NAMED.search(str(err)).group(0))] += 1
    return ok


def check_features(feats, n: int, classes: int) -> None:
    assert feats.hidden.shape[0] == n and feats.label_logits.shape == (n, classes)
    assert torch.isfinite(feats.hidden).all() and torch.isfinite(feats.label_logits).all()


@pytest.fixture(autouse=True)
def quiet():
    """The fuzzer triggers the documented warnings (truncation, multi-token words) thousands of times."""
    logger = logging.getLogger("peft_dect")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.mark.parametrize("kind, tok_name", COMBOS, ids=["-".join(c) for c in COMBOS])
@settings(max_examples=175 * SCALE, **SETTINGS)
@given(template=templates(), words=label_words(), texts=st.lists(text, min_size=1, max_size=4), data=st.data())
def test_fuzz_render_tokenize_features(kind, tok_name, template, words, texts, data):
    """4 x 175 = 700 cases: Template -> Verbalizer -> Backbone.tokenize -> extract, directly."""
    tok, model = tokenizer(tok_name), base_model(kind, tok_name)
    try:
        tmpl = Template(template)
        verbalizer = Verbalizer.from_words(words, tok, space_before=tmpl.space_before_mask)
        bb = Backbone(model, tok, tmpl, verbalizer, max_length=24, show_progress=False)
        texts_b = data.draw(st.lists(text, min_size=len(texts), max_size=len(texts))) if tmpl.is_pair else None
        rows = list(zip(texts, texts_b)) if texts_b is not None else texts
        texts_a, texts_b = read_texts(rows, needs_pair=tmpl.is_pair)
        ids = bb.tokenize(texts_a, texts_b)
        assert all(len(r) <= 24 for r in ids)
        feats = bb.extract(texts_a, texts_b)
    except Exception as err:
        if allowed(err, "features"):
            return
        raise
    check_features(feats, len(texts_a), verbalizer.num_classes)
    OUTCOMES[("features", "ok")] += 1


@pytest.mark.parametrize("kind, tok_name", COMBOS, ids=["-".join(c) for c in COMBOS])
@settings(max_examples=100 * SCALE, **SETTINGS)
@given(
    template=templates(),
    words=label_words(),
    train=st.lists(st.tuples(text, st.integers(0, 3)), min_size=1, max_size=6),
    test=st.lists(text, min_size=1, max_size=3),
    mode=st.sampled_from(["faithful", "auto"]),
)
def test_fuzz_fit_and_predict(kind, tok_name, template, words, train, test, mode):
    """4 x 100 = 400 cases: DecTConfig -> get_peft_model -> fit -> predict_proba through the public API."""
    tok = tokenizer(tok_name)
    try:
        cfg = DecTConfig(template=template, label_words=words, mode=mode, epochs=3, decoder_dim=8, max_length=24)
        classes = cfg.classes
        pair = Template(template).is_pair
        model = peft_model(kind, tok_name, cfg)
        rows = {"text_a": [a for a, _ in train], "label": [classes[y % len(classes)] for _, y in train]}
        if pair:
            rows["text_b"] = [a[::-1] or "x" for a, _ in train]
        model.fit(rows, tokenizer=tok, show_progress=False)
        inputs = [(t, t) for t in test] if pair else test
        proba = model.predict_proba(inputs, tokenizer=tok)
    except Exception as err:
        if allowed(err, "fit"):
            return
        raise
    OUTCOMES[("fit", "ok")] += 1
    assert proba.shape == (len(test), len(classes))
    assert torch.isfinite(torch.from_numpy(proba)).all()
    assert torch.allclose(torch.from_numpy(proba).sum(-1).double(), torch.ones(len(test), dtype=torch.double))


@pytest.mark.parametrize("kind, tok_name", COMBOS, ids=["-".join(c) for c in COMBOS])
@settings(max_examples=50 * SCALE, **SETTINGS)
@given(template=templates(), words=label_words(), texts=st.lists(text, min_size=1, max_size=3))
def test_fuzz_label_word_classifier(kind, tok_name, template, words, texts):
    """4 x 50 = 200 cases: LabelWordClassifier (the head of LM-BFF and prompt tuning) -> predict_proba."""
    tok = tokenizer(tok_name)
    try:
        clf = LabelWordClassifier(base_model(kind, tok_name), tok, template, words, max_length=24, show_progress=False)
        inputs = [(t, t[::-1]) for t in texts] if clf.template.is_pair else texts
        proba = clf.predict_proba(inputs)
    except Exception as err:
        if allowed(err, "classifier"):
            return
        raise
    OUTCOMES[("classifier", "ok")] += 1
    assert proba.shape == (len(texts), len(clf.classes)) and torch.isfinite(torch.from_numpy(proba)).all()


_PEFT = {}


def peft_model(kind: str, tok_name: str, cfg: DecTConfig):
    """One peft model per (kind, tokenizer), reused across examples: each example is a fresh adapter."""
    key = (kind, tok_name)
    if key not in _PEFT:
        first = DecTConfig(template="{text_a} It was {mask}.", label_words={"a": ["good"], "b": ["bad"]})
        _PEFT[key] = get_peft_model(base_model(kind, tok_name), first, adapter_name="seed")
    model = _PEFT[key]
    model.set_adapter("seed")
    for name in list(model.peft_config):
        if name != "seed":
            model.delete_adapter(name)
    model.add_adapter("case", cfg)
    model.set_adapter("case")
    return model


def test_most_fuzz_cases_reach_the_model():
    """Guards the fuzzer itself: most cases must run the whole pipeline, not stop at a named error."""
    for test in ("features", "fit", "classifier"):
        total = sum(n for (t, _), n in OUTCOMES.items() if t == test)
        if not total:
            pytest.skip("run with the fuzz tests above")
        print(test, total, sorted(((n, k) for (t, k), n in OUTCOMES.items() if t == test), reverse=True))
        assert OUTCOMES[(test, "ok")] >= 0.4 * total, OUTCOMES
