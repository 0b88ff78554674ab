"""Configuration of DecT adapters (Decoder Tuning, Cui et al., ACL 2023)."""

from __future__ import annotations

import logging
import os
from dataclasses import InitVar, dataclass, field
from typing import ClassVar

from peft.config import PeftConfig

from .._enums import DECT_TYPE, FEW_SHOT_CLS_TYPE
from ..data import read_multi_labels
from ..hub import local_adapter_folder
from ..prompting.demonstrations import FILTERS
from ..prompting.template import Template
from ..saving import FORMAT_VERSION, check_format_version
from ..settings import DemonstrationConfig, PromptSettings, check_choice, check_int, check_number
from ..uncertainty import Calibration, check_alpha
from .checks import check_saved_shapes
from .decoder import RADIUS_INITS
from .prompt_search import DEFAULT_BUDGET, DEFAULT_MAX_PASSES


logger = logging.getLogger(__name__)

MODES = ("auto", "faithful")


def check_thresholds(thresholds, num_classes: int) -> None:
    """Decision thresholds: one probability in [0, 1] per class (a list or tuple)."""
    if not isinstance(thresholds, (list, tuple)) or len(thresholds) != num_classes:
        raise ValueError(
            f"thresholds must be a list of {num_classes} probabilities (one per class), got {thresholds!r}."
        )
    for t in thresholds:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0:
            raise ValueError(f"Every threshold must be a probability in [0, 1], got {t!r}.")


