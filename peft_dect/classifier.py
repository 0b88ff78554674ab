"""The classifier interface of every peft-dect method, and the label-word classifier built on it.

`FewShotClassifier` is the interface: a method provides its `classes`, `predict_logits` and `read_targets`, and gets
`predict`, `predict_proba`, `evaluate(dataset, *, metric=None, name=None, split=None)` and the run record its model
card is rendered from (`peft_dect.cards.RunRecord`).

`LabelWordClassifier` is the shared head of the methods that train the model itself rather than a decoder on frozen
features: LM-BFF's prompt-based fine-tuning (all weights or LoRA) and prompt tuning (a PEFT soft prompt). The class
scores are the label words' log-probabilities at the mask (masked LM) or at the end of the prompt (causal LM),
exactly as in DecT's zero-shot term, so the same template and label words give the same zero-shot classifier before
training.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .backbone import Backbone
from .cards import RunRecord
from .introspect import unwrap_peft
from .metrics import MULTI_LABEL_METRICS, metric_value, multi_label_value, resolve_metric
from .prior_shift import adapt_prior
from .prompting import Template, Verbalizer
from .saving import CLASSIFIER_FORMAT, adapter_folder, check_adapter_folder, read_json_object, staged_folder
from .settings import PROMPT_FIELDS, PromptSettings
from .stream import predict_stream
from .uncertainty import probabilities
from .uncertainty_methods import UncertaintyMethods


CONFIG_NAME = "label_word_classifier.json"

Metric = str | Callable[[np.ndarray, np.ndarray], float]  # a name of `peft_dect.metrics`, or (pred, ref) -> score


class FewShotClassifier(UncertaintyMethods):
    """The interface every peft-dect classifier offers; a method implements `classes`, `predict_logits`,
    `read_targets` and `read_inputs` (and holds a `run_record`), the rest follows from them: `predict`,
    `predict_proba`, `evaluate`, and the uncertainty methods of `peft_dect.uncertainty_methods` (`predict_set`,
    `unknown_score`, `predict(reject=...)`, `calibrate`, `suggest`).

    Extra positional and keyword arguments of `predict`, `predict_proba` and `evaluate` go to `predict_logits`
    (DecT takes the tokenizer and `show_progress` there).

    A multi-label classifier (`multi_label` True) gives per-class log-odds as logits: `predict_proba` is then
    sigmoid(logits / T), `predict` the classes at or above `thresholds` (or `threshold=`), and `evaluate` reports
    micro-F1, macro-F1, exact match and Hamming loss.
    """

    default_metrics: tuple[str, ...] = ("accuracy",)
    fit_metric: Metric | None = None  # what the last fit chose by, reported by `evaluate` next to the defaults
    run_record: RunRecord

    @property
    def classes(self) -> Sequence[str]:
        raise NotImplementedError

    @property
    def multi_label(self) -> bool:
        """Whether a text may belong to several classes (independent per-class probabilities)."""
        return False

    @property
    def thresholds(self) -> list[float] | None:
        """Per-class probability thresholds of a multi-label classifier (None: 0.5 for every class)."""
        return None

    def probabilities_of(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, C) of class logits: softmax(logits / T), or sigmoid(logits / T) per class when
        multi-label."""
        if self.multi_label:
            return torch.sigmoid(logits.float() / self.temperature)
        return probabilities(logits, self.temperature)

    def predict_proba(self, inputs, *args: Any, **kwargs: Any) -> np.ndarray:
        """Class probabilities (N, C), columns in the order of the classes, calibrated by the fitted temperature;
        independent per class (rows need not sum to 1) for a multi-label classifier."""
        return self.probabilities_of(self.checked_logits(inputs, *args, **kwargs)).numpy()

    def predict(
        self,
        inputs,
        *args: Any,
        reject: bool | float = False,
        reject_rate: float | None = None,
        threshold: float | Sequence[float] | None = None,
        **kwargs: Any,
    ):
        """Predicted class names (see `UncertaintyMethods.predict` for `reject`); for a multi-label classifier a list
        of class names per input, those whose probability is at least its threshold (`threshold`: one probability
        for every class or one per class, instead of the fitted `thresholds`)."""
        if not self.multi_label:
            if threshold is not None:
                raise ValueError("threshold= is for multi-label classifiers (multi_label=True); use reject= here.")
            return super().predict(inputs, *args, reject=reject, reject_rate=reject_rate, **kwargs)
        if reject is not False and reject is not None:
            self.single_label_only("predict(reject=...)")
        return self.decide(self.checked_logits(inputs, *args, **kwargs), threshold)

    def single_label_only(self, what: str) -> None:
        """Refuse a single-label feature on a multi-label classifier, naming it."""
        if self.multi_label:
            raise ValueError(
                f"{what} works on one class per input and is not available for a multi-label classifier; use "
                "predict_proba and the per-class thresholds instead."
            )

    def threshold_tensor(self, threshold: float | Sequence[float] | None = None) -> torch.Tensor:
        """The decision thresholds (C,) of a multi-label classifier: `threshold` (one or one per class), else the
        fitted `thresholds`, else 0.5."""
        value = self.thresholds if threshold is None else threshold
        if value is None:
            value = 0.5
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [float(value)] * len(self.classes)
        if not isinstance(value, Sequence) or len(value) != len(self.classes):
            raise ValueError(
                f"threshold must be one probability or {len(self.classes)} (one per class), got {value!r}."
            )
        for t in value:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0:
                raise ValueError(f"A threshold must be a probability in [0, 1], got {t!r}.")
        return torch.tensor([float(t) for t in value])

    def predict_logits(self, inputs, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Class logits (N, C) for texts, (text_a, text_b) pairs, a dict of columns or a Dataset."""
        raise NotImplementedError

    def read_targets(self, data) -> torch.Tensor:
        """The targets of labelled data (class indices), checked against its texts."""
        raise NotImplementedError

    def pass_key(self, adapter_name: str) -> str:
        """Adapters of this model with equal keys share one model pass over a text (a server batches their requests
        together). This default shares nothing: each adapter is its own key."""
        return adapter_name

    def keeping_features(self) -> contextlib.AbstractContextManager:
        """A context under which the features one call extracts stay for the next calls (those of other adapters of
        one `pass_key`), whatever a cache bound says. This default keeps nothing, as it caches nothing."""
        return contextlib.nullcontext()

    def streaming(self) -> contextlib.AbstractContextManager:
        """A context under which predicted inputs leave nothing behind: a method that caches features (DecT) or
        server answers (black-box DecT) bypasses its cache, so that streaming predictions take memory independent
        of their number. Used by `predict_stream` around each batch; this default keeps nothing anyway."""
        return contextlib.nullcontext()

    def predict_stream(
        self,
        inputs,
        *args: Any,
        batch_size: int = 32,
        reject: bool | float = False,
        reject_rate: float | None = None,
        alpha: float | None = None,
        show_progress: bool = True,
        **kwargs: Any,
    ) -> Iterator[dict[str, Any]]:
        """Predict a `datasets.Dataset`, a dict of columns or any iterable of texts, pairs or row dicts (a
        generator, an `IterableDataset`) in batches of `batch_size`, yielding one record per input as each batch
        is done: `{"text", "label", "probabilities": {class: p}}`, with `"unknown_score"` when `reject` is given
        (as `predict(reject=...)`) and `"set"` with `alpha` (as `predict_set`). Memory does not grow with the
        number of inputs (the feature cache is bypassed); see `peft_dect.stream.predict_stream`, and
        `peft_dect.stream.predict_file` for files with resumption."""
        options = {"reject": reject, "reject_rate": reject_rate, "alpha": alpha, "show_progress": show_progress}
        return predict_stream(self, inputs, *args, batch_size=batch_size, **options, **kwargs)

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        """The recorded evaluations, as dicts (dataset, split, examples, metrics)."""
        return [e.as_dict() for e in self.run_record.evaluations]

    def checked_logits(self, inputs, *args: Any, prior_shift: bool = False, **kwargs: Any) -> torch.Tensor:
        """`predict_logits`, refused when a score is NaN: a NaN would give NaN probabilities and the first class.

        `prior_shift=True` (also accepted by `predict`, `predict_proba` and `evaluate`) re-estimates the class
        priors from the inputs themselves by EM (`peft_dect.prior_shift.adapt_prior`): for a batch of inputs whose
        class frequencies differ from the balanced training data's.
        """
        logits = self.predict_logits(inputs, *args, **kwargs)
        if bool(torch.isnan(logits).any()):
            rows = torch.isnan(logits).any(-1).nonzero()[:, 0].tolist()
            raise ValueError(
                f"{type(self).__name__} gave NaN class scores for {len(rows)} input(s), the first at index {rows[0]}: "
                "its weights or the model's features hold NaN or infinite values; fit it again or load an intact copy."
            )
        if prior_shift:  # on the calibrated probabilities, scaled back so that predict_proba's 1 / T gives them
            self.single_label_only("prior_shift=True")
            t = self.temperature
            logits, _ = adapt_prior(logits / t)
            logits = logits * t
        return logits

    def decide(self, logits: torch.Tensor, threshold: float | Sequence[float] | None = None) -> list:
        """Predictions from class logits: the class names of the largest logits; for a multi-label classifier, per
        input the list of classes (in class order) whose probability reaches its threshold."""
        if not self.multi_label:
            return [self.classes[i] for i in logits.argmax(-1).tolist()]
        chosen = self.probabilities_of(logits) >= self.threshold_tensor(threshold)
        return [[self.classes[c] for c in row.nonzero()[:, 0].tolist()] for row in chosen]

    def score(self, logits: torch.Tensor, targets, metric: Metric | None = None) -> dict[str, float]:
        """Metrics of class logits against targets: `metric` (a name or a callable), else `default_metrics`; for a
        multi-label classifier, of its (N, C) 0/1 decisions against multi-hot targets (`MULTI_LABEL_METRICS`, or a
        callable of the two matrices)."""
        if not self.multi_label:
            predictions = logits.argmax(-1).numpy()
            return compute_metrics(metric, self.default_metrics, predictions, np.asarray(targets))
        decided = (self.probabilities_of(logits) >= self.threshold_tensor()).numpy()
        references = np.asarray(targets) > 0.5
        if metric is None:
            return {name: multi_label_value(name, decided, references) for name in MULTI_LABEL_METRICS}
        if isinstance(metric, str) and metric in MULTI_LABEL_METRICS:
            return {metric: multi_label_value(metric, decided, references)}
        if isinstance(metric, str):
            raise ValueError(f"Unknown multi-label metric {metric!r}; give one of {', '.join(MULTI_LABEL_METRICS)}.")
        name, fn = resolve_metric(metric)
        return {name: fn(decided, references)}

    def evaluate(
        self,
        dataset,
        *args: Any,
        metric: Metric | None = None,
        name: str | None = None,
        split: str = "test",
        **kwargs: Any,
    ) -> dict[str, float]:
        """Metrics on a labelled dataset (accuracy, and the metric the fit chose by, by default), recorded with `name`
        and `split` for the model card."""
        targets = self.read_targets(dataset)
        logits = self.checked_logits(dataset, *args, **kwargs)
        metrics = self.score(logits, targets, metric)
        if metric is None and self.fit_metric is not None:  # the metric the fit chose by, next to the defaults
            metrics |= self.score(logits, targets, self.fit_metric)
        self.run_record.add_evaluation(name, split, len(targets), metrics)
        return metrics


def compute_metrics(metric: Metric | None, default: Sequence[str], predictions, references) -> dict[str, float]:
    """{name: value} of `metric` (a name of `peft_dect.metrics.METRICS`, a callable or an `evaluate` metric), else
    of each default."""
    if metric is None:
        return {name: metric_value(name, predictions, references) for name in default}
    name, fn = resolve_metric(metric)
    return {name: fn(predictions, references)}


class AdapterHook(Protocol):
    """What a PEFT method adds to label-word classifier folders: checks before loading, files after saving."""

    def check(self, model: nn.Module, folder: str) -> None: ...

    def after_load(self, peft_model: PeftModel, folder: str) -> None: ...

    def after_save(self, peft_model: PeftModel, adapter_name: str, folder: str, classifier: LabelWordClassifier): ...


ADAPTER_HOOKS: dict[str, AdapterHook] = {}
"""Hooks by peft type, registered by the method that owns them (prompt tuning writes its init and card)."""


def register_adapter_hook(peft_type: str, hook: AdapterHook) -> None:
    ADAPTER_HOOKS[peft_type] = hook


def _peft_type(config) -> str:
    return str(getattr(config.peft_type, "value", config.peft_type))


class LabelWordClassifier(nn.Module, FewShotClassifier):
    """Classify by the label words' log-probabilities that `model` gives at the prediction position of the template.

    `model` is a transformers masked or causal LM, or a `peft.PeftModel` around one (LoRA, prompt tuning, ...): the
    `transformers.Trainer` then updates whatever is trainable in it (all weights, LoRA matrices, a soft prompt).
    `forward(input_ids, attention_mask, labels)` returns class logits (N, C) and the cross-entropy over classes;
    build its inputs with `prepare_dataset` and pass `collate` as the Trainer's data collator.

    Args:
        model: the LM, bare or wrapped by PEFT.
        tokenizer: its tokenizer.
        template, label_words, max_length, label_word_aggregation, multi_token, text_column, text_pair_column,
            label_column: the prompt and the data columns (see `peft_dect.settings.PromptSettings`).
        batch_size: prompts per forward pass at prediction time.
        show_progress: progress bars for prediction.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        template: str | Template,
        label_words: Mapping[str, Sequence[str] | str],
        *,
        max_length: int | None = None,
        label_word_aggregation: str = "mean",
        multi_token: str = "exact",
        text_column: str | None = None,
        text_pair_column: str | None = None,
        label_column: str = "label",
        batch_size: int = 16,
        show_progress: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.prompt = PromptSettings(
            template=template.text if isinstance(template, Template) else template,
            label_words=dict(label_words),
            label_word_aggregation=label_word_aggregation,
            multi_token=multi_token,
            max_length=max_length,
            text_column=text_column,
            text_pair_column=text_pair_column,
            label_column=label_column,
        )
        self.prompt.check_prompt_settings()
        template = self.prompt.parsed_template
        verbalizer = Verbalizer.from_words(
            self.prompt.label_words,
            tokenizer,
            space_before=template.space_before_mask,
            aggregation=label_word_aggregation,
            multi_token=multi_token,
        )
        # No feature cache: the weights change while training, so every call runs the model.
        self.backbone = Backbone(
            model, tokenizer, template, verbalizer, max_length=max_length, batch_size=batch_size, show_progress=False
        )
        self.show_progress = show_progress
        name = getattr(unwrap_peft(model).config, "_name_or_path", None) or None
        self.run_record = RunRecord(base_model=name, template=template.text, label_words=self.prompt.label_words)

    # ---------------------------------------------------------------- what it classifies into
    @property
    def classes(self) -> tuple[str, ...]:
        return self.backbone.verbalizer.classes

    @property
    def template(self) -> Template:
        return self.backbone.template

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (where inputs go; `transformers.pipeline` reads it)."""
        return next(self.model.parameters()).device

    @property
    def settings(self) -> dict[str, Any]:
        """The prompt settings (template, label words, columns) as saved in `label_word_classifier.json`."""
        return self.prompt.prompt_settings()

    # ---------------------------------------------------------------- the Trainer path
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        """Class logits (label-word log-probabilities) and, with `labels`, the loss of `compute_loss`."""
        if input_ids is None:
            raise ValueError("forward needs input_ids made by classifier.prepare_dataset(...).")
        feats = self.backbone.forward(input_ids, attention_mask)
        feats.check_finite()
        logits = feats.label_logits
        loss = self.compute_loss(logits, labels.to(logits.device)) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the classes' label-word scores (the softmax renormalises over the label words)."""
        return F.cross_entropy(logits, labels)

    def read_targets(self, data) -> torch.Tensor:
        """Training targets of `data` (class indices), checked to match its texts one for one."""
        return self.prompt.read_labels(data)

    def read_inputs(self, data) -> tuple[list[str], list[str] | None]:
        return self.prompt.read_texts(data)

    def encode_labels(self, data) -> list:
        """The targets of `data` as a list (the `labels` column of `prepare_dataset`)."""
        return torch.as_tensor(self.read_targets(data)).tolist()

    def prepare_dataset(self, dataset) -> datasets.Dataset:
        """Prompted, tokenised copy of `dataset` for `transformers.Trainer`: input_ids, attention_mask, labels."""
        texts_a, texts_b = self.prompt.read_texts(dataset)
        labels = self.encode_labels(dataset)
        ids = self.backbone.tokenize(texts_a, texts_b)
        columns = {"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids], "labels": labels}
        return datasets.Dataset.from_dict(columns)

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Data collator for prepared datasets: pads input ids (right) and stacks labels."""
        batch = self.backbone.collate([list(r["input_ids"]) for r in rows])
        if "labels" in rows[0]:
            dtype = torch.float if isinstance(rows[0]["labels"], float) else torch.long
            batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=dtype)
        return batch

    # ---------------------------------------------------------------- prediction
    def predict_logits(self, inputs, *, show_progress: bool | None = None) -> torch.Tensor:
        """Class logits (N, C) for texts, (text_a, text_b) pairs, a dict of columns or a Dataset (eval mode)."""
        texts_a, texts_b = self.prompt.read_texts(inputs)
        show = self.show_progress if show_progress is None else show_progress
        feats = self.backbone.run(self.backbone.tokenize(texts_a, texts_b), "predict", show=show)
        feats.check_finite(texts=texts_a)
        return feats.label_logits

    # ---------------------------------------------------------------- saving and loading
    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Save the trained weights (a PEFT adapter, or the whole model after full fine-tuning) and the settings.

        Weights are written with safetensors only; the settings (template, label words) go to
        `label_word_classifier.json` beside them. The files are written into a hidden folder next to the target and
        then moved in, so an interrupted save leaves a previous save intact.
        """
        kwargs.setdefault("safe_serialization", True)
        if not kwargs["safe_serialization"]:
            raise ValueError("peft-dect saves weights with safetensors only (safe_serialization=True).")
        with staged_folder(save_directory) as staging:
            self.save_files(staging, **kwargs)

    def save_files(self, directory: str, **kwargs: Any) -> None:
        """Write the classifier's files into `directory` (subclasses add theirs after calling this)."""
        self.model.save_pretrained(directory, **kwargs)
        write_settings(directory, self.settings)
        if isinstance(self.model, PeftModel):
            for name, config in self.model.peft_config.items():
                hook = ADAPTER_HOOKS.get(_peft_type(config))
                folder = adapter_folder(directory, name)
                if hook is not None and os.path.isdir(folder):
                    hook.after_save(self.model, name, folder, self)

    @classmethod
    def read_settings(cls, directory: str) -> dict[str, Any]:
        """The settings saved by `save_pretrained` in `directory`, checked."""
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise ValueError(
                f"{directory} has no {CONFIG_NAME}: it was not saved by LabelWordClassifier.save_pretrained."
            )
        try:
            with open(path, encoding="utf-8") as fh:
                settings = json.load(fh)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not readable JSON ({err}); save the classifier again.") from None
        if not isinstance(settings, dict) or "template" not in settings or "label_words" not in settings:
            raise ValueError(f"{path} lacks the template or the label words; save the classifier again.")
        version = settings.pop("format_version", 1)
        if not isinstance(version, int) or version > CLASSIFIER_FORMAT:
            raise ValueError(
                f"{path} was written by a newer peft-dect (format {version}, this one reads up to "
                f"{CLASSIFIER_FORMAT}); upgrade peft-dect."
            )
        unknown = sorted(set(settings) - set(PROMPT_FIELDS))
        if unknown:
            raise ValueError(f"{path} has unknown settings {unknown}; it was written by a newer peft-dect?")
        return settings

    @classmethod
    def from_pretrained(cls, model: nn.Module, tokenizer, directory: str, **kwargs: Any) -> LabelWordClassifier:
        """Rebuild a saved classifier on `model`.

        If `directory` holds a PEFT adapter, `model` is the base model and the adapter is loaded onto it (its folder
        is checked first: safetensors only). After full fine-tuning pass the model loaded from `directory` itself,
        e.g. ``AutoModelForCausalLM.from_pretrained(directory)``.
        """
        directory = str(directory)
        settings = cls.read_settings(directory)
        return cls(load_saved_model(model, directory, **kwargs), tokenizer, **settings)


def write_settings(directory: str, settings: Mapping[str, Any]) -> None:
    """Write `label_word_classifier.json` (the prompt settings and the format) into `directory`."""
    with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as fh:
        json.dump({"format_version": CLASSIFIER_FORMAT, **settings}, fh, indent=2)


def load_saved_model(model: nn.Module, directory: str, **kwargs: Any) -> nn.Module:
    """`model` with the PEFT adapter saved in `directory` loaded onto it (folder checked first), or `model` itself
    when the folder holds no adapter (a fully fine-tuned model, loaded by the caller)."""
    if not os.path.isfile(os.path.join(directory, "adapter_config.json")):
        return model
    if isinstance(model, PeftModel):
        raise TypeError("Pass the base model (not a PeftModel): the saved adapter is loaded onto it.")
    check_adapter_folder(directory)
    hook = ADAPTER_HOOKS.get(str(read_json_object(os.path.join(directory, "adapter_config.json")).get("peft_type")))
    if hook is not None:
        hook.check(model, directory)  # e.g. a soft prompt of another width: a clear error before peft loads it
    peft_model = PeftModel.from_pretrained(unwrap_peft(model), directory, **kwargs)
    if hook is not None:
        hook.after_load(peft_model, directory)
    return peft_model
