import pytest

from peft_dect.prompting import Template


def test_render_masked_keeps_whole_template():
    t = Template("{text_a} In summary, it was {mask}.")
    assert t.render("a fine film", mask_token="<mask>") == "a fine film In summary, it was <mask>."


def test_render_causal_stops_at_mask_without_trailing_space():
    t = Template("{text_a} In summary, it was {mask}.")
    assert t.render("a fine film") == "a fine film In summary, it was"
    assert t.space_before_mask


def test_pair_template_renders_both_texts():
    t = Template("{text_a}?{mask}, {text_b}")
    assert t.is_pair and t.fields == ("text_a", "text_b")
    assert t.render("A", "B", mask_token="[MASK]") == "A?[MASK], B"
    assert not t.space_before_mask
    assert not Template("{text_a}{mask}").space_before_mask


def test_literal_braces_are_escaped_like_format():
    t = Template("{{note}} {text_a} {mask}")
    assert t.render("x", mask_token="M") == "{note} x M"


@pytest.mark.parametrize(
    "text, message",
    [
        ("{text_a} It was great.", "exactly one {mask}"),
        ("{text_a} {mask} {mask}", "exactly one {mask}"),
        ("{text_a} {label} {mask}", "unknown placeholder {label}"),
        ("It was {mask}.", "must contain {text_a}"),
        ("{text_b} {mask}", "{text_b} without {text_a}"),
        ("{text_a {mask}", "does not parse"),
        ("{text_a!r} {mask}", "no format spec"),
    ],
)
def test_bad_templates_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        Template(text)


def test_pair_template_without_second_text_is_an_error():
    with pytest.raises(ValueError, match="no second text"):
        Template("{text_a} {mask} {text_b}").render("only one", mask_token="M")


def test_causal_check_rejects_text_after_the_mask():
    with pytest.raises(ValueError, match="after \\{mask\\}"):
        Template("{text_a}? {mask}, {text_b}").check_causal()
    with pytest.raises(ValueError, match="starts with \\{mask\\}"):
        Template("{mask}: {text_a}").check_causal()
    Template("{text_a} It was {mask}.").check_causal()  # literal text after the mask is dropped, not an error
