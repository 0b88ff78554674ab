"""Multi-label DecT with one yes/no question per class: a prompt per (text, class), for intents described by questions.

A single prompt scores each class's label word at one position. Intent data sets often describe their classes by
questions instead ("is the intent to ask about a card?", NLU++'s ontology); then each (text, class) pair gets its own
prompt, e.g. ``{text_a}\\nQuestion: {text_b}\\nAnswer:{mask}`` with the question as `text_b` and Yes / No label
words, and one two-class DecT adapter (the paper's decoder and calibrated label-word prior, auto mode) is fitted on
every pair. A class's probability is the pair's Yes-against-No log-odds:

    P(k | x) = sigmoid((s_yes(x, q_k) - s_no(x, q_k)) / T)

with s the adapter's fused class scores. It costs one model pass per class per text, at training and at prediction
(C times the single prompt of `DecTConfig(multi_label=True)`); the feature cache keeps every pair. T and the decision
thresholds (a shared one, and a class's own where it has `ML_MIN_POSITIVES` held-out positives, as in
`multilabel.py`) are chosen on held-out texts: the training texts fall into `folds` folds, all pairs of a text in
one, and the adapter is refitted per fold on the cached features.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..cards import RunRecord
from ..classifier import FewShotClassifier
from ..data import read_multi_labels, read_texts
from ..metrics import metric_value, multi_label_value
from ..saving import adapter_folder, read_json_object
from .config import DecTConfig
from .multilabel import binary_ece, choose_thresholds, fit_binary_temperature, random_folds


logger = logging.getLogger(__name__)

QUESTIONS_FILE = "class_questions.json"
"""The classes, their questions, T and the thresholds, beside the two-class DecT adapter."""
QUESTIONS_FORMAT = 1
QUESTION_FOLDS = 4  # held-out folds of training texts for T and the thresholds (auto mode's own fold count)
NEGATIVES_PER_POSITIVE = None  # train on every pair; `fit(negatives=r)` samples r No pairs per Yes pair (unmeasured)


def positive_f1(index: int):
    """The F1 of class `index` (the Yes answer) of class predictions: what the adapter's auto mode maximises, since
    most pairs are No and accuracy would favour answering No to every question."""

    def f1(predictions, references) -> float:
        return metric_value("f1", np.asarray(predictions) == index, np.asarray(references) == index)

    f1.__name__ = "yes_f1"
    return f1


class ClassQuestions(FewShotClassifier):
    """A multi-label classifier that asks a two-class DecT adapter one yes/no question per class.

    Args:
        peft_model: a `PeftModel` whose active adapter is DecT with two classes, `negative` and `positive`, a pair
            template whose `{text_b}` is the question (e.g. ``"{text_a}\\nQuestion: {text_b}\\nAnswer:{mask}"``) and
            `budget=1` (each prompt candidate would cost C more passes per text).
        questions: {class name: question}, one per class; the classes keep this order.
        positive: the adapter's class meaning "the class applies" (default ``"yes"``); the other one means it does
            not.
        label_column: the column of the label lists in training and evaluation data.
    """

    def __init__(
        self,
        peft_model,
        questions: Mapping[str, str],
        *,
        positive: str = "yes",
        label_column: str = "labels",
    ) -> None:
        if not isinstance(questions, Mapping) or not questions:
            raise TypeError("questions must be a non-empty dict {class name: question}.")
        bad = [c for c, q in questions.items() if not isinstance(c, str) or not isinstance(q, str) or not q.strip()]
        if bad:
            raise ValueError(f"Every class needs a non-empty question string; not so for {bad[:5]}.")
        cfg = getattr(peft_model, "peft_config", {}).get(getattr(peft_model, "active_adapter", None))
        if not isinstance(cfg, DecTConfig):
            raise TypeError(
                "ClassQuestions needs a PeftModel with an active DecT adapter: get_peft_model(base, DecTConfig(...))."
            )
        if len(cfg.classes) != 2 or positive not in cfg.classes:
            raise ValueError(
                f"The DecT adapter must have two classes, one of them {positive!r} (the answer 'the class applies'); "
                f"it has {list(cfg.classes)}. Give label_words={{'no': ['No'], 'yes': ['Yes']}} or set positive=."
            )
        if not cfg.parsed_template.is_pair:
            raise ValueError(
                f"The template {cfg.template!r} has no {{text_b}} for the question: use e.g. "
                "'{text_a}\\nQuestion: {text_b}\\nAnswer:{mask}'."
            )
        if cfg.multi_label or cfg.budget != 1 or cfg.demonstrations is not None or cfg.templates:
            raise ValueError(
                "The DecT adapter of ClassQuestions must be single-label with budget=1 and no demonstrations or "
                "template candidates: each would cost one more pass per class and text."
            )
        self.peft_model = peft_model
        self.questions = {str(c): str(q) for c, q in questions.items()}
        self.positive = positive
        self.label_column = label_column
        self.fitted_temperature = 1.0
        self.fitted_thresholds: list[float] | None = None
        self.run_record = RunRecord(card="", library_name="peft", template=cfg.template)

    # ------------------------------------------------------------------ the classifier interface
    @property
    def classes(self) -> list[str]:
        return list(self.questions)

    @property
    def multi_label(self) -> bool:
        return True

    @property
    def thresholds(self) -> list[float] | None:
        return self.fitted_thresholds

    @property
    def temperature(self) -> float:
        return self.fitted_temperature

    @property
    def config(self):
        """The two-class DecT adapter's config."""
        return self.peft_model.peft_config[self.peft_model.active_adapter]

    def read_inputs(self, data) -> tuple[list[str], list[str] | None]:
        return read_texts(data, needs_pair=False, text_column=self.config.text_column)

    def read_targets(self, data) -> torch.Tensor:
        return read_multi_labels(data, self.classes, self.label_column)

    def pairs(self, texts: Sequence[str]) -> list[tuple[str, str]]:
        """The (text, question) pairs of `texts`, text-major: row i * C + k asks class k of text i."""
        return [(t, q) for t in texts for q in self.questions.values()]

    def pair_data(
        self, texts: Sequence[str], targets: torch.Tensor, negatives: float | None = None, seed: int = 0
    ) -> dict[str, list]:
        """The two-class training data of `texts` with multi-hot `targets` (N, C): one row per pair, or every Yes
        pair and a seeded sample of `negatives` No pairs per Yes pair (None: every pair)."""
        cfg = self.config
        negative = next(c for c in cfg.classes if c != self.positive)
        pairs = self.pairs(texts)
        yes = targets.reshape(-1).bool()
        rows = torch.arange(len(pairs))
        if negatives is not None:
            no = rows[~yes]
            count = min(len(no), int(round(negatives * max(int(yes.sum()), 1))))
            sample = no[torch.randperm(len(no), generator=torch.Generator().manual_seed(seed))[:count]]
            rows = torch.cat([rows[yes], sample]).sort().values
        return {
            cfg.text_column or "text_a": [pairs[i][0] for i in rows.tolist()],
            cfg.text_pair_column or "text_b": [pairs[i][1] for i in rows.tolist()],
            cfg.label_column or "label": [self.positive if yes[i] else negative for i in rows.tolist()],
        }

    def log_odds(self, texts: Sequence[str], tokenizer=None, *, show_progress: bool = False) -> torch.Tensor:
        """Per text and class, the adapter's Yes-against-No score difference (N, C): C model passes per new text."""
        logits = self.peft_model.base_model.predict_logits(self.pairs(texts), tokenizer, show_progress=show_progress)
        yes = self.config.classes.index(self.positive)
        return (logits[:, yes] - logits[:, 1 - yes]).view(len(texts), len(self.questions))

    def predict_logits(self, inputs, tokenizer=None, *, show_progress: bool = False) -> torch.Tensor:
        """Per-class log-odds (N, C) for texts, a dict of columns or a Dataset."""
        texts, _ = self.read_inputs(inputs)
        return self.log_odds(texts, tokenizer, show_progress=show_progress)

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        train_dataset,
        tokenizer=None,
        *,
        folds: int = QUESTION_FOLDS,
        negatives: float | None = NEGATIVES_PER_POSITIVE,
        seed: int = 0,
        batch_size: int | None = None,
        show_progress: bool = True,
    ) -> dict[str, Any]:
        """Fit the adapter on every (text, class) pair of `train_dataset` (texts and label lists), with T and the
        thresholds chosen on `folds` held-out folds of texts. Returns a report (held-out micro-F1, model passes)."""
        texts, _ = self.read_inputs(train_dataset)
        targets = self.read_targets(train_dataset)
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise ValueError(f"folds must be an integer of at least 2, got {folds!r}.")
        if negatives is not None and (
            isinstance(negatives, bool) or not isinstance(negatives, (int, float)) or negatives <= 0
        ):
            raise ValueError(
                f"negatives must be a positive number of No pairs per Yes pair, or None, got {negatives!r}."
            )
        if len(texts) < 2 * folds:
            raise ValueError(
                f"ClassQuestions.fit holds out {folds} folds of texts for its thresholds and needs at least "
                f"{2 * folds} training texts; got {len(texts)}. Give more texts or fewer folds."
            )
        start = time.perf_counter()
        yes = self.config.classes.index(self.positive)
        options = {"batch_size": batch_size, "show_progress": show_progress, "metric": positive_f1(yes)}
        heldout = torch.zeros(len(texts), len(self.questions))
        passes = 0
        for held in random_folds(len(texts), folds, seed):
            keep = (~held).nonzero()[:, 0].tolist()
            self.peft_model.base_model.reset_adapter()
            report = self.peft_model.fit(
                self.pair_data([texts[i] for i in keep], targets[keep], negatives, seed), tokenizer, **options
            )
            passes += report["model_passes"]
            rows = held.nonzero()[:, 0].tolist()
            source = self.peft_model.base_model.backbone(tokenizer)
            before = source.passes
            heldout[held] = self.log_odds([texts[i] for i in rows], tokenizer, show_progress=show_progress)
            passes += source.passes - before
        temperature = fit_binary_temperature(heldout, targets) if self.config.calibrate_probabilities else 1.0
        self.fitted_temperature = temperature
        self.fitted_thresholds = choose_thresholds(heldout, targets, temperature)
        decided = (torch.sigmoid(heldout / temperature) >= torch.tensor(self.fitted_thresholds)).numpy()
        self.peft_model.base_model.reset_adapter()
        final = self.peft_model.fit(self.pair_data(texts, targets, negatives, seed), tokenizer, **options)
        passes += final["model_passes"]
        report = {
            "mode": "class_questions",
            "multi_label": True,
            "selected_on": f"{folds} folds of training texts",
            "heldout_micro_f1": multi_label_value("micro_f1", decided, targets.numpy() > 0.5),
            "temperature": temperature,
            "heldout_ece_before": binary_ece(torch.sigmoid(heldout), targets),
            "heldout_ece_after": binary_ece(torch.sigmoid(heldout / temperature), targets),
            "train_examples": len(texts),
            "pairs": len(texts) * len(self.questions),
            "negatives_per_positive": negatives,
            "model_passes": passes,
            "predict_passes_per_input": len(self.questions),
            "fit_seconds": time.perf_counter() - start,
            "adapter": {k: v for k, v in final.items() if not k.startswith("grid")},
        }
        self.run_record.start_fit(report)
        logger.info(
            "ClassQuestions: %d classes, held-out micro-F1 %.3f, %d model passes.",
            len(self.questions),
            report["heldout_micro_f1"],
            passes,
        )
        return report

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save the adapter (peft's `save_pretrained`, safetensors) and `class_questions.json` beside it."""
        self.peft_model.save_pretrained(save_directory, **kwargs)
        name = self.peft_model.active_adapter
        record = {
            "format": QUESTIONS_FORMAT,
            "adapter_name": name,
            "questions": self.questions,
            "positive": self.positive,
            "label_column": self.label_column,
            "temperature": self.fitted_temperature,
            "thresholds": self.fitted_thresholds,
        }
        folder = os.fspath(save_directory)
        fd, tmp = tempfile.mkstemp(prefix=f".{QUESTIONS_FILE}.", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(record, fh, indent=1)
            os.replace(tmp, os.path.join(folder, QUESTIONS_FILE))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def from_pretrained(cls, model, directory: str | os.PathLike) -> ClassQuestions:
        """Load what `save_pretrained` wrote onto the base `model` (a fresh one: the adapter is added to it)."""
        from peft import PeftModel

        path = os.path.join(os.fspath(directory), QUESTIONS_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"{directory} has no {QUESTIONS_FILE}: save it with ClassQuestions.save_pretrained.")
        record = read_json_object(path, "ClassQuestions classifier")
        if record.get("format") != QUESTIONS_FORMAT:
            raise ValueError(
                f"{path} has format {record.get('format')!r}; this release reads format {QUESTIONS_FORMAT}: "
                "upgrade peft-dect or save the classifier again."
            )
        name = record.get("adapter_name", "default")
        peft_model = PeftModel.from_pretrained(model, adapter_folder(directory, name), adapter_name=name)
        out = cls(peft_model, record["questions"], positive=record["positive"], label_column=record["label_column"])
        out.fitted_temperature = float(record["temperature"])
        thresholds = record.get("thresholds")
        out.fitted_thresholds = None if thresholds is None else [float(t) for t in thresholds]
        return out
