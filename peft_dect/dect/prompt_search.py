"""Auto mode's prompt candidates: the configured prompt alone, or with LM-BFF demonstrations, chosen on held-out data.

Each candidate is one way to prompt the frozen model: with or without demonstrations, with the configured template
or one of the config's `templates`, and, for a causal LM whose tokenizer has a chat template and a config with
`chat_template=None`, plain or wrapped in that template. Its cost
is counted in model passes per input: a candidate with `s` demonstration sets runs `s` passes per input (their
features are averaged), at training and at prediction time.
`plan` lists the candidates a config allows, cheapest first (plain before chat at equal cost), within two bounds:

    training:   sum of the candidates' passes per training input <= budget
    prediction: each candidate's passes per input <= max_passes_per_input

`best` compares the candidates' held-out scores (auto mode's own choice metric, on the same folds and eval split for
every candidate): the first candidate with demonstrations is kept unless another beats it by PROMPT_MARGIN; among
those that do, the highest, the cheaper among equals. Nothing here runs the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..prompting.template import Template
from ..settings import DemonstrationConfig


# budget 2 / max_passes_per_input 1: the configured prompt and one set of randomly sampled demonstrations, one pass
# per input at prediction either way. Chosen on the 16-shot dev files of the grid's 8 tasks, seeds 13, 21 and 42, that
# the fits never see (SmolLM2; benchmarks/prompt_search_dev.py, never a test set): see the README's "Prompt
# candidates" for the figures. A second set (budget 3, 2 passes per input at prediction) was not measured.
DEFAULT_BUDGET = 2
DEFAULT_MAX_PASSES = 1
# The margin by which another candidate must beat the first one with demonstrations on held-out score. On the dev
# study (3 seeds), demonstrations were ahead on 5 of the 8 tasks at 16 shots (mean 62.1 against 57.4; 60.3 against
# 55.6 at 4 shots), while the held-out scores of 32-48 examples often disagreed with the dev files: picking the
# higher one lost 1.6 and 2.9 points to always taking demonstrations; a margin of 0.06 (2 to 3 held-out examples)
# gives 61.9 and 61.3 and keeps the template where held-out data clearly prefer it.
PROMPT_MARGIN = 0.06
DEMO_FILTER = "random"
# A demonstration set holds one example per class, so its prompt grows with the class count: the study measured
# tasks of 2 to 5 classes, and at BANKING77's 77 a set would be about 1,000 tokens, past most models' length budget
# for the query. Above DEMO_MAX_CLASSES classes only the template is tried.
DEMO_MAX_CLASSES = 5  # "similar" needs a sentence encoder, which a user may not have: not a default candidate


@dataclass(frozen=True)
class PromptCandidate:
    """One prompt auto mode may choose.

    Args:
        demonstrations: the demonstrations every prompt of this candidate carries (None: the template alone).
        chat: whether the prompt is wrapped in the tokenizer's chat template.
        template: one of the config's `templates` (None: the configured `template`).
        averaged: how many templates (the configured one and the config's `templates`) each input's features are
            averaged over (`peft_dect.dect.template_mean`); 0: one template.
    """

    demonstrations: DemonstrationConfig | None = None
    chat: bool = False
    template: str | None = None
    averaged: int = 0

    @property
    def passes(self) -> int:
        """Model passes per input, at training and at prediction time."""
        sets = 1 if self.demonstrations is None else self.demonstrations.num_sets
        return sets * max(1, self.averaged)

    @property
    def name(self) -> str:
        which = f" {self.template!r}" if self.template is not None else ""
        if self.averaged:
            which = f"s (mean of {self.averaged})"
        d = self.demonstrations
        if d is None:
            return f"chat template{which}" if self.chat else f"template{which}"
        sets = f"{d.num_sets} set{'s' if d.num_sets > 1 else ''}"
        alone = ", a lone example its own" if d.self_if_alone else ""
        chat = "chat template, " if self.chat else ""
        which = which and f", template{which}"
        return f"{chat}demonstrations ({sets}, {d.per_class} per class, {d.filter}{alone}){which}"


def distinct_per_class(texts_a, texts_b, labels, num_classes: int) -> list[int]:
    """Distinct texts (or text pairs) of each class: a query is never its own demonstration, nor is its double."""
    texts_b = texts_b if texts_b is not None else [None] * len(texts_a)
    seen: list[set] = [set() for _ in range(num_classes)]
    for a, b, y in zip(texts_a, texts_b, labels):
        seen[int(y)].add((a, b))
    return [len(s) for s in seen]


def plan(cfg, class_counts: list[int], chat_available: bool = False) -> list[PromptCandidate]:
    """The candidates auto mode tries for `cfg` on training data with `class_counts` distinct texts per class;
    `chat_available`: the model is a causal LM whose tokenizer has a chat template.

    Only the configured prompt when the config fixes it (faithful mode, multi-label data, a soft prompt, a budget of
    1). Demonstrations set by the user fix that part, as `chat_template=True` / `False` fixes the other; new
    demonstrations only when every class has 2 distinct texts (a query never demonstrates itself), chat candidates
    only with `chat_template=None`. The config's `templates` follow the configured template, each with the same
    demonstration candidates, then the mean over all templates (`PromptCandidate.averaged`; as many passes per input
    as templates, so a candidate only with `max_passes_per_input` that high); `templates_averaged=True` set by the
    user (not by an earlier fit) fixes that mean, whatever its cost. With one text per class (1 shot)
    nothing is held out to choose by: for a template of one text the plain prompt with one demonstration set
    (`one_shot_candidate`) is then the only candidate (`one_shot_demos`). What an earlier fit chose
    (`cfg.chosen_prompt`) fixes nothing: the plain template comes first.
    """
    chosen_before = cfg.chosen_prompt is not None
    fixed = cfg.demonstrations is not None and not chosen_before
    fixed_mean = cfg.templates_averaged and not chosen_before  # the user asked for the mean over the templates
    demos = [None if chosen_before else cfg.demonstrations]
    chats = [cfg.chat_template is True]
    searching = cfg.mode == "auto" and not (cfg.multi_label or cfg.soft_prompt)
    demos_allowed = searching and not fixed and class_counts and len(class_counts) <= DEMO_MAX_CLASSES
    if demos_allowed and min(class_counts) == max(class_counts) == 1 and one_shot_demos(cfg) and not fixed_mean:
        return [one_shot_candidate()]  # nothing held out to choose by: the rule of the 1-shot dev study
    if demos_allowed and min(class_counts) >= 2:
        demos += [
            DemonstrationConfig(num_sets=sets, per_class=1, filter=DEMO_FILTER)
            for sets in range(1, cfg.max_passes_per_input + 1)
        ]
    if searching and cfg.chat_template is None and chat_available:
        chats.append(True)
    templates = [None]
    if searching:
        templates += [t for t in cfg.templates or () if t != cfg.template]
    everything = [PromptCandidate(d, chat, t) for chat in chats for t in templates for d in demos]
    if fixed_mean:  # that mean alone (with the demonstration candidates)
        everything = []
    if len(templates) > 1 or not everything:  # the mean over all templates, after the single ones (a pass each)
        averaged = 1 + len(cfg.templates or ())
        everything += [PromptCandidate(d, chat, averaged=averaged) for chat in chats for d in demos]
    out, spent = everything[:1], everything[0].passes
    for candidate in sorted(everything[1:], key=lambda c: c.passes):  # stable: plain before chat
        if candidate.passes > cfg.max_passes_per_input:
            continue
        if spent + candidate.passes > cfg.budget:
            break
        out.append(candidate)
        spent += candidate.passes
    return out


# One example per class: nothing is held out to choose a prompt by (nor to trust the decoder with: `fit`'s low-shot
# rule keeps the calibrated prior), but each class's example can still demonstrate it to every other input. On the
# 16-shot dev examples of the grid's 8 tasks x 5 seeds that the 1-shot splits leave unused (SmolLM2;
# benchmarks/one_shot_demos_dev.py, never a test set), the calibrated prior with one demonstration set against
# without: SST-2 72.7 / 67.3, SST-5 39.5 / 34.7, CR 80.0 / 76.7, MPQA 68.7 / 58.7, but for sentence pairs, whose
# demonstrations triple a long prompt, RTE 46.7 / 54.7, MRPC (F1) 41.0 / 67.3, QNLI 50.7 / 50.7, SNLI 35.1 / 32.9.
# Templates of one text take them: 58.3 against 55.4 on the 8-task mean.
def one_shot_demos(cfg) -> bool:
    """Whether auto mode prompts a 1-shot training set with demonstrations (see the study above): a budget above one
    pass, the plain prompt, a template of one text."""
    return cfg.budget > 1 and cfg.chat_template is not True and not Template(cfg.template).is_pair


def one_shot_candidate() -> PromptCandidate:
    """Auto mode's prompt at one example per class: one set of demonstrations, each class's example demonstrating
    it to every other input and to itself (see `one_shot_demos`)."""
    return PromptCandidate(DemonstrationConfig(num_sets=1, per_class=1, filter=DEMO_FILTER, self_if_alone=True))


def heldout_score(report: dict) -> float:
    """The held-out figure auto mode chose its settings by (its metric when not accuracy)."""
    metric = report.get("selected_by", "accuracy")
    return float(report.get(f"heldout_{metric}", report["heldout_accuracy"]))


def best(candidates: list[PromptCandidate], scores: list[float]) -> int:
    """Index of the chosen candidate: the first with demonstrations (else the first) unless another beats it by
    PROMPT_MARGIN of held-out score; then the highest of those, the first (the cheapest) among equals."""
    preferred = next((i for i, c in enumerate(candidates) if c.demonstrations is not None), 0)
    others = [i for i in range(len(scores)) if i != preferred]
    if not others:
        return preferred
    challenger = max(others, key=lambda i: (scores[i], -i))
    return challenger if scores[challenger] >= scores[preferred] + PROMPT_MARGIN - 1e-12 else preferred
