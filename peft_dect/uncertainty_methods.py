"""The uncertainty part of the classifier interface: calibrated probabilities, out-of-scope rejection, conformal
prediction sets and `suggest`, for every peft-dect classifier (`peft_dect.classifier.FewShotClassifier` mixes it in).

A classifier provides `checked_logits`, `decide`, `classes`, `read_targets`, `read_inputs` and, optionally, `embed`
(hidden states for `suggest(strategy="diverse")`); its `calibration` (a `peft_dect.uncertainty.Calibration`) comes
from its fit (DecT's auto mode) or from `calibrate()` on labelled held-out data.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .uncertainty import (
    SUGGEST_STRATEGIES,
    Calibration,
    check_alpha,
    fit_calibration,
    prediction_sets,
    probabilities,
    suggest,
    text_key,
    unknown_scores,
)


class UncertaintyMethods:
    """`predict_proba` with the fitted temperature, `unknown_score`, `predict(reject=...)`, `predict_set`,
    `calibrate` and `suggest`.

    `calibration` is None until a fit or `calibrate()` sets it; `reject_label` is what a rejected input is
    predicted as (None by default; DecT saves it in its config).
    """

    calibration: Calibration | None = None
    reject_label: str | None = None
    reject_rate: float = 0.05

    def single_label_only(self, what: str) -> None:
        """Refuse `what` where it does not apply (a multi-label classifier refuses the methods of one class per
        input); the classifier interface says when."""

    @property
    def temperature(self) -> float:
        """T of the calibrated probabilities softmax(logits / T); 1.0 without a calibration."""
        return 1.0 if self.calibration is None else float(self.calibration.temperature)

    def predict_proba(self, inputs, *args: Any, **kwargs: Any) -> np.ndarray:
        """Class probabilities (N, C), columns in the order of the classes, calibrated by the fitted temperature."""
        return probabilities(self.checked_logits(inputs, *args, **kwargs), self.temperature).numpy()

    def predict(self, inputs, *args: Any, reject: bool | float = False, reject_rate: float | None = None, **kwargs):
        """Predicted class names; with `reject`, `reject_label` for inputs whose `unknown_score` is above the
        threshold: chosen on held-out in-scope data for a false-rejection rate `reject_rate` (the classifier's,
        0.05 by default) when `reject=True`, or the number given as `reject`."""
        logits = self.checked_logits(inputs, *args, **kwargs)
        if reject is False or reject is None:
            return self.decide(logits)
        return self.decide_or_reject(logits, reject, reject_rate)[0]

    def decide_or_reject(self, logits: torch.Tensor, reject: bool | float = True, reject_rate: float | None = None):
        """(predicted class names with `reject_label` above the rejection threshold, the unknown scores)."""
        threshold = self.rejection_threshold(reject, reject_rate)
        scores = self.unknown_of_logits(logits).tolist()
        labels = [self.reject_label if s > threshold else label for label, s in zip(self.decide(logits), scores)]
        return labels, scores

    def rejection_threshold(self, reject: bool | float = True, reject_rate: float | None = None) -> float:
        """The unknown score above which `predict(reject=...)` answers `reject_label`."""
        self.single_label_only("Rejection (predict(reject=...))")
        if self.reject_label is not None and self.reject_label in self.classes:
            raise ValueError(f"reject_label {self.reject_label!r} is a class name; choose another (or None).")
        if reject is True:
            rate = self.reject_rate if reject_rate is None else reject_rate
            return self.calibration_or_error("Rejection").reject_threshold(rate)
        if isinstance(reject, bool) or not isinstance(reject, numbers.Real) or not np.isfinite(reject):
            raise TypeError(f"reject must be True, False or a finite number (a fixed threshold), got {reject!r}.")
        return float(reject)

    def calibration_or_error(self, what: str) -> Calibration:
        """The calibration, when it holds held-out predictions; else a ValueError saying how to get them."""
        cal = self.calibration or Calibration()
        cal.require_heldout(what)
        return cal

    def unknown_of_logits(self, logits: torch.Tensor) -> torch.Tensor:
        cal = self.calibration or Calibration()
        return unknown_scores(logits, cal.temperature, cal.unknown_score)

    def unknown_score(self, inputs, *args: Any, **kwargs: Any) -> np.ndarray:
        """One score per input, higher when it is more likely outside every class (see
        `peft_dect.uncertainty.UNKNOWN_SCORES`; the calibration names which score, `energy` by default)."""
        self.single_label_only("unknown_score")
        return self.unknown_of_logits(self.checked_logits(inputs, *args, **kwargs)).numpy()

    def predict_set(self, inputs, *args: Any, alpha: float = 0.1, **kwargs: Any) -> list[list[str]]:
        """Per input, the classes (most probable first) of a conformal prediction set: it holds the true class with
        probability >= 1 - alpha for inputs exchangeable with the held-out data the calibration was made on. A set is
        empty when no class is probable enough (an input unlike the held-out data)."""
        self.single_label_only("predict_set")
        threshold = self.calibration_or_error("A prediction set").set_threshold(check_alpha(alpha))
        probs = probabilities(self.checked_logits(inputs, *args, **kwargs), self.temperature)
        return [[self.classes[c] for c in row] for row in prediction_sets(probs, threshold)]

    def calibrate(self, dataset, *args: Any, temperature: bool = True, unknown_score: str | None = None, **kwargs):
        """Fit the calibration on labelled held-out `dataset` (not the training data): temperature, conformal and
        rejection scores. Returns the held-out expected calibration error before and after, and the temperature."""
        self.single_label_only("calibrate()")
        targets = self.read_targets(dataset)
        logits = self.checked_logits(dataset, *args, **kwargs)
        previous = self.calibration or Calibration()
        cal = fit_calibration(
            logits,
            targets,
            temperature=temperature,
            unknown_score=unknown_score or previous.unknown_score,
            sources="calibrate()",
            training_texts=previous.training_texts,
        )
        self.calibration = cal
        return {"temperature": cal.temperature, "ece_before": cal.ece_before, "ece_after": cal.ece_after}

    def read_inputs(self, data) -> tuple[list[str], list[str] | None]:
        """The texts of `data` (text_a, and text_b for pair templates)."""
        raise NotImplementedError

    def embed(self, inputs, *args: Any, **kwargs: Any) -> torch.Tensor | None:
        """Hidden states (N, H) of inputs for `suggest(strategy="diverse")`; None: the probabilities are used."""
        return None

    def suggest(self, pool, k: int, *args: Any, strategy: str = "margin", **kwargs: Any) -> list[int]:
        """Indices into `pool` of the `k` unlabelled inputs whose labels would help most: `margin` (smallest gap
        between the two most probable classes), `entropy`, or `diverse` (uncertain ones spread over hidden-state
        space). Inputs the classifier was fitted on are never suggested. With DecT the features of the pool are
        cached, so a suggest - label - refit loop costs one model pass per new input."""
        self.single_label_only("suggest")
        if strategy not in SUGGEST_STRATEGIES:
            raise ValueError(f"strategy must be one of {SUGGEST_STRATEGIES}, got {strategy!r}.")
        texts_a, texts_b = self.read_inputs(pool)  # an empty pool is refused there
        seen = set(self.calibration.training_texts) if self.calibration is not None else set()
        pairs: Sequence = texts_b if texts_b is not None else [None] * len(texts_a)
        fresh = [i for i, (a, b) in enumerate(zip(texts_a, pairs)) if text_key(a, b) not in seen]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(fresh):
            raise ValueError(
                f"k must be an integer from 1 to {len(fresh)} (the pool's inputs not in the training set), got {k!r}."
            )
        subset = [texts_a[i] for i in fresh] if texts_b is None else [(texts_a[i], texts_b[i]) for i in fresh]
        probs = probabilities(self.checked_logits(subset, *args, **kwargs), self.temperature)
        embeddings = self.embed(subset, *args, **kwargs) if strategy == "diverse" else None
        return [fresh[i] for i in suggest(probs, k, strategy, embeddings)]
