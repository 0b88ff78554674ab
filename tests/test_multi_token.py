"""Label words of several tokens: exact continuation scores for a causal LM, the pieces' mean for a masked LM."""

import logging

import pytest
import torch
from conftest import tiny_bert, tiny_llama, tiny_roberta
from peft import get_peft_model

from peft_dect import DecTConfig
from peft_dect.backbone import Backbone
from peft_dect.prompting import Template, Verbalizer
from peft_dect.prompting.verbalizer import word_token_ids


CAUSAL_TEMPLATE = "{text_a} It was about {mask}"
MASKED_TEMPLATE = "{text_a} It was about {mask}."
# several words share a first piece; the classes differ only after it
WORDS = {
    "greatness": ["greatness"],
    "greatly": ["greatly"],
    "bad": ["bad"],
    "dull plot": ["dull plot", "messy plot"],
}
TEXTS = ["a good film", "the plot was dull and very messy", "great acting, a superb story"]


def make(model, tok, template, multi_token="exact", words=WORDS, **kwargs):
    t = Template(template)
    v = Verbalizer.from_words(words, tok, space_before=t.space_before_mask, multi_token=multi_token, **kwargs)
    return Backbone(model, tok, t, v, show_progress=False, batch_size=2)


def brute_force_word(model, prompt_ids: list[int], word: list[int]) -> float:
    """log P(word | prompt) from one full forward pass over prompt + word."""
    ids = torch.tensor([prompt_ids + word])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    start = len(prompt_ids) - 1
    return float(sum(logp[start + j, t] for j, t in enumerate(word)))


@pytest.fixture(params=["bpe", "sentencepiece", "wordpiece"])
def tokenizer(request, bpe_tokenizer, sp_tokenizer, wordpiece_tokenizer):
    return {"bpe": bpe_tokenizer, "sentencepiece": sp_tokenizer, "wordpiece": wordpiece_tokenizer}[request.param]


def words_for(tok) -> dict:
    """WORDS, or for a WordPiece vocabulary words it can spell (only corpus words and letters are in it)."""
    if tok.unk_token_id in tok.encode(" greatness messy", add_special_tokens=False):
        return {"good film": ["good film"], "great": ["great"], "dull plot": ["dull plot"], "bad": ["bad"]}
    return WORDS


@pytest.mark.parametrize("rule", ["exact", "exact_mean"])
def test_causal_exact_scores_equal_a_full_pass_per_word(tokenizer, rule):
    model = tiny_llama(tokenizer)
    words = words_for(tokenizer)
    bb = make(model, tokenizer, CAUSAL_TEMPLATE, multi_token=rule, words=words)
    assert bb.continues and any(len(s) > 1 for per in bb.verbalizer.sequences for s in per)
    feats = bb.run(bb.tokenize(TEXTS))  # right-padded batches of 2 with the prompt's key/value cache
    for n, prompt in enumerate(bb.tokenize(TEXTS)):
        for c, per_class in enumerate(bb.verbalizer.sequences):
            scores = [brute_force_word(model, prompt, list(seq)) for seq in per_class]
            if rule == "exact_mean":
                scores = [s / len(seq) for s, seq in zip(scores, per_class)]
            expected = sum(scores) / len(scores)
            assert feats.label_logits[n, c].item() == pytest.approx(expected, abs=2e-4)


def test_causal_left_padding_matches_a_full_pass_with_the_same_padding(bpe_tokenizer):
    bb = make(tiny_llama(bpe_tokenizer), bpe_tokenizer, CAUSAL_TEMPLATE)
    ids = bb.tokenize(TEXTS[:2])
    width = max(map(len, ids))
    input_ids = torch.tensor([[bb.pad_id] * (width - len(r)) + r for r in ids])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])
    with torch.no_grad():
        left = bb.forward(input_ids, mask)
    for n, prompt in enumerate(ids):
        pad = [bb.pad_id] * (width - len(prompt))
        scores = []
        for seq in bb.verbalizer.sequences[3]:  # "dull plot", "messy plot"
            full = torch.tensor([pad + prompt + list(seq)])
            attn = torch.tensor([[0] * len(pad) + [1] * (len(prompt) + len(seq))])
            with torch.no_grad():
                logp = torch.log_softmax(bb.model(input_ids=full, attention_mask=attn).logits[0], -1)
            scores.append(float(sum(logp[width - 1 + j, t] for j, t in enumerate(seq))))
        assert left.label_logits[n, 3].item() == pytest.approx(sum(scores) / 2, abs=2e-4)


def test_continuation_pass_is_one_batched_call_per_batch(bpe_tokenizer):
    model = tiny_llama(bpe_tokenizer)
    bb = make(model, bpe_tokenizer, CAUSAL_TEMPLATE)
    calls = []
    handle = model.model.register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs), with_kwargs=True)
    try:
        bb.run(bb.tokenize(TEXTS))  # batch_size 2: two batches
    finally:
        handle.remove()
    assert len(calls) == 4  # per batch: the prompt's pass and one pass over every word's continuation
    continuation = [
        kw
        for kw in calls
        if (kw.get("cache") or kw.get("past_key_values")) is not None and kw.get("position_ids") is not None
    ]
    assert len(continuation) == 2
    words = [s for per in bb.verbalizer.sequences for s in per]
    prefixes = {s[:j] for s in words for j in range(1, len(s))}  # words that start alike share their steps
    assert len(prefixes) < sum(len(s) - 1 for s in words)
    assert all(kw["input_ids"].shape[1] == len(prefixes) for kw in continuation)


