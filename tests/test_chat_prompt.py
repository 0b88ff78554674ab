"""Prompts wrapped in the tokenizer's chat template (`DecTConfig(chat_template=...)`): the rendering, the errors,
and auto mode trying the chat prompt as a candidate within its budget."""

import copy
import json

import numpy as np
import pytest
from conftest import LABEL_WORDS, TEMPLATE, tiny_llama, tiny_roberta
from peft import PeftModel, get_peft_model

import peft_dect  # noqa: F401  (registers DecT with peft)
from peft_dect import DecTConfig
from peft_dect.dect import prompt_search
from peft_dect.prompting import Template
from peft_dect.prompting.encoding import PromptEncoder


CHAT = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


@pytest.fixture(scope="module")
def chat_tokenizer(bpe_tokenizer):
    tok = copy.deepcopy(bpe_tokenizer)
    tok.chat_template = CHAT
    return tok


def config(**kwargs) -> DecTConfig:
    return DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, **kwargs)


def test_answer_prefix_is_the_template_text_between_the_last_field_and_the_mask():
    assert Template("{text_a} In summary, it was {mask}.").answer_prefix == " In summary, it was "
    assert Template("{text_a} ? {mask} , {text_b}").answer_prefix == " ? "
    assert Template("{text_a}{mask}").answer_prefix == ""


def test_the_text_is_the_users_message_and_the_template_words_open_the_answer(chat_tokenizer):
    enc = PromptEncoder(chat_tokenizer, Template(TEMPLATE), "causal", 128, chat=True)
    prompt = enc.render("the plot was fine")
    assert prompt == "<s><|user|> the plot was fine\n<|assistant|> In summary, it was"
    ids = enc.tokenize(["the plot was fine"])[0]
    assert ids == chat_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids.count(chat_tokenizer.bos_token_id) == 1  # the template's own BOS, not a second one
    question = PromptEncoder(
        chat_tokenizer, Template("{text_a}\nQuestion: {text_b}\nAnswer: {mask}"), "causal", 128, chat=True
    )
    expected = "<s><|user|> the plot\nQuestion: was it fine?\n<|assistant|> Answer:"  # the last line opens the answer
    assert question.render("the plot", "was it fine?") == expected
    plain = PromptEncoder(chat_tokenizer, Template(TEMPLATE), "causal", 128)
    assert plain.render("the plot was fine") == "the plot was fine In summary, it was"


def test_a_chat_prompt_cut_to_max_length_keeps_the_chat_markup_and_the_answer_start(chat_tokenizer):
    enc = PromptEncoder(chat_tokenizer, Template(TEMPLATE), "causal", 24, chat=True)
    ids = enc.tokenize(["the plot was fine and the music was lovely " * 6])[0]
    assert len(ids) <= 24 and enc.truncated == 1
    text = chat_tokenizer.decode(ids)
    assert text.startswith("<s><|user|>") and text.endswith("<|assistant|> In summary, it was")


def test_a_tokenizer_without_a_chat_template_is_an_error_naming_it(bpe_tokenizer):
    with pytest.raises(ValueError, match="has no chat template .* set chat_template=False"):
        PromptEncoder(bpe_tokenizer, Template(TEMPLATE), "causal", 128, chat=True)
    peft_model = get_peft_model(tiny_llama(bpe_tokenizer), config(chat_template=True))
    with pytest.raises(ValueError, match="has no chat template"):
        peft_model.fit({"text": ["good", "bad"], "label": ["positive", "negative"]}, tokenizer=bpe_tokenizer)


def test_a_masked_lm_takes_no_chat_template(chat_tokenizer):
    with pytest.raises(ValueError, match="masked LM: set chat_template=False"):
        PromptEncoder(chat_tokenizer, Template(TEMPLATE), "masked", 128, chat=True)


@pytest.mark.parametrize("value", ["yes", 1.0])
def test_chat_template_is_true_false_or_none(value):
    with pytest.raises(TypeError, match="chat_template must be True, False or None"):
        config(chat_template=value)


def names(cfg, chat_available=True) -> list[str]:
    return [c.name for c in prompt_search.plan(cfg, [8, 8], chat_available)]


ONE_SET = "demonstrations (1 set, 1 per class, random)"
CHAT_ONE_SET = "chat template, demonstrations (1 set, 1 per class, random)"


def test_chat_candidates_come_after_the_plain_ones_within_the_budget():
    assert names(config()) == ["template", ONE_SET]  # the default never wraps
    assert names(config(chat_template=None)) == ["template", ONE_SET]  # budget 2: the plain ones first
    assert names(config(chat_template=None, budget=3)) == ["template", ONE_SET, "chat template"]
    assert names(config(chat_template=None, budget=4)) == ["template", ONE_SET, "chat template", CHAT_ONE_SET]
    assert names(config(chat_template=None, budget=4), chat_available=False) == ["template", ONE_SET]
    assert names(config(chat_template=True, budget=4)) == ["chat template", CHAT_ONE_SET]
    assert names(config(chat_template=None, budget=4, mode="faithful")) == ["template"]


