"""Auto mode's prompt candidates (`peft_dect.dect.prompt_search`): the template alone or with demonstrations, chosen
on held-out data within a budget of model passes, reported, saved and shown on the card."""

import json

import numpy as np
import pytest
from conftest import LABEL_WORDS, TEMPLATE, tiny_llama, tiny_roberta
from peft import PeftConfig, PeftModel, get_peft_model

import peft_dect  # noqa: F401  (registers DecT with peft)
from peft_dect import DecTConfig, DemonstrationConfig
from peft_dect.dect import prompt_search


def config(**kwargs) -> DecTConfig:
    return DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, **kwargs)


def names(cfg, counts=(8, 8)) -> list[str]:
    return [c.name for c in prompt_search.plan(cfg, list(counts))]


TEMPLATE_ONLY = "template"
ONE_SET = "demonstrations (1 set, 1 per class, random)"
TWO_SETS = "demonstrations (2 sets, 1 per class, random)"


def test_the_default_tries_the_template_and_one_demonstration_set():
    assert names(config()) == [TEMPLATE_ONLY, ONE_SET]
    assert [c.passes for c in prompt_search.plan(config(), [8, 8])] == [1, 1]


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"budget": 1}, [TEMPLATE_ONLY]),
        ({"mode": "faithful"}, [TEMPLATE_ONLY]),
        ({"multi_label": True}, [TEMPLATE_ONLY]),
        ({"budget": 4, "max_passes_per_input": 2}, [TEMPLATE_ONLY, ONE_SET, TWO_SETS]),
        ({"budget": 3, "max_passes_per_input": 2}, [TEMPLATE_ONLY, ONE_SET]),  # 1 + 1 + 2 passes would exceed 3
        ({"budget": 5, "max_passes_per_input": 1}, [TEMPLATE_ONLY, ONE_SET]),  # prediction stays one pass
    ],
)
def test_the_candidates_keep_within_the_budget_and_the_prediction_cost(kwargs, expected):
    assert names(config(**kwargs)) == expected


def test_demonstrations_set_by_the_user_fix_the_prompt():
    cfg = config(demonstrations=DemonstrationConfig(num_sets=2, filter="fixed"))
    (only,) = prompt_search.plan(cfg, [8, 8])
    assert only.demonstrations == cfg.demonstrations and only.passes == 2


def test_no_demonstration_candidate_when_a_class_has_one_example():
    assert names(config(), counts=(1, 8)) == [TEMPLATE_ONLY]  # its only example cannot demonstrate itself


ONE_SHOT = "demonstrations (1 set, 1 per class, random, a lone example its own)"


def test_one_example_per_class_is_prompted_with_demonstrations_alone():
    (only,) = prompt_search.plan(config(), [1, 1])
    assert only.name == ONE_SHOT and only.passes == 1 and only.demonstrations.self_if_alone
    assert names(config(budget=1), counts=(1, 1)) == [TEMPLATE_ONLY]  # budget 1: the configured prompt
    assert names(config(mode="faithful"), counts=(1, 1)) == [TEMPLATE_ONLY]
    pair = DecTConfig(template="{text_a} ? {mask} , {text_b}", label_words=LABEL_WORDS)
    assert names(pair, counts=(1, 1)) == [TEMPLATE_ONLY]  # pairs: demonstrations lost on the 1-shot dev study


def test_no_demonstration_candidate_above_the_class_count_the_study_measured():
    words = {f"c{i}": [f"w{i}"] for i in range(prompt_search.DEMO_MAX_CLASSES + 1)}
    cfg = DecTConfig(template=TEMPLATE, label_words=words)
    assert [c.name for c in prompt_search.plan(cfg, [8] * len(words))] == [TEMPLATE_ONLY]
    assert names(config(), counts=[8] * prompt_search.DEMO_MAX_CLASSES) == [TEMPLATE_ONLY, ONE_SET]


def test_demonstrations_an_earlier_fit_chose_do_not_fix_the_prompt():
    cfg = config(demonstrations=DemonstrationConfig(), chosen_prompt=ONE_SET)
    assert names(cfg) == [TEMPLATE_ONLY, ONE_SET]


