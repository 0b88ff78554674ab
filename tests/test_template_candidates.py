"""Template candidates (`DecTConfig(templates=[...])`): auto mode chooses the template among the configured one and
the user's, on held-out data within the budget; the choice predicts, saves, reloads and shows on the card."""

import numpy as np
import pytest
from conftest import LABEL_WORDS, TEMPLATE, tiny_llama, tiny_roberta
from peft import PeftConfig, PeftModel, get_peft_model

import peft_dect  # noqa: F401  (registers DecT with peft)
from peft_dect import DecTConfig, DemonstrationConfig
from peft_dect.dect import prompt_search


OTHER = "Review: {text_a}\nSentiment: {mask}"
THIRD = "{text_a} All in all, it was {mask}."
ONE_SET = "demonstrations (1 set, 1 per class, random)"


def config(**kwargs) -> DecTConfig:
    return DecTConfig(**{"template": TEMPLATE, "label_words": LABEL_WORDS, **kwargs})


def names(cfg, counts=(8, 8)) -> list[str]:
    return [c.name for c in prompt_search.plan(cfg, list(counts))]


def test_templates_follow_the_configured_template_within_the_budget():
    assert names(config(templates=[OTHER])) == ["template", ONE_SET]  # the default budget: 2 passes
    assert names(config(templates=[OTHER], budget=4)) == [
        "template",
        ONE_SET,
        f"template {OTHER!r}",
        f"{ONE_SET}, template {OTHER!r}",
    ]
    assert names(config(templates=[OTHER, THIRD], budget=3)) == ["template", ONE_SET, f"template {OTHER!r}"]
    assert names(config(templates=[OTHER, TEMPLATE], budget=5)) == names(config(templates=[OTHER], budget=5))
    assert config(templates=[OTHER, TEMPLATE, OTHER]).templates == [OTHER]  # the template itself and doubles dropped
    with_demos = config(templates=[OTHER], budget=2, demonstrations=DemonstrationConfig())
    assert [c.template for c in prompt_search.plan(with_demos, [8, 8])] == [None, OTHER]  # user's demos, 2 templates


@pytest.mark.parametrize("kwargs", [{"budget": 1}, {"mode": "faithful"}, {"multi_label": True}])
def test_templates_are_not_tried_where_auto_mode_does_not_search(kwargs):
    assert names(config(templates=[OTHER], **kwargs)) == ["template"]


def test_one_example_per_class_keeps_the_configured_template():
    (only,) = prompt_search.plan(config(templates=[OTHER], budget=4), [1, 1])
    assert only.template is None  # nothing is held out to choose a template by


@pytest.mark.parametrize(
    "templates, error, match",
    [
        ("{text_a} It was {mask}.", TypeError, "templates must be a list"),
        ([3], TypeError, "templates must hold strings"),
        (["{text_a} no mask"], ValueError, "template candidate '{text_a} no mask' does not parse"),
        (["{text_a} {text_b} {mask}"], ValueError, "must have the text fields of template="),
    ],
)
def test_a_bad_template_candidate_is_an_error_naming_it(templates, error, match):
    with pytest.raises(error, match=match):
        config(templates=templates)


def test_a_chosen_template_must_be_one_of_the_configs():
    with pytest.raises(ValueError, match="template_chosen=.* is not one of"):
        config(templates=[OTHER], template_chosen=THIRD)
    assert config(templates=[OTHER], template_chosen=OTHER).active_template == OTHER
    assert config().active_template == TEMPLATE


def test_a_template_candidate_must_end_at_the_mask_for_a_causal_lm(bpe_tokenizer):
    with pytest.raises(ValueError, match="causal"):
        get_peft_model(tiny_llama(bpe_tokenizer), config(templates=["{mask} : {text_a}"]))
    get_peft_model(tiny_roberta(bpe_tokenizer), config(templates=["{mask} : {text_a}"]))  # a masked LM reads it


def prefer(template: str | None, averaged: bool = False):
    """A held-out score under which the plain candidate with `template` (or the mean over the templates) wins
    whatever the tiny model's features say."""

    def score(report):
        return 1.0 if report["prompt_of_fit"] == (template, None, averaged) else 0.0

    return score


@pytest.fixture
def tagged_fits(monkeypatch):
    """Tag each candidate's fit report with its prompt (template chosen, demonstrations, averaged), for `prefer`."""
    original_fit = peft_dect.dect.model.DecTModel.fit_prompt

    def tagged(self, *args):
        report = original_fit(self, *args)
        cfg = self.config_of_active
        return {**report, "prompt_of_fit": (cfg.template_chosen, cfg.demonstrations, cfg.templates_averaged)}

    monkeypatch.setattr(peft_dect.dect.model.DecTModel, "fit_prompt", tagged)
    return monkeypatch


