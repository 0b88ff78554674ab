"""Settings shared by every method's config: the prompt (template, label words, columns) and demonstrations.

`PromptSettings` is the base of `DecTConfig` and `LMBFFConfig` and what a `LabelWordClassifier` is built from: one
set of fields, one validator, one way to read texts and labels from a user's data. `DemonstrationConfig` is the
sub-config of LM-BFF demonstrations, accepted as an object or as a dict (as read from JSON), as peft's `LoraConfig`
accepts its sub-configs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .data import read_labels, read_texts
from .prompting import Template, normalize_label_words
from .prompting.demonstrations import FILTERS
from .prompting.verbalizer import AGGREGATIONS, MULTI_TOKEN_RULES


def check_choice(name: str, value: Any, options: tuple) -> None:
    """A ValueError naming the setting and its options unless `value` is one of them."""
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}.")


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    """A TypeError unless `value` is an int (not a bool), a ValueError naming the range unless it lies in it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ValueError(f"{name} must be {bound}, got {value}.")


def check_number(name: str, value: Any, *, minimum: float | None = None, strict: bool = False) -> None:
    """A TypeError unless `value` is a real number, a ValueError if it is not finite or below `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__}).")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}.")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}.")


@dataclass
class DemonstrationConfig:
    """LM-BFF demonstrations (Gao et al., 2021): solved training examples rendered next to each query.

    Args:
        num_sets: demonstration sets sampled per input; the features (or logits) of the sets are averaged.
        per_class: demonstrations of every class in one set.
        filter: ``"random"`` samples from all training examples of a class; ``"similar"`` from the most similar
            half by a sentence encoder (all-MiniLM-L6-v2 unless one is given), as LM-BFF's filter; ``"fixed"``
            draws one set for every input (a training input's own text aside), so causal prompts share their
            demonstrations as a prefix, which the backbone runs once per batch.
        seed: seed of the sampling; None uses the method's own seed (DecT's `seed`, 0 for LM-BFF).
        self_if_alone: a training input that is its class's only example demonstrates that class itself (else it
            is an error: a query never demonstrates itself). Auto mode sets it at one example per class, where the
            decoder is not relied on and other inputs get the example as their demonstration.
    """

    num_sets: int = 1
    per_class: int = 1
    filter: str = "random"
    seed: int | None = None
    self_if_alone: bool = False

    def __post_init__(self) -> None:
        check_int("demonstrations num_sets", self.num_sets, 1)
        check_int("demonstrations per_class", self.per_class, 1)
        check_choice("demonstrations filter", self.filter, FILTERS)
        if self.seed is not None:
            check_int("demonstrations seed", self.seed, 0, 2**63 - 1)
        if not isinstance(self.self_if_alone, bool):
            raise TypeError(f"demonstrations self_if_alone must be True or False, got {self.self_if_alone!r}.")

    @classmethod
    def coerce(cls, value: DemonstrationConfig | dict | None) -> DemonstrationConfig | None:
        """A DemonstrationConfig from itself, a dict of its fields (from JSON), or None (no demonstrations)."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise ValueError(
                    f"Unknown demonstration setting(s) {unknown}; the settings are num_sets, per_class, filter, seed, "
                    "self_if_alone."
                )
            return cls(**value)
        raise TypeError(
            "demonstrations must be a DemonstrationConfig, a dict of Demonstrations settings (e.g. {'num_sets': 4}) "
            f"or None, got {type(value).__name__}."
        )

    def sampler_options(self, default_seed: int) -> dict[str, Any]:
        """Keyword arguments of `peft_dect.prompting.Demonstrations`."""
        seed = self.seed if self.seed is not None else default_seed
        return {
            "per_class": self.per_class,
            "filter": self.filter,
            "num_sets": self.num_sets,
            "seed": seed,
            "self_if_alone": self.self_if_alone,
        }


PROMPT_FIELDS = (
    "template",
    "label_words",
    "label_word_aggregation",
    "multi_token",
    "max_length",
    "text_column",
    "text_pair_column",
    "label_column",
)