def test_a_chat_candidate_must_beat_the_demonstrations_by_the_margin():
    candidates = prompt_search.plan(config(chat_template=None, budget=3), [8, 8], True)
    margin = prompt_search.PROMPT_MARGIN
    assert prompt_search.best(candidates, [0.5, 0.7, 0.7 + margin / 2]) == 1
    assert prompt_search.best(candidates, [0.5, 0.7, 0.7 + margin]) == 2


def test_fit_with_a_chat_template_reads_other_features_and_saves_the_setting(
    chat_tokenizer, sentiment_train, tmp_path
):
    texts = sentiment_train["sentence"][:6]
    plain = get_peft_model(tiny_llama(chat_tokenizer), config(budget=1))
    plain.fit(sentiment_train, tokenizer=chat_tokenizer, show_progress=False)
    chat = get_peft_model(tiny_llama(chat_tokenizer), config(budget=1, chat_template=True))
    report = chat.fit(sentiment_train, tokenizer=chat_tokenizer, show_progress=False)
    assert report["model_passes"] == len(sentiment_train["sentence"]) + 1
    assert not np.allclose(plain.predict_proba(texts), chat.predict_proba(texts))
    chat.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(chat_tokenizer), tmp_path)
    assert loaded.peft_config["default"].chat_template is True
    np.testing.assert_allclose(
        loaded.predict_proba(texts, tokenizer=chat_tokenizer), chat.predict_proba(texts), atol=1e-6
    )


def test_auto_mode_tries_the_chat_prompt_and_records_its_choice(chat_tokenizer, sentiment_train, tmp_path):
    peft_model = get_peft_model(tiny_llama(chat_tokenizer), config(chat_template=None, budget=3))
    report = peft_model.fit(sentiment_train, tokenizer=chat_tokenizer, show_progress=False)
    n = len(sentiment_train["sentence"])
    assert list(report["prompt_candidates"]) == ["template", ONE_SET, "chat template"]
    assert report["model_passes"] >= 3 * (n + 1)  # each candidate: the training inputs and its content-free input
    cfg = peft_model.peft_config["default"]
    assert cfg.chat_template is None and cfg.chat_chosen == report["prompt"].startswith("chat")
    texts = sentiment_train["sentence"][:6]
    peft_model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(chat_tokenizer), tmp_path)
    assert loaded.peft_config["default"].chat_chosen == cfg.chat_chosen
    np.testing.assert_allclose(
        loaded.predict_proba(texts, tokenizer=chat_tokenizer), peft_model.predict_proba(texts), atol=1e-6
    )


def test_a_forced_chat_choice_is_written_and_refit_chooses_again(chat_tokenizer, sentiment_train, monkeypatch):
    monkeypatch.setattr(prompt_search, "best", lambda candidates, scores: len(candidates) - 1)
    peft_model = get_peft_model(tiny_llama(chat_tokenizer), config(chat_template=None, budget=3))
    report = peft_model.fit(sentiment_train, tokenizer=chat_tokenizer, show_progress=False)
    cfg = peft_model.peft_config["default"]
    assert report["prompt"] == cfg.chosen_prompt == "chat template" and cfg.uses_chat_template
    assert cfg.demonstrations is None
    monkeypatch.setattr(prompt_search, "best", lambda candidates, scores: 0)
    report = peft_model.fit(sentiment_train, tokenizer=chat_tokenizer, show_progress=False)
    assert list(report["prompt_candidates"]) == ["template", ONE_SET, "chat template"]
    assert report["prompt"] == "template" and not cfg.uses_chat_template


def test_a_masked_lm_gets_no_chat_candidate(chat_tokenizer, sentiment_train):
    peft_model = get_peft_model(tiny_roberta(chat_tokenizer), config(chat_template=None, budget=3))
    report = peft_model.fit(sentiment_train, tokenizer=chat_tokenizer, show_progress=False)
    assert list(report["prompt_candidates"]) == ["template", ONE_SET]


def test_black_box_dect_refuses_a_chat_template():
    from peft_dect.remote import BlackBoxDecT, OpenAIEndpoint

    with pytest.raises(ValueError, match="chat_template=True need the model in-process"):
        BlackBoxDecT(config(chat_template=True), OpenAIEndpoint("http://127.0.0.1:9", "m", show_progress=False))


def test_the_cli_wraps_the_prompt_on_request_and_names_a_tokenizer_without_a_template(
    tmp_path, chat_tokenizer, bpe_tokenizer
):
    from test_cli import fit_file, write_workspace

    model_dir = write_workspace(tmp_path, chat_tokenizer)
    out = fit_file(model_dir, tmp_path / "train.csv", tmp_path / "chat", "--chat-template", "on", "--budget", "1")
    assert out.returncode == 0, out.stderr
    saved = json.loads((tmp_path / "chat" / "adapter_config.json").read_text())
    assert saved["chat_template"] is True
    plain_dir = write_workspace(tmp_path / "plain", bpe_tokenizer)
    out = fit_file(plain_dir, tmp_path / "train.csv", tmp_path / "none", "--chat-template", "on")
    assert out.returncode == 2 and "has no chat template" in out.stderr