@pytest.mark.parametrize("winner", [None, OTHER])
def test_the_chosen_template_predicts_saves_and_reloads_as_a_fit_with_it_configured(
    winner, bpe_tokenizer, sentiment_train, sentiment_test, tmp_path, tagged_fits
):
    texts = sentiment_test["sentence"][:9]
    monkeypatch = tagged_fits
    monkeypatch.setattr(prompt_search, "heldout_score", prefer(winner))
    peft_model = get_peft_model(tiny_llama(bpe_tokenizer), config(templates=[OTHER], budget=4))
    report = peft_model.fit(sentiment_train, tokenizer=bpe_tokenizer, show_progress=False)
    monkeypatch.undo()
    n = len(sentiment_train["sentence"])
    assert report["model_passes"] == 4 * (n + 1)  # four prompts; the chosen one refits from cached features
    expected_name = "template" if winner is None else f"template {OTHER!r}"
    assert report["prompt"] == expected_name and list(report["prompt_candidates"])[2] == f"template {OTHER!r}"
    cfg = peft_model.peft_config["default"]
    assert cfg.template_chosen == winner and cfg.template == TEMPLATE and cfg.demonstrations is None

    reference = get_peft_model(tiny_llama(bpe_tokenizer), config(template=winner or TEMPLATE, budget=1))
    reference.fit(sentiment_train, tokenizer=bpe_tokenizer, show_progress=False)
    np.testing.assert_allclose(peft_model.predict_proba(texts), reference.predict_proba(texts), atol=1e-6)
    card = peft_model.base_model.model_card("default")
    assert f"- Template: `{winner or TEMPLATE}`" in card  # the template the adapter prompts with

    peft_model.save_pretrained(tmp_path)
    saved = PeftConfig.from_pretrained(tmp_path)
    assert (
        saved.template_chosen == winner
        and saved.templates == [OTHER]
        and saved.active_template == (winner or TEMPLATE)
    )
    loaded = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)
    np.testing.assert_allclose(loaded.predict_proba(texts, tokenizer=bpe_tokenizer), reference.predict_proba(texts))

    again = peft_model.fit(sentiment_train, show_progress=False)  # a refit searches again, from cached features
    assert len(again["prompt_candidates"]) == 4 and again["model_passes"] == 0


def test_adapters_of_different_templates_do_not_share_a_pass(bpe_tokenizer):
    peft_model = get_peft_model(tiny_llama(bpe_tokenizer), config(templates=[OTHER]))
    peft_model.add_adapter("other", config(templates=[OTHER], template_chosen=OTHER))
    tuner = peft_model.base_model
    assert tuner.pass_key("default") != tuner.pass_key("other")
    plain = config(template=OTHER)
    peft_model.add_adapter("plain", plain)
    assert tuner.pass_key("other") == tuner.pass_key("plain")


AVERAGED = "templates (mean of 2)"


def test_the_mean_over_the_templates_is_a_candidate_where_the_prediction_cost_allows():
    assert AVERAGED not in names(config(templates=[OTHER], budget=10))  # one pass per input at prediction
    cfg = config(templates=[OTHER], budget=10, max_passes_per_input=2)
    plan = prompt_search.plan(cfg, [8, 8])
    # 1-pass candidates (4 passes), then the 2-pass ones: 2 demonstration sets per template, then the mean; the mean
    # with demonstrations (2 more passes) would exceed the budget
    assert [c.passes for c in plan] == [1, 1, 1, 1, 2, 2, 2] and plan[-1].name == AVERAGED
    assert plan[-1].averaged == 2 and plan[-1].template is None
    demos = prompt_search.PromptCandidate(DemonstrationConfig(num_sets=2), averaged=3)
    assert demos.passes == 6 and demos.name.endswith(", templates (mean of 3)")


def test_templates_averaged_needs_templates():
    with pytest.raises(ValueError, match="give templates"):
        config(templates_averaged=True)
    with pytest.raises(ValueError, match="no template_chosen"):
        config(templates=[OTHER], templates_averaged=True, template_chosen=OTHER)
    with pytest.raises(TypeError, match="templates_averaged must be True or False"):
        config(templates=[OTHER], templates_averaged=1)
    assert config(templates=[OTHER], templates_averaged=True).prompt_templates == [TEMPLATE, OTHER]