@dataclass
class PromptSettings:
    """How a method prompts the model and reads the user's data.

    Args:
        template: prompt with `{text_a}`, optional `{text_b}` and one `{mask}` where the label word goes.
        label_words: class name -> label words, e.g. ``{"negative": ["bad"], "positive": ["great"]}``.
        label_word_aggregation: how several words of a class combine: ``"mean"`` of log-probabilities or ``"max"``.
        multi_token: label words of several tokens: ``"exact"`` scores a causal LM's log-probability of the whole
            word after the prompt (``"exact_mean"``: per token) and, for a masked LM, the mean of its pieces at the
            mask; ``"first"`` scores the first token (with a warning), ``"error"`` refuses them.
        max_length: token budget of a prompt; text fields are truncated to fit it (None: the model's limit).
        text_column: column of the first text; None guesses text / sentence / text_a / sentence1 / ...
        text_pair_column: column of the second text, for templates with `{text_b}`.
        label_column: column of the labels.
    """

    template: str = field(
        default="{text_a} In summary, it was {mask}.",
        metadata={"help": "Prompt with {text_a}, optional {text_b} and one {mask} where the label word goes."},
    )
    label_words: dict = field(
        default_factory=dict,
        metadata={"help": "Class name -> list of label words, e.g. {'negative': ['bad'], 'positive': ['great']}."},
    )
    label_word_aggregation: str = field(
        default="mean", metadata={"help": "How several words of a class combine: 'mean' of log-probs or 'max'."}
    )
    multi_token: str = field(
        default="exact",
        metadata={
            "help": "Label words of several tokens: 'exact' (whole word; 'exact_mean' per token), 'first', 'error'."
        },
    )
    max_length: int | None = field(
        default=None, metadata={"help": "Token budget of a prompt; text fields are truncated to fit it."}
    )
    text_column: str | None = field(
        default=None, metadata={"help": "Dataset column of the first text; None guesses text/sentence/sentence1."}
    )
    text_pair_column: str | None = field(
        default=None, metadata={"help": "Dataset column of the second text, for templates with {text_b}."}
    )
    label_column: str = field(default="label", metadata={"help": "Dataset column of the labels."})

    def check_prompt_settings(self) -> None:
        """Validate and normalise the prompt fields (called by every config's `__post_init__`)."""
        Template(self.template)  # validates placeholders and the single {mask}
        self.label_words = normalize_label_words(self.label_words)
        check_choice("label_word_aggregation", self.label_word_aggregation, AGGREGATIONS)
        check_choice("multi_token", self.multi_token, MULTI_TOKEN_RULES)
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 1):
            raise ValueError(f"max_length must be a positive number of tokens (or None), got {self.max_length!r}.")
        for name in ("text_column", "text_pair_column"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a column name (a string) or None, got {value!r}.")
        if not isinstance(self.label_column, str):
            raise TypeError(f"label_column must be a column name (a string), got {self.label_column!r}.")

    @property
    def classes(self) -> list[str]:
        return list(self.label_words)

    @property
    def active_template(self) -> str:
        """The template the method prompts with (a config that chooses among several says which)."""
        return self.template

    @property
    def parsed_template(self) -> Template:
        return Template(self.template)

    def prompt_settings(self) -> dict[str, Any]:
        """The prompt fields as a JSON-ready dict (label words in class order)."""
        out = {name: getattr(self, name) for name in PROMPT_FIELDS}
        out["label_words"] = {c: list(w) for c, w in self.label_words.items()}
        return out

    # ---------------------------------------------------------------- reading the user's data
    def read_texts(self, data) -> tuple[list[str], list[str] | None]:
        """Texts (and second texts for `{text_b}` templates) of `data`: texts, pairs, a dict of columns, a Dataset."""
        texts_a, texts_b = read_texts(
            data,
            needs_pair=self.parsed_template.is_pair,
            text_column=self.text_column,
            text_pair_column=self.text_pair_column,
        )
        if not texts_a:
            raise ValueError("The data is empty: give at least one input.")
        return texts_a, texts_b

    def read_labels(self, data) -> torch.Tensor:
        """Class indices of labelled `data`, checked to match its texts one for one."""
        labels = read_labels(data, self.classes, self.label_column)
        texts, _ = self.read_texts(data)
        if len(texts) != labels.numel():
            raise ValueError(f"The data has {len(texts)} texts but {labels.numel()} labels; give one label per text.")
        return labels
