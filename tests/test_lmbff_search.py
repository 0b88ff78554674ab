"""LM-BFF's automatic label words and template ranking on tiny models."""

import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE, tiny_llama, tiny_roberta

from peft_dect.backbone import Backbone
from peft_dect.lmbff import label_word_scores, rank_templates, search_label_words, vocab_log_probs
from peft_dect.prompting import Template, Verbalizer


def backbone(model, tok, template=TEMPLATE):
    t = Template(template)
    return Backbone(model, tok, t, Verbalizer.from_words(LABEL_WORDS, tok, space_before=t.space_before_mask),
                    show_progress=False)  # fmt: skip


@pytest.mark.parametrize("maker", [tiny_roberta, tiny_llama])
def test_vocab_scores_come_from_cached_features_and_match_the_model(bpe_tokenizer, maker):
    bb = backbone(maker(bpe_tokenizer), bpe_tokenizer)
    texts = ["a good film", "the plot was dull"]
    lp = vocab_log_probs(bb, texts)
    assert lp.shape == (2, len(bpe_tokenizer)) and bb.passes == 2
    vocab_log_probs(bb, texts)
    assert bb.passes == 2  # the second call reads the cache
    word_ids = [ids[0] for ids in bb.verbalizer.token_ids]
    torch.testing.assert_close(lp[:, word_ids], bb.extract(texts).label_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(label_word_scores(bb, texts, None, LABEL_WORDS), bb.extract(texts).label_logits)


def test_search_returns_usable_words_ranked_by_dev_score(bpe_tokenizer, sentiment_train, sentiment_test):
    bb = backbone(tiny_llama(bpe_tokenizer), bpe_tokenizer)
    result = search_label_words(bb, sentiment_train, sentiment_test, ["negative", "positive"], k_likely=6, n_pairs=5)
    assert set(result.label_words) == {"negative", "positive"}
    assert all(len(ws) == 6 for ws in result.per_class.values())
    scores = [c["dev_score"] for c in result.candidates]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert result.label_words == result.candidates[0]["label_words"]
    # the words work as a verbalizer for any method, and their train accuracy is what the search measured
    words = result.label_words
    Verbalizer.from_words(words, bpe_tokenizer, space_before=True, multi_token="error")
    logits = label_word_scores(bb, sentiment_train["sentence"], None, words)
    acc = (logits.argmax(-1) == torch.tensor(sentiment_train["label"])).float().mean()
    assert float(acc) == pytest.approx(result.candidates[0]["train_accuracy"])


def test_search_needs_every_class(bpe_tokenizer, sentiment_test):
    bb = backbone(tiny_llama(bpe_tokenizer), bpe_tokenizer)
    only_neg = {"sentence": ["a dull film", "a bad plot"], "label": [0, 0]}
    with pytest.raises(ValueError, match="every class"):
        search_label_words(bb, only_neg, sentiment_test, ["negative", "positive"], k_likely=3)


def test_rank_templates_scores_every_suitable_candidate(bpe_tokenizer, sentiment_test):
    model = tiny_llama(bpe_tokenizer)
    candidates = ["{text_a} In summary, it was {mask}.", "{text_a} It was {mask}", "{mask} {text_a}"]
    result = rank_templates(model, bpe_tokenizer, candidates, LABEL_WORDS, sentiment_test)
    assert {c["template"] for c in result.candidates} == set(candidates[:2])  # '{mask} {text_a}' suits no causal LM
    assert result.template == result.candidates[0]["template"]
    assert result.candidates[0]["dev_score"] >= result.candidates[1]["dev_score"]


def _tiny_t5():
    from conftest import CORPUS
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    sentinels = [f"<extra_id_{i}>" for i in range(10)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(
        CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>", *sentinels])
    )
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=sentinels,
    )
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=len(fast), d_model=32, d_ff=37, d_kv=16, num_layers=1, num_heads=2,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    return T5ForConditionalGeneration(cfg).eval(), fast


def test_t5_generates_valid_templates_and_the_backbone_ranks_them(bpe_tokenizer, sentiment_train, sentiment_test):
    from peft_dect.lmbff.search import generate_templates, search_templates

    t5, t5_tok = _tiny_t5()
    small = {k: v[:6] for k, v in sentiment_train.items()}
    templates = generate_templates(t5, t5_tok, small, LABEL_WORDS, beam=3, max_new_tokens=6)
    assert templates and len(templates) == len(set(templates))
    for text in templates:  # every candidate is a peft-dect template with the text and the mask
        t = Template(text)
        assert t.fields == ("text_a",)
    assert any(t.startswith("{text_a}") for t in templates) or any(t.endswith(" {text_a}") for t in templates)
    result = search_templates(
        t5,
        t5_tok,
        tiny_roberta(bpe_tokenizer),
        bpe_tokenizer,
        small,
        sentiment_test,
        LABEL_WORDS,
        beam=3,
        max_new_tokens=6,
    )
    assert result.template in templates
    assert [c["dev_score"] for c in result.candidates] == sorted(
        (c["dev_score"] for c in result.candidates), reverse=True
    )


def test_t5_pair_templates_put_the_mask_between_the_sentences():
    from peft_dect.lmbff.search import generate_templates

    t5, t5_tok = _tiny_t5()
    pairs = {
        "text_a": ["the film was good", "the plot was bad"],
        "text_b": ["it was fine", "it was dull"],
        "label": [1, 0],
    }
    templates = generate_templates(
        t5, t5_tok, pairs, {"no": ["no"], "yes": ["yes"]}, pair=True, beam=2, max_new_tokens=5
    )
    assert templates and all(t.startswith("{text_a}") and t.endswith(" {text_b}") and "{mask}" in t for t in templates)


def test_search_functions_share_one_argument_convention_and_accept_the_older_forms(bpe_tokenizer, sentiment_test):
    model = tiny_llama(bpe_tokenizer)
    bb = backbone(model, bpe_tokenizer)
    texts = list(sentiment_test["sentence"])
    # (backbone, data, label words): texts or a dict of columns, as the classifiers' predict_logits take them
    new = label_word_scores(bb, sentiment_test, LABEL_WORDS)
    torch.testing.assert_close(new, label_word_scores(bb, texts, LABEL_WORDS))
    torch.testing.assert_close(vocab_log_probs(bb, sentiment_test), vocab_log_probs(bb, texts))
    with pytest.deprecated_call():
        torch.testing.assert_close(new, label_word_scores(bb, texts, None, LABEL_WORDS, "mean"))
    # (model, tokenizer, data, label words, candidates), and the older (model, tokenizer, candidates, words, data)
    candidates = ["{text_a} In summary, it was {mask}.", "{text_a} It was {mask}"]
    ranked = rank_templates(model, bpe_tokenizer, sentiment_test, LABEL_WORDS, candidates, show_progress=False)
    with pytest.deprecated_call():
        older = rank_templates(model, bpe_tokenizer, candidates, LABEL_WORDS, sentiment_test)
    assert ranked == older


def test_many_classes_are_searched_one_class_at_a_time(bpe_tokenizer, caplog, monkeypatch):
    """Beyond MAX_ASSIGNMENTS the search does not enumerate k ** C assignments; it climbs class by class and still
    returns distinct words whose training accuracy is the best of those it visited (here: of the full grid)."""
    import logging

    from peft_dect.lmbff import search as search_module

    bb = backbone(tiny_llama(bpe_tokenizer), bpe_tokenizer)
    train = {"sentence": [f"{w} film {i}" for w in ("good", "dull", "long") for i in range(4)],
             "label": [c for c in range(3) for _ in range(4)]}  # fmt: skip
    classes = ["a", "b", "c"]
    full = search_label_words(bb, train, train, classes, k_likely=4, n_pairs=64)
    monkeypatch.setattr(search_module, "MAX_ASSIGNMENTS", 10)  # 4 ** 3 = 64 assignments are now "too many"
    with caplog.at_level(logging.WARNING):
        climbed = search_label_words(bb, train, train, classes, k_likely=4, n_pairs=64)
    assert "one class at a time" in caplog.text
    assert len(climbed.candidates) < len(full.candidates)
    words = [w[0] for w in climbed.label_words.values()]
    assert len(set(words)) == 3
    assert max(c["train_accuracy"] for c in climbed.candidates) == max(c["train_accuracy"] for c in full.candidates)


def test_coordinate_ascent_finds_words_that_are_not_the_likeliest():
    from peft_dect.lmbff.search import coordinate_ascent

    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    lp = torch.full((6, 6), -5.0)
    lp[:, 0] = -0.3  # token 0 is every class's likeliest candidate and tells nothing apart
    for row, c in enumerate(labels.tolist()):
        lp[row, 1 + c] = -0.5  # tokens 1, 2, 3 each mark one class
    visited = coordinate_ascent(lp, labels, [[0, 1, 4], [0, 2, 5], [0, 3, 4]])
    accuracy = {p: float((lp[:, list(p)].argmax(-1) == labels).float().mean()) for p in visited}
    assert max(accuracy, key=accuracy.get) == (1, 2, 3) and accuracy[(1, 2, 3)] == 1.0
    assert all(len(set(p)) == 3 for p in visited) and len(visited) < 3**3
