"""The adapters a server holds: one base model, any number of peft-dect adapters loaded onto it by PEFT.

PEFT keeps every adapter's tensors in the one model (`load_adapter`, `set_adapter`), so many tasks cost one copy of
the base model. The model has one active adapter at a time and its feature cache and tokenizer state are shared,
so every call that switches the adapter and classifies runs under one lock.

Adapters whose forward pass over a text is the same (the classifier's `pass_key`; for DecT one template and no
prompt of their own, as `predict_many` groups them) form one group (`group_of`): `run_group` classifies the queries of
several adapters of a group with one backbone batch over all their texts, then derives each adapter's answers from
the shared features (kept in the feature cache for the call, whatever its bound).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from huggingface_hub import ModelCard
from peft import PeftModel
from torch import nn

from ..pipeline import classifier_of, ranked
from ..uncertainty import prediction_sets


logger = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def adapter_name(source: str) -> str:
    """The name an adapter is served under when none is given: its folder's name, or the Hub id with '--'."""
    text = str(source).rstrip("/\\")
    name = os.path.basename(text) if os.path.isdir(text) else text.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip("._-")[:64] or "adapter"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(
            f"An adapter name must be 1 to 64 letters, digits, '.', '_' or '-' (not first), got {name!r}; "
            "give another with NAME=SOURCE."
        )
    return name


@dataclass
class Query:
    """One request's texts and what it asks for.

    Args:
        texts: the input texts.
        top_k: classes per text (None: every class).
        reject: `predict(reject=...)`'s option: True (the adapter's threshold), a number (a fixed threshold), or None.
        alpha: miscoverage of a conformal prediction set per text (None: no set).
    """

    texts: list[str]
    top_k: int | None = None
    reject: bool | float | None = None
    alpha: float | None = None

    @property
    def extras(self) -> bool:
        return self.reject is not None or self.alpha is not None


@dataclass
class Answer:
    """What a query gets: one entry per text (the text-classification list, or an object with the extras)."""

    results: list[Any]
    rejected: int = 0


@dataclass
class Adapter:
    """A served adapter: its name, where it came from, its card's metrics (if it has a card) and its group (the
    adapters one backbone pass serves)."""

    name: str
    source: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    group: str = ""


def card_metrics(source: str) -> list[dict[str, Any]]:
    """The evaluation results of a local adapter folder's model card (README.md), or [] when it has none."""
    path = os.path.join(str(source), "README.md")
    if not os.path.isfile(path):
        return []
    try:
        results = ModelCard.load(path).data.eval_results or []
    except Exception as err:  # a card is documentation: one that cannot be read never stops serving
        logger.warning("The model card %s could not be read (%s); serving without its metrics.", path, err)
        return []
    return [
        {"dataset": r.dataset_name, "split": r.dataset_split, "metric": r.metric_type, "value": r.metric_value}
        for r in results
    ]