@pytest.mark.parametrize("name", ["budget", "max_passes_per_input"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_a_pass_count_below_one_or_not_an_integer_is_an_error(name, value):
    with pytest.raises(ValueError, match=f"{name} counts model passes .* integer >= 1"):
        config(**{name: value})


def test_best_keeps_demonstrations_unless_another_candidate_beats_them_by_the_margin():
    candidates = prompt_search.plan(config(budget=4, max_passes_per_input=2), [8, 8])  # template, 1 set, 2 sets
    margin = prompt_search.PROMPT_MARGIN
    assert prompt_search.best(candidates, [0.8, 0.8, 0.8]) == 1
    assert prompt_search.best(candidates, [0.8 + margin / 2, 0.8, 0.8]) == 1  # within the margin: demonstrations
    assert prompt_search.best(candidates, [0.8 + margin, 0.8, 0.5]) == 0
    assert prompt_search.best(candidates, [0.9, 0.8, 0.9]) == 0  # two beat it by the margin: the cheaper
    assert prompt_search.best(candidates[:1], [0.1]) == 0


def test_heldout_score_reads_the_metric_auto_mode_chose_by():
    assert prompt_search.heldout_score({"selected_by": "accuracy", "heldout_accuracy": 0.5}) == 0.5
    report = {"selected_by": "macro_f1", "heldout_accuracy": 0.5, "heldout_macro_f1": 0.25}
    assert prompt_search.heldout_score(report) == 0.25


@pytest.fixture(params=["roberta", "llama"])
def maker(request):
    return tiny_roberta if request.param == "roberta" else tiny_llama


def test_fit_tries_both_prompts_and_reports_the_choice(maker, bpe_tokenizer, sentiment_train):
    peft_model = get_peft_model(maker(bpe_tokenizer), config())
    report = peft_model.fit(sentiment_train, tokenizer=bpe_tokenizer, show_progress=False)
    n = len(sentiment_train["sentence"])
    assert report["model_passes"] == 2 * (n + 1)  # each prompt: the training inputs and its content-free input
    scores = report["prompt_candidates"]
    assert list(scores) == [TEMPLATE_ONLY, ONE_SET]
    candidates = prompt_search.plan(config(), [8, 8])
    chosen = [TEMPLATE_ONLY, ONE_SET][prompt_search.best(candidates, list(scores.values()))]
    assert report["prompt"] == chosen == peft_model.peft_config["default"].chosen_prompt
    assert report["heldout_accuracy"] == scores[chosen]
    assert report["predict_passes_per_input"] == 1 and report["prompt_tokens_per_input"] > 0
    assert (peft_model.peft_config["default"].demonstrations is not None) == (chosen == ONE_SET)


def test_budget_one_fits_the_template_alone_with_one_pass_per_input(bpe_tokenizer, sentiment_train):
    peft_model = get_peft_model(tiny_llama(bpe_tokenizer), config(budget=1))
    report = peft_model.fit(sentiment_train, tokenizer=bpe_tokenizer, show_progress=False)
    assert report["model_passes"] == len(sentiment_train["sentence"]) + 1
    assert report["prompt"] == TEMPLATE_ONLY and "prompt_candidates" not in report
    assert peft_model.peft_config["default"].chosen_prompt is None


def prefer(winner: str):
    """A held-out score under which the candidate named `winner` wins whatever the tiny model's features say."""

    def score(report):
        return 1.0 if ("demonstrations" in report["prompt_of_fit"]) == (winner == ONE_SET) else 0.0

    return score


@pytest.mark.parametrize("winner", [TEMPLATE_ONLY, ONE_SET])
def test_the_chosen_prompt_predicts_saves_and_reloads_as_a_fit_with_it_fixed(
    winner, bpe_tokenizer, sentiment_train, sentiment_test, tmp_path, monkeypatch
):
    texts = sentiment_test["sentence"][:9]
    original_fit = peft_dect.dect.model.DecTModel.fit_prompt

    def tagged(self, *args):  # tag each candidate's report with its prompt, for `prefer`
        report = original_fit(self, *args)
        demos = self.config_of_active.demonstrations
        return {**report, "prompt_of_fit": "template" if demos is None else "demonstrations"}

    monkeypatch.setattr(peft_dect.dect.model.DecTModel, "fit_prompt", tagged)
    monkeypatch.setattr(prompt_search, "heldout_score", prefer(winner))
    peft_model = get_peft_model(tiny_llama(bpe_tokenizer), config())
    report = peft_model.fit(sentiment_train, tokenizer=bpe_tokenizer, show_progress=False)
    assert report["prompt"] == winner
    n = len(sentiment_train["sentence"])
    assert report["model_passes"] == 2 * (n + 1)  # a refit of the template reads the cached features
    monkeypatch.undo()

    fixed = config(budget=1, demonstrations=DemonstrationConfig() if winner == ONE_SET else None)
    reference = get_peft_model(tiny_llama(bpe_tokenizer), fixed)
    reference.fit(sentiment_train, tokenizer=bpe_tokenizer, show_progress=False)
    np.testing.assert_allclose(peft_model.predict_proba(texts), reference.predict_proba(texts), atol=1e-6)

    peft_model.save_pretrained(tmp_path)
    saved = PeftConfig.from_pretrained(tmp_path)
    assert saved.chosen_prompt == winner and (saved.demonstrations is not None) == (winner == ONE_SET)
    assert (tmp_path / "demonstration_pool.json").exists() == (winner == ONE_SET)
    if winner == ONE_SET:
        assert json.loads((tmp_path / "demonstration_pool.json").read_text())["text_a"] == sentiment_train["sentence"]
    loaded = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)
    np.testing.assert_allclose(loaded.predict_proba(texts, tokenizer=bpe_tokenizer), reference.predict_proba(texts))

    again = peft_model.fit(sentiment_train, show_progress=False)  # a refit searches again, from cached features
    assert list(again["prompt_candidates"]) == [TEMPLATE_ONLY, ONE_SET] and again["model_passes"] == 0


def test_the_card_states_the_chosen_prompt_and_its_cost(bpe_tokenizer, sentiment_train):
    peft_model = get_peft_model(tiny_llama(bpe_tokenizer), config())
    report = peft_model.fit(sentiment_train, tokenizer=bpe_tokenizer, show_progress=False)
    card = peft_model.base_model.model_card("default")
    assert f"Prompt chosen on held-out data (template {100 * report['prompt_candidates'][TEMPLATE_ONLY]:.1f}" in card
    assert f": {report['prompt']}, 1 model pass per input at prediction time" in card


def test_a_one_shot_fit_uses_demonstrations_and_saves_and_reloads_them(bpe_tokenizer, sentiment_train, tmp_path):
    first = [sentiment_train["label"].index(c) for c in (0, 1)]
    one_shot = {k: [sentiment_train[k][i] for i in first] for k in ("sentence", "label")}
    peft_model = get_peft_model(tiny_llama(bpe_tokenizer), config())
    report = peft_model.fit(one_shot, tokenizer=bpe_tokenizer, show_progress=False)
    cfg = peft_model.peft_config["default"]
    assert report["prompt"] == ONE_SHOT == cfg.chosen_prompt and "prompt_candidates" not in report
    assert report["model_passes"] == 2 + 1 and report["predict_passes_per_input"] == 1
    assert cfg.demonstrations == prompt_search.one_shot_candidate().demonstrations
    texts = one_shot["sentence"] + ["a new film"]  # training texts predict too: each demonstrates its own class
    expected = peft_model.predict_proba(texts)
    peft_model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)
    assert loaded.peft_config["default"].demonstrations.self_if_alone
    np.testing.assert_allclose(loaded.predict_proba(texts, tokenizer=bpe_tokenizer), expected, atol=1e-6)
    again = peft_model.fit(sentiment_train, show_progress=False)  # more data: the candidates are searched again
    assert list(again["prompt_candidates"]) == [TEMPLATE_ONLY, ONE_SET]
