"""LM-BFF demonstrations: sampling, rendering, filtering, and their place in the backbone's prompts."""

import logging

import numpy as np
import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE, tiny_llama, tiny_roberta

from peft_dect import DecTConfig
from peft_dect.backbone import Backbone
from peft_dect.prompting import Template, Verbalizer
from peft_dect.prompting.demonstrations import Demonstrations


TEXTS = ["a dull film", "a boring plot", "an awful story", "a great film", "a lovely plot", "a fine story"]
LABELS = [0, 0, 0, 1, 1, 1]
WORDS = ["bad", "great"]


def demos(**kwargs):
    return Demonstrations(TEXTS, None, LABELS, TEMPLATE, WORDS, **kwargs)


def test_one_demonstration_per_class_with_its_label_word_in_class_order():
    d = demos(seed=3)
    chosen = d.select("a new film")
    assert [LABELS[i] for i in chosen] == [0, 1]
    text = d.render("a new film")
    assert text == f"{TEXTS[chosen[0]]} In summary, it was bad. {TEXTS[chosen[1]]} In summary, it was great."


def test_per_class_and_sets_are_seeded_and_deterministic():
    d = demos(per_class=2, num_sets=4, seed=1)
    sets = [d.select("a new film", None, s) for s in range(4)]
    assert all(len(s) == 4 and [LABELS[i] for i in s] == [0, 0, 1, 1] for s in sets)
    assert sets == [demos(per_class=2, num_sets=4, seed=1).select("a new film", None, s) for s in range(4)]
    assert len({tuple(s) for s in sets}) > 1  # different sets differ
    assert demos(per_class=2, seed=2).fingerprint != d.fingerprint


def test_a_training_query_never_gets_itself():
    d = demos()
    for i, text in enumerate(TEXTS):
        for s in range(5):
            assert i not in d.select(text, None, s)


def test_similar_filter_keeps_the_most_similar_half_of_each_class():
    # 1-D "embeddings": a text's similarity to the query grows with its index within its class
    vectors = {t: np.array([1.0, 0.1 * k]) for k, t in enumerate(TEXTS)}
    vectors["query"] = np.array([0.0, 1.0])

    def encoder(texts):
        return np.stack([vectors[t] for t in texts])

    train = TEXTS * 2  # 12 examples, 6 per class: the filter keeps 12 // 2 * 0.5 = 3 per class
    d = Demonstrations(train, None, LABELS * 2, TEMPLATE, WORDS, filter="similar", encoder=encoder)
    seen = {i for s in range(40) for i in d.select("query", None, s)}
    seen_texts = {train[i] for i in seen}
    assert seen_texts <= {"an awful story", "a boring plot", "a fine story", "a lovely plot"}
    assert "a dull film" not in seen_texts and "a great film" not in seen_texts


def test_pairs_and_label_word_mappings():
    d = Demonstrations(
        ["It rains", "It is dry"],
        ["The ground is wet", "The ground is wet"],
        [0, 1],
        "{text_a}? {mask}, {text_b}",
        {"entailment": ["Yes"], "not_entailment": ["No", "Never"]},
    )
    assert d.render("q", "r") == "It rains? Yes, The ground is wet It is dry? No, The ground is wet"


def test_a_class_without_training_examples_is_an_error():
    with pytest.raises(ValueError, match="every class.*'great'"):
        Demonstrations(TEXTS[:3], None, [0, 0, 0], TEMPLATE, WORDS)
    with pytest.raises(ValueError, match="other than the query"):
        Demonstrations(["a", "b", "c"], None, [0, 0, 1], TEMPLATE, WORDS).select("c")
    with pytest.raises(TypeError, match="class indices"):
        Demonstrations(TEXTS, None, [0.5] * 6, TEMPLATE, WORDS)
    with pytest.raises(ValueError, match="filter"):
        demos(filter="nearest")


def _backbone(model, tok, d, **kwargs):
    t = Template(TEMPLATE)
    v = Verbalizer.from_words(LABEL_WORDS, tok, space_before=t.space_before_mask)
    return Backbone(model, tok, t, v, show_progress=False, demonstrations=d, **kwargs)


def test_masked_lm_puts_demonstrations_after_the_query(bpe_tokenizer):
    d = demos(seed=0)
    bb = _backbone(tiny_roberta(bpe_tokenizer), bpe_tokenizer, d)
    prompt = bb.render("a new film")
    assert prompt == "a new film In summary, it was <mask>.</s>" + d.render("a new film", separator="</s>")