def test_the_mean_over_the_templates_averages_their_features_and_saves_and_reloads(
    bpe_tokenizer, sentiment_train, sentiment_test, tmp_path, tagged_fits
):
    texts = sentiment_test["sentence"][:9]
    tagged_fits.setattr(prompt_search, "heldout_score", prefer(None, averaged=True))
    tagged_fits.setattr(prompt_search, "DEMO_MAX_CLASSES", 1)  # no demonstration candidates: the two templates, mean
    peft_model = get_peft_model(tiny_llama(bpe_tokenizer), config(templates=[OTHER], budget=4, max_passes_per_input=2))
    report = peft_model.fit(sentiment_train, tokenizer=bpe_tokenizer, show_progress=False)
    tagged_fits.undo()
    cfg = peft_model.peft_config["default"]
    assert report["prompt"] == AVERAGED == cfg.chosen_prompt and cfg.templates_averaged
    assert report["predict_passes_per_input"] == 2
    n = len(sentiment_train["sentence"])
    assert report["model_passes"] == 2 * (n + 1)  # the mean reads the two templates' cached passes
    assert list(report["prompt_candidates"]) == ["template", f"template {OTHER!r}", AVERAGED]
    tuner = peft_model.base_model
    mean = tuner.embed(texts)
    for name, template in (("a", TEMPLATE), ("b", OTHER)):
        peft_model.add_adapter(name, config(template=template, budget=1))
    singles = []
    for name in ("a", "b"):
        peft_model.set_adapter(name)
        singles.append(tuner.embed(texts))
    peft_model.set_adapter("default")
    np.testing.assert_allclose(mean.numpy(), ((singles[0] + singles[1]) / 2).numpy(), rtol=1e-5, atol=1e-6)
    assert tuner.pass_key("default") not in (tuner.pass_key("a"), tuner.pass_key("b"))
    tokens = [tuner.backbone(adapter_name=name).tokenize(sentiment_train["sentence"]) for name in ("a", "b")]
    per_input = sum(sum(map(len, ids)) / len(ids) for ids in tokens)  # one prompt per template
    assert report["prompt_tokens_per_input"] == pytest.approx(per_input)
    with pytest.raises(ValueError, match="Trainer path"):
        tuner.prepare_dataset(sentiment_train)

    expected = peft_model.predict_proba(texts)
    peft_model.save_pretrained(tmp_path, selected_adapters=["default"])
    loaded = PeftModel.from_pretrained(tiny_llama(bpe_tokenizer), tmp_path)
    assert loaded.peft_config["default"].templates_averaged
    np.testing.assert_allclose(loaded.predict_proba(texts, tokenizer=bpe_tokenizer), expected, atol=1e-6)
    card = tuner.model_card("default")
    assert f"- Template: `{TEMPLATE}`, `{OTHER}`" in card
    assert ": templates (mean of 2), 2 model passes per input at prediction time" in card


def test_templates_averaged_set_by_the_user_fixes_the_mean(bpe_tokenizer, sentiment_train, sentiment_test):
    cfg = config(templates=[OTHER], templates_averaged=True)
    (only,) = prompt_search.plan(cfg, [8, 8])  # its demonstrations variant costs 2 passes at prediction: not tried
    assert only.averaged == 2 and only.demonstrations is None
    fixed = config(templates=[OTHER], templates_averaged=True, demonstrations=DemonstrationConfig())
    (only,) = prompt_search.plan(fixed, [8, 8])
    assert only.averaged == 2 and only.demonstrations == fixed.demonstrations and only.passes == 2
    (one_shot,) = prompt_search.plan(cfg, [1, 1])
    assert one_shot.averaged == 2  # the 1-shot rule does not replace what the user asked for
    chosen_before = config(templates=[OTHER], templates_averaged=True, chosen_prompt=AVERAGED)
    assert prompt_search.plan(chosen_before, [8, 8])[0].averaged == 0  # a fit's choice fixes nothing
    peft_model = get_peft_model(tiny_llama(bpe_tokenizer), config(templates=[OTHER], templates_averaged=True))
    report = peft_model.fit(sentiment_train, tokenizer=bpe_tokenizer, show_progress=False)
    assert report["prompt"] == AVERAGED and report["predict_passes_per_input"] == 2
    assert peft_model.peft_config["default"].chosen_prompt is None  # still fixed for the next fit
    assert report["model_passes"] == 2 * (len(sentiment_train["sentence"]) + 1)
