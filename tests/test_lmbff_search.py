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