class AdapterRegistry:
    """peft-dect adapters on one base model, classified one group of adapters at a time under a lock.

    Args:
        model: the base model (a transformers LM, not a PeftModel): every adapter is loaded onto it.
        tokenizer: its tokenizer.
        cache_max_bytes: memory bound of the shared feature cache (None: no bound; DecT's cache keeps the features
            of every text seen, so a long-running server should bound it).
    """

    def __init__(self, model: nn.Module, tokenizer, *, cache_max_bytes: int | None = 256 * 2**20) -> None:
        if isinstance(model, PeftModel):
            raise TypeError("AdapterRegistry takes the base model (not a PeftModel): it loads the adapters onto it.")
        self.base = model
        self.tokenizer = tokenizer
        self.cache_max_bytes = cache_max_bytes
        self.peft_model: PeftModel | None = None
        self.adapters: dict[str, Adapter] = {}
        self.lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self.adapters)

    def add(self, source: str, name: str | None = None) -> str:
        """Load the adapter in folder or Hub id `source` under `name` (default: from the source); returns the name.

        An adapter for another base model, or a folder that is not a peft-dect adapter, is refused with the
        loader's ValueError and leaves the adapters already served as they were.
        """
        source = str(source)
        name = check_name(name or adapter_name(source))
        if name in self.adapters:
            raise KeyError(f"An adapter named {name!r} is already served; give another name.")
        with self.lock:
            if self.peft_model is None:
                peft_model = PeftModel.from_pretrained(self.base, source, adapter_name=name)
                classifier_of(peft_model)  # a LoRA or other PEFT adapter: refused here, with the fix
                self.peft_model = peft_model.eval()
                self.peft_model.base_model.set_tokenizer(self.tokenizer)
                if self.cache_max_bytes is not None:
                    self.peft_model.base_model.use_cache_dir(None, max_bytes=self.cache_max_bytes)
            else:
                self.peft_model.load_adapter(source, adapter_name=name)
                if type(self.peft_model.peft_config[name]) is not type(self.peft_model.active_peft_config):
                    self.peft_model.delete_adapter(name)
                    raise ValueError(f"{source} is not a peft-dect adapter of the kind already served.")
            group = classifier_of(self.peft_model).pass_key(name)
        self.adapters[name] = Adapter(name, source, card_metrics(source), group)
        logger.info("adapter loaded", extra={"event": "adapter_loaded", "adapter": name, "source": source})
        return name

    def describe(self, name: str) -> dict[str, Any]:
        """What `GET /models` says of an adapter: classes, template, label words, calibration, card metrics."""
        config = self.peft_model.peft_config[name]
        calibrated = getattr(config, "uncertainty", None) is not None
        return {
            "name": name,
            "source": self.adapters[name].source,
            "classes": list(config.classes),
            "template": config.active_template,
            "label_words": config.label_words,
            "reject_label": getattr(config, "reject_label", None),
            "calibrated": calibrated,
            "metrics": self.adapters[name].metrics,
        }

    def group_of(self, name: str) -> str:
        """The group of adapter `name`: adapters of one group share a backbone pass (the classifier's `pass_key`)."""
        return self.adapters[name].group

    def run(self, name: str, queries: Sequence[Query]) -> list[Answer | Exception]:
        """Classify the texts of every query with adapter `name` in one backbone batch; one answer (or the error a
        query's own options caused) per query."""
        return self.run_group({name: queries})[name]

    def run_group(self, queries: Mapping[str, Sequence[Query]]) -> dict[str, list[Answer | Exception]]:
        """Classify the queries of adapters of one group with one backbone batch: the first adapter's features are
        extracted over the texts of all of them, and the others' are read from those (held in the feature cache for
        the call). One answer (or the error a query's own options caused) per query, by adapter."""
        names = list(queries)
        if len({self.group_of(n) for n in names}) > 1:
            raise ValueError(f"run_group takes adapters of one group (see group_of), got {names}; run them apart.")
        others = [t for n in names[1:] for q in queries[n] for t in q.texts]
        with self.lock, classifier_of(self.peft_model).keeping_features():
            return {n: self._run(n, queries[n], others if i == 0 else []) for i, n in enumerate(names)}

    def _run(self, name: str, queries: Sequence[Query], others: list[str]) -> list[Answer | Exception]:
        """The answers of adapter `name`; its features are extracted together with those of `others` (the texts of
        the other adapters of its group). Called under the lock."""
        texts = [t for q in queries for t in q.texts]
        self.peft_model.set_adapter(name)
        classifier = classifier_of(self.peft_model)
        try:
            logits = classifier.checked_logits(texts + others)[: len(texts)]
        except (ValueError, TypeError) as err:
            if len(queries) == 1 and not others:
                return [err]
            return [self._one(classifier, q) for q in queries]  # find the query whose texts are refused
        answers: list[Answer | Exception] = []
        start = 0
        for query in queries:
            rows = logits[start : start + len(query.texts)]
            start += len(query.texts)
            answers.append(self._answer(classifier, query, rows))
        return answers

    def _one(self, classifier, query: Query) -> Answer | Exception:
        try:
            return self._answer(classifier, query, classifier.checked_logits(query.texts))
        except (ValueError, TypeError) as err:
            return err

    def _answer(self, classifier, query: Query, logits: torch.Tensor) -> Answer | Exception:
        """The text-classification list per text; with `reject` or `alpha`, an object with the extras."""
        try:
            classes = list(classifier.classes)
            probs = classifier.probabilities_of(logits)
            scores = [ranked(row, classes, query.top_k) for row in probs.tolist()]
            if not query.extras:
                return Answer(scores)
            extra: list[dict[str, Any]] = [{"scores": s} for s in scores]
            rejected = 0
            if query.reject is not None:
                labels, unknown = classifier.decide_or_reject(logits, query.reject)
                rejected = sum(label != top for label, top in zip(labels, classifier.decide(logits)))
                for row, label, u in zip(extra, labels, unknown):
                    row |= {"label": label, "unknown_score": float(u)}
            if query.alpha is not None:
                threshold = classifier.calibration_or_error("A prediction set").set_threshold(query.alpha)
                for row, members in zip(extra, prediction_sets(probs, threshold)):
                    row["set"] = [classes[c] for c in members]
            return Answer(extra, rejected)
        except (ValueError, TypeError) as err:
            return err