def test_causal_lm_puts_demonstrations_before_the_query_and_ends_at_its_mask(bpe_tokenizer):
    d = demos(seed=0)
    bb = _backbone(tiny_llama(bpe_tokenizer), bpe_tokenizer, d)
    prompt = bb.render("a new film", None, 1)
    assert prompt == d.render("a new film", None, 1, separator="\n\n") + "\n\na new film In summary, it was"


def test_sets_are_averaged_and_cached_under_their_own_keys(bpe_tokenizer):
    model = tiny_llama(bpe_tokenizer)
    bb = _backbone(model, bpe_tokenizer, demos(num_sets=3))
    plain = _backbone(model, bpe_tokenizer, None)
    queries = ["a new film", "an old plot"]
    feats = bb.extract(queries)
    assert bb.passes == 6
    per_set = []
    for s in range(3):
        ids = bb.tokenize(queries, None, s)
        per_set.append(bb.forward(**bb.collate(ids)).label_logits)
    torch.testing.assert_close(feats.label_logits, torch.stack(per_set).mean(0), atol=1e-5, rtol=1e-4)
    bb.extract(queries)
    assert bb.passes == 6  # all from the cache
    assert set(bb.keys(queries, None, 0)).isdisjoint(plain.keys(queries))
    assert set(bb.keys(queries, None, 0)).isdisjoint(bb.keys(queries, None, 1))


def test_truncation_cuts_demonstrations_first_and_keeps_the_mask(bpe_tokenizer, caplog):
    long_texts = [" ".join(["a very dull and boring film"] * 6), " ".join(["a great and lovely film"] * 6)]
    d = Demonstrations(long_texts, None, [0, 1], TEMPLATE, WORDS)
    model = tiny_roberta(bpe_tokenizer)
    bb = _backbone(model, bpe_tokenizer, d, max_length=40)
    with caplog.at_level(logging.WARNING):
        (ids,) = bb.tokenize(["a new film"])
    assert len(ids) <= 40 and ids.count(bpe_tokenizer.mask_token_id) == 1
    query = bb.tokenizer("a new film In summary, it was <mask>.")["input_ids"]
    assert ids[: len(query) - 1] == query[:-1]  # the whole query comes first, untouched
    assert "Cut the demonstrations" in caplog.text
    causal = _backbone(tiny_llama(bpe_tokenizer), bpe_tokenizer, d, max_length=40)
    (ids,) = causal.tokenize(["a new film"])
    assert len(ids) <= 40  # the causal prompt lost demonstration text at its start and still ends at the query's mask
    text = bpe_tokenizer.decode(ids, skip_special_tokens=True)
    assert text.endswith("it was great.\n\na new film In summary, it was") and not text.startswith("a very dull")


def test_the_fixed_filter_gives_every_query_one_set_and_causal_prompts_one_prefix(bpe_tokenizer):
    d = demos(filter="fixed", per_class=2, seed=4)
    queries = ["a new film", "an old plot", "a short story"]
    chosen = d.select(queries[0])
    assert all(d.select(q) == chosen for q in queries) and [LABELS[i] for i in chosen] == [0, 0, 1, 1]
    assert d.select(queries[0], None, 1) != chosen or d.select(queries[0], None, 2) != chosen  # sets still differ
    member = TEXTS[chosen[0]]
    assert chosen[0] not in d.select(member)  # a training query still never gets itself
    bb = _backbone(tiny_llama(bpe_tokenizer), bpe_tokenizer, d)
    assert bb.shared_prefix(bb.tokenize(queries)) >= len(bb.tokenize([""])[0]) - 8  # all but the query's own tokens
    with pytest.raises(ValueError, match="demo_filter"):
        DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, demonstrations=1, demo_filter="first")
    assert DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, demonstrations=1, demo_filter="fixed")


def test_self_if_alone_lets_a_lone_query_demonstrate_its_own_class_only():
    d = Demonstrations(["a", "b", "c"], None, [0, 0, 1], TEMPLATE, WORDS, self_if_alone=True)
    chosen = d.select("c")
    assert chosen[1] == 2  # "c" is its class's only example: it demonstrates that class
    assert chosen[0] in (0, 1)  # the other class is sampled as before
    assert d.select("a")[0] == 1  # a query with a classmate never gets itself
    plain = Demonstrations(["a", "b", "c"], None, [0, 0, 1], TEMPLATE, WORDS)
    assert d.fingerprint != plain.fingerprint  # features of the two samplers never share a cache entry