def check_passes(name: str, value, what: str) -> None:
    """A count of model passes: an integer >= 1 (one pass, the template alone, is the least a prompt costs)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{name} counts {what} and must be an integer >= 1, got {value!r}; use {name}=1 for one pass (the "
            "template alone)."
        )


def default_decoder_dim(num_classes: int) -> int:
    """The paper's 128, or the next multiple of 64 above `num_classes` when there are more classes than that."""
    return 128 if num_classes <= 128 else 64 * (num_classes // 64 + 1)


@dataclass
class RecordedValues:
    """What peft-dect records in an adapter, not the user: facts of the base model and tokenizer it was made with.

    Args:
        hidden_size: hidden size of the base model (set by `get_peft_model`, checked on load).
        vocab_size: vocabulary size of the base model (set by `get_peft_model`, checked on load).
        label_token_ids: token id(s) of each class's label words in the tokenizer the adapter was fitted with (set
            by `fit`, checked when the adapter is used with a tokenizer).
        tokenizer: where that tokenizer loads from (`name_or_path`, and `gguf_file` for a GGUF file; set by `fit`):
            loading the adapter then needs no tokenizer argument when it can be found.
    """

    hidden_size: int | None = None
    vocab_size: int | None = None
    label_token_ids: list | None = None
    tokenizer: dict | None = None

    @classmethod
    def coerce(cls, value) -> RecordedValues:
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls(**{k: value.get(k) for k in ("hidden_size", "vocab_size", "label_token_ids", "tokenizer")})
        raise TypeError(f"recorded must be a RecordedValues or a dict, got {type(value).__name__}.")


@dataclass
class DecTConfig(PromptSettings, PeftConfig):
    """Configuration of a DecT adapter: prompt, label words and the decoder trained on the frozen model's features.

    The model is queried once per input; a small decoder (projection `W`, fixed random class prototypes, learned
    radii) scores the hidden state at the prediction position and adds `lam` times the calibrated label-word
    probabilities: ``score_k = -||normalize(W h) - p_k|| + r_k + lam * q_k``.

    Args:
        template, label_words, label_word_aggregation, multi_token, max_length, text_column, text_pair_column,
            label_column: the prompt and the data columns (see `PromptSettings`).
        decoder_dim: dimension of the projection `W` and of the class prototypes. None (default) is the paper's 128
            up to 128 classes and the next multiple of 64 above the class count beyond (`default_decoder_dim`), so
            that the prototypes can stay linearly independent; the resolved number is what the config saves.
        mode: ``"auto"`` chooses lam, epochs and calibration on held-out data (cross-validation of the training set
            plus the fit's `eval_dataset`); ``"faithful"`` uses the paper's settings.
        lam: weight of the calibrated label-word probabilities in faithful mode; None means 1/shots.
        calibrate: divide label-word probabilities by those of the content-free input.
        epochs, learning_rate: full-batch Adam training of the decoder.
        radius_init: where the radii's initial values are measured: ``"normalized"`` (default) on the normalised
            projections the score uses, so the decoder does not depend on the scale of the model's hidden states;
            ``"reference"`` before normalisation, as the reference code (thunlp/DecT) does, to reproduce it. Adapters
            saved before this setting existed load with ``"reference"``, how their stored radii were initialised.
        seed: seed of the projection and prototype initialisation (and of demonstration sampling).
        soft_prompt: folder, inside the adapter's, of a PEFT prompt-tuning adapter whose soft prompt is prepended
            when DecT reads the model; set by `use_soft_prompt()`.
        demonstrations: LM-BFF demonstrations in every prompt (a `DemonstrationConfig`, a dict of its settings, or
            the number of sets per input); None for none. The training data of `fit` become the pool, saved beside
            the adapter in `demonstration_pool.json`. Set, they fix the demonstrations: auto mode then tries no
            others (only the config's `templates`, with them).
        budget: model passes per training input that auto mode may spend on prompt candidates (2, the default:
            the template alone and the template with one set of LM-BFF demonstrations, chosen on the same held-out
            data as lam; see `peft_dect.dect.prompt_search`). 1 tries the template alone, as before this setting;
            with `chat_template=None`, 3 adds the prompt wrapped in the chat template and 4 that one with
            demonstrations.
            In-process models only: the black-box backend sends the template alone.
        max_passes_per_input: the most model passes per input the chosen prompt may cost at prediction time (1:
            one pass, as without demonstrations; a candidate with `s` demonstration sets costs `s`).
        chosen_prompt: written by an auto-mode `fit` that chose among prompt candidates: the chosen one's name (its
            demonstrations, if any, are in `demonstrations`). None when the config fixes the prompt itself.
        templates: more templates auto mode may choose from, beside `template` (user-written, or ranked by
            `peft_dect.lmbff.rank_templates`): each is tried after the configured template's candidates, with
            the same demonstration candidates, within `budget` (one pass per training input each: to try `t`
            templates with and without demonstrations, give `budget=2 * (t + 1)`). Each must have the same text
            fields as `template`. In-process models only.
        template_chosen: written by an auto-mode `fit` that chose one of `templates`; None: `template` is used.
        templates_averaged: each input's features averaged over `template` and `templates`, one pass per template
            at training and at prediction (see `peft_dect.dect.template_mean`). Set by the user, it fixes that
            ensemble (auto mode may still add demonstrations to it within `budget`); written by an auto-mode `fit`
            that chose it among the candidates (only where `max_passes_per_input` allows as many passes).
        chat_template: wrap a causal LM's prompt in its tokenizer's chat template, the text as the user's message and
            the template's words before `{mask}` opening the answer (True); the plain prompt (False, the default);
            None: auto mode tries both within `budget`, the chat candidates after the plain ones of equal cost.
            True with a tokenizer that has no chat template, or a masked LM, is an error.
        chat_chosen: written by an auto-mode `fit` with `chat_template=None`: whether the chosen prompt is wrapped.
        calibrate_probabilities: fit a temperature for `predict_proba` on auto mode's held-out predictions (True,
            the default); False keeps softmax(logits) as it is. Prediction sets and rejection use it too.
        reject_label: what `predict(texts, reject=True)` answers for an input judged out of scope (None by
            default); not one of the classes.
        reject_rate: the share of in-scope inputs `predict(reject=True)` may reject, which sets the threshold on
            held-out in-scope data (0.05).
        out_of_scope_label: a label of training rows that belong to no class (e.g. ``"oos"``): they are not trained
            on, and set the rejection threshold instead (see `peft_dect.uncertainty.Calibration.reject_threshold`).
        multi_label: several classes per text (a list of class names per row, or multi-hot vectors): every class
            gets an independent probability ``sigmoid(score_k)``, trained with binary cross-entropy, the label-word
            prior enters as the per-class calibrated log-ratio ``log P(w_k | x) - log P(w_k | content-free)``, and
            `predict` returns the classes above their thresholds (see `peft_dect.dect.multilabel`).
        thresholds: written by a multi-label `fit`: per class, the probability at or above which it is predicted,
            chosen on auto mode's held-out data (0.5 for every class without a fit). `predict(threshold=...)`
            overrides them.
        uncertainty: written by `fit`: the held-out calibration (temperature, conformal and rejection scores, see
            `peft_dect.uncertainty.Calibration`), saved with the adapter.
        recorded: values peft-dect writes (base model sizes, label-word token ids); see `RecordedValues`.
        format_version: peft-dect adapter format that wrote this config; a newer major format is refused.
    """

    decoder_dim: int | None = field(
        default=None,
        metadata={"help": "Dimension of the projection W and class prototypes; None: 128, or more for many classes."},
    )
    mode: str = field(
        default="auto",
        metadata={
            "help": "'faithful': the paper's settings (lam = 1/shots unless set, `epochs`, calibration as set). "
            "'auto': choose lam, epochs and calibration by held-out accuracy on k-fold cross-validation of the "
            "training set plus the fit's eval_dataset when given; uses cached features, so no extra model pass."
        },
    )
    lam: float | None = field(
        default=None, metadata={"help": "Weight of the calibrated label-word probabilities; None means 1/shots."}
    )
    calibrate: bool = field(
        default=True, metadata={"help": "Divide label-word probabilities by those of the content-free input."}
    )
    epochs: int = field(default=30, metadata={"help": "Full-batch Adam epochs of decoder training."})
    learning_rate: float = field(default=0.01, metadata={"help": "Adam learning rate of the decoder."})
    radius_init: str = field(
        default="normalized",
        metadata={
            "help": "Initial radii measured on the normalised projections the score uses ('normalized': independent "
            "of the hidden-state scale) or before normalisation as the reference code does ('reference')."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the projection and prototype initialisation."})
    soft_prompt: str | None = field(
        default=None,
        metadata={
            "help": "Folder (relative to the adapter's) of a PEFT prompt-tuning adapter whose soft prompt is "
            "prepended when DecT reads the model; set by use_soft_prompt(), saved and loaded with the adapter."
        },
    )
    demonstrations: DemonstrationConfig | dict | int | None = field(
        default=None,
        metadata={
            "help": "LM-BFF demonstrations: a DemonstrationConfig (or a dict of its settings, or the number of sets "
            "per input); None: no demonstrations. fit() records its training data as the demonstration pool."
        },
    )
    budget: int = field(
        default=DEFAULT_BUDGET,
        metadata={
            "help": "Model passes per training input auto mode may spend on prompt candidates (template alone, with "
            "demonstrations); 1: the template alone."
        },
    )
    max_passes_per_input: int = field(
        default=DEFAULT_MAX_PASSES,
        metadata={"help": "Most model passes per input the prompt auto mode chooses may cost at prediction time."},
    )
    chosen_prompt: str | None = field(
        default=None,
        metadata={"help": "The prompt candidate an auto-mode fit chose (written by fit); None: fixed by the config."},
    )
    templates: list[str] | None = field(
        default=None,
        metadata={"help": "More templates auto mode may choose from, beside template, within budget."},
    )
    template_chosen: str | None = field(
        default=None,
        metadata={"help": "The one of templates an auto-mode fit chose (written by fit); None: template."},
    )
    templates_averaged: bool = field(
        default=False,
        metadata={"help": "Whether the features are averaged over template and templates (written by fit)."},
    )
    chat_template: bool | None = field(
        default=False,
        metadata={
            "help": "Wrap a causal LM's prompt in its tokenizer's chat template (True), not (False), or let auto "
            "mode choose within budget (None)."
        },
    )
    chat_chosen: bool | None = field(
        default=None,
        metadata={"help": "Whether the prompt an auto-mode fit chose with chat_template=None is wrapped (by fit)."},
    )
    calibrate_probabilities: bool = field(
        default=True, metadata={"help": "Temperature-scale predict_proba on auto mode's held-out predictions."}
    )
    reject_label: str | None = field(
        default=None, metadata={"help": "What predict(reject=True) answers for out-of-scope inputs (not a class)."}
    )
    reject_rate: float = field(
        default=0.05, metadata={"help": "Share of in-scope inputs predict(reject=True) may reject (held-out)."}
    )
    out_of_scope_label: str | None = field(
        default=None,
        metadata={"help": "Label of training rows outside every class: not trained on; they set the threshold."},
    )
    multi_label: bool = field(
        default=False,
        metadata={"help": "Several classes per text: independent sigmoid scores, per-class thresholds."},
    )
    thresholds: list | None = field(
        default=None,
        metadata={
            "help": "Per-class probability thresholds of a multi-label adapter, chosen by fit on held-out data."
        },
    )
    uncertainty: dict | None = field(
        default=None,
        metadata={"help": "Held-out calibration written by fit (temperature, conformal and rejection scores)."},
    )
    recorded: RecordedValues | dict = field(
        default_factory=RecordedValues,
        metadata={"help": "Values peft-dect records: base model sizes and label-word token ids."},
    )
    format_version: str = field(
        default=FORMAT_VERSION,
        metadata={"help": "peft-dect adapter format that wrote this config; a newer major format is refused."},
    )
    class_order: list | None = field(
        default=None,
        metadata={
            "help": "The classes in label_words' order, written on save: peft writes configs with sorted keys, "
            "which would reorder label_words, and the decoder's rows follow the class order."
        },
    )
    save_id: str | None = field(
        default=None, metadata={"help": "Id of the save that wrote this config, also in the weights (checked)."}
    )
    # Fields of adapter format 1.0, read into `demonstrations`, `recorded` and `inline_demo_pool` on load.
    demo_per_class: InitVar[int | None] = None
    demo_filter: InitVar[str | None] = None
    demo_pool: InitVar[dict | None] = None
    base_hidden_size: InitVar[int | None] = None
    base_vocab_size: InitVar[int | None] = None
    label_token_ids: InitVar[list | None] = None

    # The tuner finds the LM head itself; peft's injection code reads this attribute.
    target_modules: ClassVar[None] = None

    def __post_init__(
        self, demo_per_class, demo_filter, demo_pool, base_hidden_size, base_vocab_size, label_token_ids
    ) -> None:
        self.task_type = FEW_SHOT_CLS_TYPE  # whatever a config file says: only this task type loads through our checks
        PeftConfig.__post_init__(self)
        check_format_version(self.format_version, "This DecT adapter config")
        self.peft_type = DECT_TYPE
        self.restore_class_order()
        self.check_prompt_settings()
        check_choice("mode", self.mode, MODES)
        check_choice("radius_init", self.radius_init, RADIUS_INITS)
        if self.decoder_dim is None:
            self.decoder_dim = default_decoder_dim(len(self.label_words))
        check_int("decoder_dim", self.decoder_dim, 1)
        check_int("epochs", self.epochs, 0)
        check_int("seed", self.seed, 0, 2**63 - 1)
        check_passes("budget", self.budget, "model passes per training input")
        check_passes("max_passes_per_input", self.max_passes_per_input, "model passes per input at prediction")
        for name, value in (("chat_template", self.chat_template), ("chat_chosen", self.chat_chosen)):
            if not (value is None or isinstance(value, bool)):
                raise TypeError(f"{name} must be True, False or None, got {value!r}.")
        self.check_templates()
        check_number("learning_rate", self.learning_rate, minimum=0, strict=True)
        if self.lam is not None:
            check_number("lam", self.lam, minimum=0)
        self.check_uncertainty_settings()
        self.demonstrations = self._demonstrations(self.demonstrations, demo_per_class, demo_filter)
        self.check_multi_label_settings()
        self.recorded = RecordedValues.coerce(self.recorded)
        legacy = {"hidden_size": base_hidden_size, "vocab_size": base_vocab_size, "label_token_ids": label_token_ids}
        for name, value in legacy.items():
            if value is not None:
                setattr(self.recorded, name, value)
        if demo_pool is not None and not (isinstance(demo_pool, dict) and {"text_a", "label"} <= set(demo_pool)):
            raise ValueError("demo_pool must be a dict with 'text_a', 'label' (and 'text_b' for pairs) lists.")
        self.inline_demo_pool = demo_pool  # format 1.0 kept the pool in the config; saves now write it beside it

    @property
    def uses_chat_template(self) -> bool:
        """Whether the prompt is wrapped in the tokenizer's chat template: as set, or as an auto-mode fit chose."""
        return self.chat_template if self.chat_template is not None else bool(self.chat_chosen)

    @property
    def prompt_templates(self) -> list[str]:
        """The templates every input is read through: all of them when averaged, else the active one."""
        return [self.template, *self.templates] if self.templates_averaged else [self.active_template]

    @property
    def active_template(self) -> str:
        """The template the adapter prompts with: the one an auto-mode fit chose among `templates`, else `template`."""
        return self.template_chosen if self.template_chosen is not None else self.template

    def check_templates(self) -> None:
        """`templates` is None or a list of templates with the text fields of `template`; `template_chosen` is
        `template` or one of them."""
        if self.templates is None:
            if self.template_chosen not in (None, self.template):
                raise ValueError(f"template_chosen={self.template_chosen!r} is not one of the config's templates.")
            if self.templates_averaged:
                raise ValueError("templates_averaged=True averages template and templates: give templates.")
            return
        if isinstance(self.templates, str) or not isinstance(self.templates, (list, tuple)):
            raise TypeError(f"templates must be a list of templates (strings) or None, got {self.templates!r}.")
        pair = Template(self.template).is_pair
        for template in self.templates:
            if not isinstance(template, str):
                raise TypeError(f"templates must hold strings, got {template!r}.")
            try:
                parsed = Template(template)
            except ValueError as err:
                raise ValueError(f"The template candidate {template!r} does not parse: {err}") from None
            if parsed.is_pair != pair:
                raise ValueError(
                    f"The template candidate {template!r} must have the text fields of template={self.template!r} "
                    f"({'{text_a} and {text_b}' if pair else '{text_a} alone'}): auto mode reads one data set for all."
                )
        self.templates = [t for t in dict.fromkeys(self.templates) if t != self.template]
        if self.template_chosen not in (None, self.template, *self.templates):
            raise ValueError(f"template_chosen={self.template_chosen!r} is not one of the config's templates.")
        if not isinstance(self.templates_averaged, bool):
            raise TypeError(f"templates_averaged must be True or False, got {self.templates_averaged!r}.")
        if self.templates_averaged and (not self.templates or self.template_chosen is not None):
            raise ValueError(
                "templates_averaged=True averages template and templates: give templates, and no template_chosen."
            )

    def check_uncertainty_settings(self) -> None:
        """reject_label and out_of_scope_label must not name a class; reject_rate is a share in (0, 1)."""
        for name in ("reject_label", "out_of_scope_label"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string or None, got {type(value).__name__}.")
            if value is not None and value in self.label_words:
                raise ValueError(f"{name} {value!r} is one of the classes in label_words; choose another name.")
        if self.reject_label is None and self.out_of_scope_label is not None:
            self.reject_label = self.out_of_scope_label  # rejected inputs are answered as the training data name them
        check_alpha(self.reject_rate, "reject_rate")
        if self.uncertainty is not None:
            Calibration.from_dict(self.uncertainty)

    def restore_class_order(self) -> None:
        """Put label_words back in the saved class order (a saved config's JSON has its keys sorted)."""
        order = self.class_order
        if order is None or not isinstance(self.label_words, dict):
            return
        if not isinstance(order, list) or sorted(map(str, order)) != sorted(map(str, self.label_words)):
            # label_words were edited by hand after the save: their own order stands, and the shape checks of the
            # saved tensors (`check_saved_shapes`) say whether the adapter still fits them
            logger.warning("The saved class_order does not name label_words' classes; label_words' order is used.")
            return
        self.label_words = {c: self.label_words[c] for c in order}

    def to_dict(self) -> dict:
        """The config as a dict, with the class order of label_words (kept through peft's sorted-key JSON)."""
        out = super().to_dict()
        out["class_order"] = list(self.label_words)
        return out

    def check_multi_label_settings(self) -> None:
        """multi_label is a bool; thresholds, when set, hold one probability in [0, 1] per class; the out-of-scope
        settings and demonstrations (one class per example) are single-label features."""
        if not isinstance(self.multi_label, bool):
            raise TypeError(f"multi_label must be True or False, got {self.multi_label!r}.")
        if self.thresholds is not None:
            if not self.multi_label:
                raise ValueError("thresholds belong to multi-label adapters; set multi_label=True or drop them.")
            check_thresholds(self.thresholds, len(self.label_words))
            self.thresholds = [float(t) for t in self.thresholds]
        if self.multi_label and self.out_of_scope_label is not None:
            raise ValueError(
                "out_of_scope_label is a single-label setting; a multi-label adapter takes rows with an empty "
                "label list for texts that no class applies to."
            )
        if self.multi_label and self.demonstrations is not None:
            raise ValueError("Demonstrations show one class per example; they are not available with multi_label.")

    def read_labels(self, data, *, warn_missing: bool = True):
        """Class indices (N,) of labelled `data`, or multi-hot targets (N, C) of a multi-label adapter."""
        if not self.multi_label:
            return super().read_labels(data)
        labels = read_multi_labels(data, self.classes, self.label_column, warn_missing=warn_missing)
        texts, _ = self.read_texts(data)
        if len(texts) != len(labels):
            raise ValueError(f"The data has {len(texts)} texts but {len(labels)} label sets; give one per text.")
        return labels

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = None, **kwargs) -> DecTConfig:
        """A saved config, whose sizes are checked against the saved tensors' shapes before any layer is built."""
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        folder = os.path.join(str(pretrained_model_name_or_path), subfolder or "")
        if not os.path.isdir(folder):  # a Hub id: its safetensors weights (never a pickle) are fetched first
            folder = local_adapter_folder(pretrained_model_name_or_path, {**kwargs, "subfolder": subfolder})
        check_saved_shapes(config, folder)
        return config

    @classmethod
    def check_kwargs(cls, **kwargs):
        """Fields read from a saved config: one saved before `radius_init` existed had its radii initialised the
        reference way, and records so (its stored radii are loaded as they are, so predictions do not change)."""
        kwargs = super().check_kwargs(**kwargs)
        kwargs.setdefault("radius_init", "reference")
        return kwargs

    @staticmethod
    def _demonstrations(value, per_class, filter) -> DemonstrationConfig | None:
        """A DemonstrationConfig from the new form, or from format 1.0's number of sets plus two flat fields."""
        if isinstance(value, bool) or not isinstance(value, int):
            if per_class is not None or filter is not None:
                raise ValueError("demo_per_class and demo_filter go with demonstrations=<number of sets>.")
            return DemonstrationConfig.coerce(value)
        if value < 0:
            raise ValueError(f"demonstrations must be an integer >= 0 (sets per input), got {value!r}.")
        if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1):
            raise ValueError(f"demo_per_class must be an integer >= 1, got {per_class!r}.")
        if filter is not None:
            check_choice("demo_filter", filter, FILTERS)
        if value == 0:
            return None
        return DemonstrationConfig(num_sets=value, per_class=per_class or 1, filter=filter or "random")
