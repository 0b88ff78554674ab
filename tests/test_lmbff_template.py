"""LM-BFF template strings import into peft-dect templates and render the same prompts."""

import pytest
from conftest import tiny_roberta

from peft_dect.backbone import Backbone
from peft_dect.prompting import Verbalizer
from peft_dect.prompting.lmbff_template import from_lmbff, parse_lmbff_template


SENTIMENT = "*cls**sent_0*_It_was*mask*.*sep+*"  # SST-2, MR, CR, MPQA (and SST-5)
THIS_IS = "*cls**sent_0*_This_is*mask*.*sep+*"  # Subj, CoLA
TREC = "*cls**mask*:*+sent_0**sep+*"
NLI = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*"  # MNLI, SNLI, QNLI, RTE
PARAPHRASE = "*cls**sent_0**mask*,*+sentl_1**sep+*"  # MRPC, QQP, STS-B

# the LM-BFF paper's manual templates (README / run_experiment.sh) with hand-checked renderings
CASES = [
    ("SST-2", SENTIMENT, ("a gorgeous film .", None), "a gorgeous film . It was <mask>."),
    ("MR", SENTIMENT, ("the story drags", None), "the story drags It was <mask>."),
    ("CR", SENTIMENT, ("Battery life is great.", None), "Battery life is great. It was <mask>."),
    ("MPQA", SENTIMENT, ("fears", None), "fears It was <mask>."),
    ("Subj", THIS_IS, ("the film is set in 1950 .", None), "the film is set in 1950 . This is <mask>."),
    ("TREC", TREC, ("How far is it to the moon?", None), "<mask>: How far is it to the moon?"),
    ("CoLA", THIS_IS, ("The book was written by John.", None), "The book was written by John. This is <mask>."),
    ("MNLI", NLI, ("The cat sat.", "A cat is sitting."), "The cat sat? <mask>, a cat is sitting."),
    ("SNLI", NLI, ("Two men play.", "Nobody plays."), "Two men play? <mask>, nobody plays."),
    ("QNLI", NLI, ("Who wrote it?", "Tolkien wrote it."), "Who wrote it? <mask>, tolkien wrote it."),
    ("RTE", NLI, ("Dana Reeve died.", "Christopher Reeve had an accident."),
     "Dana Reeve died? <mask>, christopher Reeve had an accident."),
    ("MRPC", PARAPHRASE, ("He said so.", "He had said so."), "He said so. <mask>, he had said so."),
    ("QQP", PARAPHRASE, ("How do I learn?", "What is learning?"), "How do I learn? <mask>, what is learning?"),
    ("STS-B", PARAPHRASE, ("A man plays.", "A man is playing."), "A man plays. <mask>, a man is playing."),
]  # fmt: skip


@pytest.mark.parametrize(("task", "lmbff", "texts", "expected"), CASES, ids=[c[0] for c in CASES])
def test_paper_templates_render_hand_checked_prompts(task, lmbff, texts, expected):
    assert from_lmbff(lmbff).render(*texts, mask_token="<mask>") == expected


def test_conversions():
    assert parse_lmbff_template(SENTIMENT) == "{text_a} It was {mask}."
    assert parse_lmbff_template(NLI) == "{text_a:drop_last}? {mask}, {text_b:lower_first}"
    assert parse_lmbff_template(TREC) == "{mask}: {text_a}"
    assert parse_lmbff_template("*cls*_A*mask*_one.*+sentu_0**sep+*") == " A {mask} one. {text_a:upper_first}"
    assert parse_lmbff_template("*cls**sentl-_0*_{x}*mask*") == "{text_a:lower_first,drop_last} {{x}} {mask}"
    assert from_lmbff("*cls**sentl-_0*_is*mask*").render("Great fun!", mask_token="[MASK]") == "great fun is [MASK]"


def test_token_ids_match_lmbff_tokenization(bpe_tokenizer):
    """The prompt tokens equal LM-BFF's part-by-part encoding (tokenize_multipart_input) on a RoBERTa-style BPE."""
    tok = bpe_tokenizer

    def enc(text):
        return tok.encode(text, add_special_tokens=False)

    # LM-BFF: *cls* *sent_0* "_It_was" *mask* "." *sep+*
    text = "a good film"
    lmbff = [tok.cls_token_id] + enc(text) + enc(" It was") + [tok.mask_token_id] + enc(".") + [tok.sep_token_id]
    template = from_lmbff(SENTIMENT)
    verbalizer = Verbalizer.from_words(
        {"neg": ["bad"], "pos": ["great"]}, tok, space_before=template.space_before_mask
    )
    bb = Backbone(tiny_roberta(tok), tok, template, verbalizer, show_progress=False)
    assert bb.tokenize([text])[0] == lmbff
    # and the label words are LM-BFF's space-prefixed tokens: tokenizer.tokenize(' ' + word)
    assert [ids[0] for ids in verbalizer.token_ids] == [enc(" bad")[0], enc(" great")[0]]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("*cls**sent_0*_It_was*mask.", "position 20 opens a variable that is never closed"),
        ("*cls**sent_0*_It_was*masks*.", "unknown variable \\*masks\\* at position 20"),
        ("*cls**sent_0**sep+**sent_1**mask*", "\\*sep\\+\\* at position 13 is inside the prompt"),
        ("*cls**sent_0*_It_was*mask*.*label_0*", "label_0\\* at position 27 is a demonstration"),
        ("*cls**sent_0*_It_was*mask*.*sent_2*", "sent_2\\* at position 27 refers to sentence 2"),
        ("*cls**sent_0*_It_was.", "exactly one \\*mask\\*"),
        ("*sent_0**cls**mask*", "\\*cls\\* at position 8 must be at the start"),
    ],
)
def test_bad_templates_name_the_position(bad, message):
    with pytest.raises(ValueError, match=message):
        from_lmbff(bad)