@pytest.mark.parametrize("make_model", [tiny_roberta, tiny_bert])
def test_masked_lm_scores_the_mean_of_the_pieces_at_the_mask(make_model, bpe_tokenizer, wordpiece_tokenizer):
    tok = bpe_tokenizer if make_model is tiny_roberta else wordpiece_tokenizer
    model = make_model(tok)
    words = words_for(tok)
    bb = make(model, tok, MASKED_TEMPLATE, words=words)
    assert bb.plan is not None and not bb.continues
    ids = bb.tokenize(TEXTS)
    feats = bb.run(ids)
    batch = bb.collate(ids)
    with torch.no_grad():
        logits = model(**batch).logits
    pos = bb.positions(batch["input_ids"], batch["attention_mask"])
    logp = torch.log_softmax(logits[torch.arange(len(ids)), pos], -1)
    for c, per_class in enumerate(bb.verbalizer.sequences):
        expected = torch.stack([logp[:, list(seq)].mean(-1) for seq in per_class]).mean(0)
        torch.testing.assert_close(feats.label_logits[:, c], expected, atol=1e-5, rtol=0)


def test_single_token_words_score_as_before(bpe_tokenizer):
    words = {"negative": ["bad"], "positive": ["great"]}
    model = tiny_llama(bpe_tokenizer)
    exact, first = (make(model, bpe_tokenizer, CAUSAL_TEMPLATE, rule, words) for rule in ("exact", "first"))
    assert exact.plan is None and exact.prompt_key == first.prompt_key
    ids = exact.tokenize(TEXTS)
    assert torch.equal(exact.run(ids).label_logits, first.run(ids).label_logits)


def test_first_rule_still_refuses_a_shared_first_token(bpe_tokenizer):
    with pytest.raises(ValueError, match="same token"):
        Verbalizer.from_words(WORDS, bpe_tokenizer, space_before=True, multi_token="first")
    v = Verbalizer.from_words(WORDS, bpe_tokenizer, space_before=True)  # exact, the default
    assert v.sequences[0][0][0] == v.sequences[1][0][0]  # greatness and greatly share their first piece


def test_identical_sequences_in_two_classes_name_both(wordpiece_tokenizer):
    with pytest.raises(ValueError, match=r"'dull plot' \('a'\) and 'Dull plot' \('b'\) are the same token"):
        Verbalizer.from_words({"a": ["dull plot"], "b": ["Dull plot"]}, wordpiece_tokenizer, space_before=False)


def test_repeated_sequence_in_one_class_counts_once(wordpiece_tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        v = Verbalizer.from_words(
            {"a": ["dull plot", "Dull plot"], "b": ["bad"]}, wordpiece_tokenizer, space_before=False
        )
    assert len(v.sequences[0]) == 1 and "counted once" in caplog.text


def test_word_with_the_mask_token_is_refused(bpe_tokenizer):
    for word in ("the {mask} plot", "a <mask>"):
        with pytest.raises(ValueError, match="contains the mask token"):
            Verbalizer.from_words({"a": [word], "b": ["bad"]}, bpe_tokenizer, space_before=True)


def test_word_longer_than_the_context_is_refused(bpe_tokenizer):
    long_word = " ".join(["messy"] * 40)
    assert len(word_token_ids(bpe_tokenizer, long_word, True)) >= 40
    with pytest.raises(ValueError, match="does not fit the model's context"):
        t = Template(CAUSAL_TEMPLATE)
        v = Verbalizer.from_words({"a": [long_word], "b": ["bad"]}, bpe_tokenizer, space_before=True)
        Backbone(tiny_llama(bpe_tokenizer), bpe_tokenizer, t, v, max_length=32)


def test_dect_fits_and_reloads_with_multi_token_words(bpe_tokenizer, tmp_path, sentiment_train):
    words = {"negative": ["dull plot", "bad"], "positive": ["great film", "greatness"]}
    cfg = DecTConfig(template=CAUSAL_TEMPLATE, label_words=words, epochs=3, seed=0)
    model = get_peft_model(tiny_llama(bpe_tokenizer), cfg)
    model.fit(sentiment_train, tokenizer=bpe_tokenizer)
    probs = model.predict_proba(TEXTS, tokenizer=bpe_tokenizer)
    assert probs.shape == (3, 2) and abs(probs.sum(-1) - 1).max() < 1e-5
    model.save_pretrained(tmp_path / "a")
    from peft import PeftModel

    again = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path / "a")
    assert again.peft_config["default"].multi_token == "exact"
    assert (again.predict_proba(TEXTS, tokenizer=bpe_tokenizer) == probs).all()
