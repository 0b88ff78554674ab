"""Model cards: one typed run record that every method writes, and one renderer from it.

As setfit's `SetFitModelCardData`, a `RunRecord` collects what a classifier is and did (base model, prompt, fit
report, evaluations); `render_card` turns it into a README.md with Hub metadata built by `huggingface_hub`'s
`ModelCardData` / `EvalResult` (library, base model, tags, and a `model-index` once evaluated) and the method's
template from `model_cards/`. `card_is_ours` is the one test of whether a README may be replaced.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.resources
import os
import string
from dataclasses import dataclass, field
from typing import Any

from huggingface_hub import EvalResult, ModelCardData


MARKER = "<!-- peft-dect card -->"
PEFT_GENERIC_CARD = "# Model Card for Model ID"  # the heading of the card peft writes during save_pretrained
PACKAGES = ("peft-dect", "peft", "transformers")


@dataclass
class Evaluation:
    """Metrics of one `evaluate` call: on which data, how many examples."""

    dataset: str
    split: str
    examples: int
    metrics: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "examples": self.examples, "metrics": self.metrics}


@dataclass
class RunRecord:
    """What a classifier is and did, written by fitting and evaluation and read by the card.

    Args:
        card: name of the card template in `model_cards/` (`dect`, `dect_remote`, `lmbff`, `prompt_tuning`); empty
            for a classifier without a card of its own.
        tags: Hub tags beyond `peft-dect`, `few-shot` and `text-classification`.
        library_name: the library that loads the saved files (`peft`, `transformers`, `peft-dect`).
        base_model: name or path of the base model, when it has one.
        template, label_words: the prompt.
        fit: the fit report of the method (model passes, chosen settings, timings), empty before fitting.
        training: one sentence on how the classifier was trained, for the card.
        evaluations: one `Evaluation` per (dataset, split), the latest kept.
    """

    card: str = ""
    tags: list[str] = field(default_factory=list)
    library_name: str = "peft"
    base_model: str | None = None
    template: str = ""
    label_words: dict[str, list[str]] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    training: str | None = None
    evaluations: list[Evaluation] = field(default_factory=list)

    def add_evaluation(self, dataset: str | None, split: str, examples: int, metrics: dict[str, float]) -> None:
        """Record an evaluation; one on the same dataset and split replaces the earlier one."""
        entry = Evaluation(dataset or "evaluation data", split, int(examples), dict(metrics))
        self.evaluations = [e for e in self.evaluations if (e.dataset, e.split) != (entry.dataset, split)] + [entry]

    def start_fit(self, report: dict[str, Any]) -> None:
        """A new fit: its report replaces the old one, and metrics of the previous fit no longer apply."""
        self.fit = dict(report)
        self.evaluations = []

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for adapters that save their record beside the weights)."""
        return {**dataclasses.asdict(self), "evaluations": [e.as_dict() for e in self.evaluations]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        fields = {f.name for f in dataclasses.fields(cls)}
        record = cls(**{k: v for k, v in data.items() if k in fields and k != "evaluations"})
        for ev in data.get("evaluations") or []:
            record.add_evaluation(ev.get("dataset"), ev.get("split", "test"), ev.get("examples", 0), ev["metrics"])
        return record

    def card_data(self, name: str) -> ModelCardData:
        """The card's Hub metadata."""
        results = [
            EvalResult(
                task_type="text-classification",
                task_name="Text Classification",
                dataset_type=ev.dataset,
                dataset_name=ev.dataset,
                dataset_split=ev.split,
                metric_type=metric,
                metric_value=round(float(value), 4),
            )
            for ev in self.evaluations
            for metric, value in ev.metrics.items()
            if isinstance(value, (int, float))
        ]
        return ModelCardData(
            library_name=self.library_name,
            base_model=self.base_model or None,
            pipeline_tag="text-classification",
            tags=["peft-dect", *self.tags, "few-shot", "text-classification"],
            model_name=name if results else None,
            eval_results=results or None,
        )

    def evaluation_text(self) -> str:
        if not self.evaluations:
            return "Not evaluated yet: run `model.evaluate(dataset, name=..., split=...)` before saving."
        return "\n".join(
            f"- {ev.dataset} ({ev.split}, {ev.examples} examples): "
            + ", ".join(f"{k} {100 * float(v):.1f}" for k, v in ev.metrics.items() if isinstance(v, (int, float)))
            for ev in self.evaluations
        )


def versions() -> dict[str, str]:
    """Installed versions of peft-dect and the libraries its saves depend on, for the card."""
    out = {}
    for package in PACKAGES:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "unknown"
    return out


def render_card(record: RunRecord, *, repo: str | None = None, **fields: Any) -> str:
    """The README.md of a saved classifier: metadata, method text, prompt, training, evaluation, how to load it.

    `fields` fill the method's own placeholders of its template (e.g. `decoder_dim` for DecT).
    """
    base = record.base_model or "unknown"
    name = repo or f"{record.card.replace('_', '-')}-{base.rstrip('/').split('/')[-1]}"
    template = importlib.resources.files("peft_dect.model_cards").joinpath(f"{record.card}.md").read_text()
    installed = versions()
    values = {
        "metadata": record.card_data(name).to_yaml().strip(),
        "title": name,
        "base_model": base,
        "template": record.template,
        "label_word_rows": "\n".join(f"| {c} | {', '.join(w)} |" for c, w in record.label_words.items()),
        "training": record.training or "Not trained in this session.",
        "evaluation": record.evaluation_text(),
        "repo": repo or "path/to/adapter",
        "peft_dect_version": installed["peft-dect"],
        "peft_version": installed["peft"],
        "transformers_version": installed["transformers"],
        **fields,
    }
    return string.Template(template).substitute(values)


def card_is_ours(path: str | os.PathLike) -> bool:
    """Whether a README.md may be (over)written: absent, written by peft-dect, or peft's generic placeholder card.

    A card the user wrote is kept. A symbolic link is never followed: it counts as the user's.
    """
    if not os.path.lexists(path):
        return True
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    return MARKER in text or PEFT_GENERIC_CARD in text


def write_card(path: str | os.PathLike, text: str) -> bool:
    """Write a card unless the README there is the user's; True if written."""
    if not card_is_ours(path):
        return False
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return True
