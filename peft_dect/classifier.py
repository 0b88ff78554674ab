"""A language model (bare or wrapped by PEFT) as a trainable classifier over label words at the prediction position.

This is the shared head of the methods that train the model itself rather than a decoder on frozen features:
LM-BFF's prompt-based fine-tuning (all weights or LoRA) and prompt tuning (a PEFT soft prompt). The class scores are
the label words' log-probabilities at the mask (masked LM) or at the end of the prompt (causal LM), exactly as in
DecT's zero-shot term, so the same template and label words give the same zero-shot classifier before training.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .backbone import Backbone, unwrap_peft
from .data import read_labels, read_texts
from .prompting import Template, Verbalizer


logger = logging.getLogger(__name__)

CONFIG_NAME = "label_word_classifier.json"
FORMAT_VERSION = 1


class LabelWordClassifier(nn.Module):
    """Classify by the label words' log-probabilities that `model` gives at the prediction position of the template.

    `model` is a transformers masked or causal LM, or a `peft.PeftModel` around one (LoRA, prompt tuning, ...): the
    `transformers.Trainer` then updates whatever is trainable in it (all weights, LoRA matrices, a soft prompt).
    `forward(input_ids, attention_mask, labels)` returns class logits (N, C) and the cross-entropy over classes;
    build its inputs with `prepare_dataset` and pass `collate` as the Trainer's data collator.
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
        multi_token: str = "first",
        text_column: str | None = None,
        text_pair_column: str | None = None,
        label_column: str = "label",
        batch_size: int = 16,
        show_progress: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        template = template if isinstance(template, Template) else Template(template)
        verbalizer = Verbalizer.from_words(
            label_words,
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
        self.settings = {
            "template": template.text,
            "label_words": {c: list(w) for c, w in zip(verbalizer.classes, verbalizer.words)},
            "max_length": max_length,
            "label_word_aggregation": label_word_aggregation,
            "multi_token": multi_token,
            "text_column": text_column,
            "text_pair_column": text_pair_column,
            "label_column": label_column,
        }

    # ---------------------------------------------------------------- what it classifies into
    @property
    def classes(self) -> tuple[str, ...]:
        return self.backbone.verbalizer.classes

    @property
    def template(self) -> Template:
        return self.backbone.template

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

    def _texts(self, data) -> tuple[list[str], list[str] | None]:
        texts_a, texts_b = read_texts(
            data,
            needs_pair=self.template.is_pair,
            text_column=self.settings["text_column"],
            text_pair_column=self.settings["text_pair_column"],
        )
        if not texts_a:
            raise ValueError("The data is empty: give at least one input.")
        return texts_a, texts_b

    def encode_labels(self, data) -> list:
        """Training targets of `data` (class indices), checked to match its texts one for one."""
        labels = read_labels(data, self.classes, self.settings["label_column"])
        texts, _ = self._texts(data)
        if len(texts) != labels.numel():
            raise ValueError(f"The data has {len(texts)} texts but {labels.numel()} labels; give one label per text.")
        return labels.tolist()

    def prepare_dataset(self, dataset):
        """Prompted, tokenised copy of `dataset` for `transformers.Trainer`: input_ids, attention_mask, labels."""
        import datasets

        texts_a, texts_b = self._texts(dataset)
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
        texts_a, texts_b = self._texts(inputs)
        ids = self.backbone.tokenize(texts_a, texts_b)
        show = self.show_progress if show_progress is None else show_progress
        feats = self.backbone._run(ids, "predict", show=show)
        feats.check_finite(texts=texts_a)
        return feats.label_logits

    def predict_proba(self, inputs, *, show_progress: bool | None = None) -> np.ndarray:
        """Class probabilities (N, C), columns in the order of `label_words`."""
        return torch.softmax(self.predict_logits(inputs, show_progress=show_progress), -1).numpy()

    def predict(self, inputs, *, show_progress: bool | None = None) -> list[str]:
        """Predicted class names."""
        logits = self.predict_logits(inputs, show_progress=show_progress)
        return [self.classes[i] for i in logits.argmax(-1).tolist()]

    def evaluate(self, dataset, *, show_progress: bool | None = None) -> dict[str, float]:
        """Accuracy on a labelled dataset."""
        labels = torch.tensor(self.encode_labels(dataset))
        pred = self.predict_logits(dataset, show_progress=show_progress).argmax(-1)
        return {"accuracy": float((pred == labels).float().mean())}

    # ---------------------------------------------------------------- saving and loading
    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Save the trained weights (a PEFT adapter, or the whole model after full fine-tuning) and the settings.

        Weights are written with safetensors only; the settings (template, label words) go to
        `label_word_classifier.json` beside them. The files are written into a hidden folder next to the target and
        then moved in, so an interrupted save leaves a previous save intact.
        """
        from .peft_model import staged_folder

        kwargs.setdefault("safe_serialization", True)
        if not kwargs["safe_serialization"]:
            raise ValueError("peft-dect saves weights with safetensors only (safe_serialization=True).")
        with staged_folder(save_directory) as staging:
            self._save_files(staging, **kwargs)

    def _save_files(self, directory: str, **kwargs: Any) -> None:
        """Write the classifier's files into `directory` (subclasses add theirs after calling this)."""
        self.model.save_pretrained(directory, **kwargs)
        with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as fh:
            json.dump({"format_version": FORMAT_VERSION, **self.settings}, fh, indent=2)
        from .prompt_tuning import write_prompt_cards

        write_prompt_cards(self.model, directory, self.settings)  # soft prompts: their card and init

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
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not readable JSON ({err}); save the classifier again.") from None
        if not isinstance(settings, dict) or "template" not in settings or "label_words" not in settings:
            raise ValueError(f"{path} lacks the template or the label words; save the classifier again.")
        version = settings.pop("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(
                f"{path} was written by a newer peft-dect (format {version}, this one reads up to {FORMAT_VERSION}); "
                "upgrade peft-dect."
            )
        return settings

    @classmethod
    def from_pretrained(cls, model: nn.Module, tokenizer, directory: str, **kwargs: Any) -> LabelWordClassifier:
        """Rebuild a saved classifier on `model`.

        If `directory` holds a PEFT adapter, `model` is the base model and the adapter is loaded onto it (its folder
        is checked first: safetensors only). After full fine-tuning pass the model loaded from `directory` itself,
        e.g. ``AutoModelForCausalLM.from_pretrained(directory)``.
        """
        from peft import PeftModel

        from .peft_model import check_adapter_folder

        settings = cls.read_settings(directory)
        if os.path.isfile(os.path.join(directory, "adapter_config.json")):
            if isinstance(model, PeftModel):
                raise TypeError("Pass the base model (not a PeftModel): the saved adapter is loaded onto it.")
            check_adapter_folder(directory)
            from .prompt_tuning import check_prompt_adapter, read_prompt_init

            check_prompt_adapter(model, directory, required=False)  # a soft prompt of another width: clear error
            model = PeftModel.from_pretrained(unwrap_peft(model), directory, **kwargs)
            read_prompt_init(model, directory)
        return cls(model, tokenizer, **settings)
