"""The ``few-shot-classification`` task of `transformers.pipeline`: a peft-dect classifier behind the pipeline API.

``pipeline("few-shot-classification", model=peft_model, tokenizer=tokenizer)`` takes texts, ``{"text", "text_pair"}``
dicts, lists, generators or a `KeyDataset` and answers as the text-classification pipeline does
(``[{"label", "score"}]``, ``top_k=``), with the probabilities of the classifier's own `predict_proba`: its template,
label words, decoder and calibrated temperature. Inputs are classified `batch_size` at a time (one backbone batch
each). Importing `peft_dect` registers the task (an entry in `transformers.pipelines.PIPELINE_REGISTRY`, nothing
else).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from peft import PeftModel
from transformers import Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .classifier import FewShotClassifier
from .peft_model import PeftModelForFewShotClassification


TASK = "few-shot-classification"


def ranked(probabilities: Sequence[float], classes: Sequence[str], top_k: int | None) -> list[dict[str, Any]]:
    """``[{"label", "score"}]`` of one input, most probable first, the `top_k` first (None: every class)."""
    order = np.argsort(-np.asarray(probabilities, dtype=np.float64), kind="stable")
    rows = [{"label": classes[i], "score": float(probabilities[i])} for i in order]
    return rows if top_k is None else rows[:top_k]


def check_top_k(top_k: Any, field: str = "top_k") -> int | None:
    """`top_k` as a positive int or None (every class); else a ValueError naming the fix."""
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"{field} must be a positive integer, or None for every class; got {top_k!r}.")
    return top_k


def classifier_of(model) -> FewShotClassifier:
    """The peft-dect classifier a pipeline or server calls: a PEFT model's tuner, or the classifier itself."""
    classifier = model.base_model if isinstance(model, PeftModel) else model
    if not isinstance(classifier, FewShotClassifier):
        raise TypeError(
            f"few-shot-classification needs a peft-dect classifier (a PeftModel with a DecT adapter, or a "
            f"LabelWordClassifier), got {type(model).__name__}; load the adapter with PeftModel.from_pretrained."
        )
    return classifier


def text_of(item) -> str | tuple[str, str]:
    """A text, or a (text_a, text_b) pair from ``{"text": ..., "text_pair": ...}``; else a TypeError."""
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping) and isinstance(item.get("text"), str):
        pair = item.get("text_pair")
        if pair is None:
            return item["text"]
        if isinstance(pair, str):
            return (item["text"], pair)
    raise TypeError(
        f"few-shot-classification takes a text, a {{'text': ..., 'text_pair': ...}} dict, or a list, generator or "
        f"KeyDataset of them; got {type(item).__name__}."
    )


class FewShotClassificationPipeline(Pipeline):
    """Classify texts with a peft-dect classifier in the text-classification pipeline's format.

    Build it with ``transformers.pipeline("few-shot-classification", model=peft_model, tokenizer=tokenizer)``.
    A single text gives ``[{"label", "score"}]`` of the best class; a list gives one such dict per text; with
    ``top_k=k`` each text gets its ``k`` most probable classes as a list (``top_k=None``: every class), most probable
    first. Scores are `predict_proba`'s (calibrated) probabilities.

    Args:
        model: a `PeftModelForFewShotClassification` (a DecT adapter on its base model) or a `LabelWordClassifier`.
        tokenizer: the base model's tokenizer (DecT needs it; a `LabelWordClassifier` has its own).
        batch_size: texts per backbone batch (also accepted per call); 8 by default.
        top_k: classes per text (also accepted per call).
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(self, model, tokenizer=None, **kwargs: Any) -> None:
        self.classifier = classifier_of(model)
        kwargs.setdefault("batch_size", 8)
        super().__init__(model=model, tokenizer=tokenizer, **kwargs)

    def _sanitize_parameters(self, top_k: Any = "", function_to_apply: Any = None, **kwargs: Any):
        if kwargs:
            raise TypeError(
                f"few-shot-classification got unknown arguments {sorted(kwargs)}; it takes top_k and batch_size."
            )
        chosen = getattr(function_to_apply, "value", function_to_apply)  # a string or transformers' enum
        if chosen is not None and str(chosen).lower() != "softmax":
            raise ValueError(
                f"few-shot-classification scores are the classifier's calibrated probabilities (a softmax); "
                f"function_to_apply={function_to_apply!r} is not available."
            )
        post: dict[str, Any] = {}
        if top_k != "":  # given, even as None: the list form of the text-classification pipeline
            post = {"top_k": check_top_k(top_k), "legacy": False}
        return {}, {}, post

    @property
    def classes(self) -> Sequence[str]:
        return self.classifier.classes

    def probabilities(self, texts: list) -> np.ndarray:
        """`predict_proba` of the classifier for a batch of texts or pairs: (N, C)."""
        if isinstance(self.model, PeftModelForFewShotClassification):
            return self.model.predict_proba(texts, tokenizer=self.tokenizer)
        return self.classifier.predict_proba(texts)

    # The three steps of a transformers pipeline, for one input (batches go through `get_iterator`).
    def preprocess(self, inputs) -> dict[str, Any]:
        return {"texts": [text_of(inputs)]}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        return {"probabilities": self.probabilities(model_inputs["texts"])}

    def postprocess(self, model_outputs, top_k: int | None = 1, legacy: bool = True):
        row = model_outputs["probabilities"][0]
        if legacy:
            return ranked(row, self.classes, 1)[0]
        return ranked(row, self.classes, top_k)

    def run_single(self, inputs, preprocess_params, forward_params, postprocess_params):
        (result,) = self.batches([inputs], 1, postprocess_params)
        return [result] if postprocess_params.get("legacy", True) else result

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        return self.batches(inputs, batch_size, postprocess_params)

    def batches(self, inputs: Iterable, batch_size: int, postprocess_params: dict) -> Iterator:
        """One answer per input, in order, from one `predict_proba` call per `batch_size` inputs (lazily)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        iterator = iter(inputs)
        while chunk := [text_of(item) for item in itertools.islice(iterator, batch_size)]:
            probs = self.probabilities(chunk)
            for row in probs:
                yield self.postprocess({"probabilities": row[None]}, **postprocess_params)


PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=FewShotClassificationPipeline, type="text")
