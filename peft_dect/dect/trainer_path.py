"""DecT's `transformers.Trainer` path: prompted datasets, their collation and the training forward.

`fit()` is the fast path; this one lets DecT train inside a `Trainer` like any PEFT model. `DecTTrainerPath` is
mixed into `DecTModel` and uses its public interface only: `lock`, `model`, `training`, `config_of_active`,
`core()`, `backbone()`, `state()`, `dect_layer` and `class_logits()`.
"""

from __future__ import annotations

import datasets
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import SequenceClassifierOutput

from .checks import check_label_token_ids
from .fit import shots_of
from .locking import serialized


class DecTTrainerPath:
    """`prepare_dataset`, `collate` and `forward` of a DecT model, for `transformers.Trainer`."""

    @serialized
    def prepare_dataset(self, dataset, tokenizer=None) -> datasets.Dataset:
        """Prompted, tokenised copy of `dataset` for `transformers.Trainer`: input_ids, attention_mask, labels.

        Also computes the content-free calibration and, unless `lam` is configured, sets lam = 1/shots from the
        labels of the first dataset prepared: prepare the training data first.
        """
        cfg = self.config_of_active
        if cfg.templates_averaged:
            raise ValueError(
                "This adapter averages its features over several templates (templates_averaged=True, chosen by an "
                "auto-mode fit), which the Trainer path's one tokenised prompt per row cannot carry: train it with "
                "fit(), or set templates_averaged=False and max_passes_per_input=1 and fit again for one template."
            )
        cfg.uncertainty = None  # a fit's calibration does not describe the decoder the Trainer is about to train
        cfg.thresholds = None  # nor do a multi-label fit's thresholds (0.5 until fit() chooses them again)
        core = self.core(tokenizer, refit=True)
        check_label_token_ids(cfg, core.source.verbalizer, record=True)
        texts_a, texts_b = cfg.read_texts(dataset)
        labels = cfg.read_labels(dataset)
        ids = core.source.tokenize(texts_a, texts_b)
        state = core.state
        if cfg.calibrate and state.content_free is None:
            core.features([], desc="calibration")
        if cfg.lam is None and not state.fitted and state.lam != state.lam:  # lam is NaN: not set yet
            state.lam = 1.0 / shots_of(labels, len(cfg.classes))
        columns = {"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids], "labels": labels.tolist()}
        return datasets.Dataset.from_dict(columns)

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Data collator for prepared datasets: pads input ids (right) and stacks labels."""
        batch = self.backbone().collate([list(r["input_ids"]) for r in rows])
        if "labels" in rows[0]:
            if isinstance(rows[0]["labels"], (list, tuple)):  # multi-hot targets of a multi-label adapter
                batch["labels"] = torch.tensor([list(r["labels"]) for r in rows], dtype=torch.float)
            else:
                batch["labels"] = torch.tensor([int(r["labels"]) for r in rows], dtype=torch.long)
        return batch

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs) -> SequenceClassifierOutput:
        """Class logits (and cross-entropy loss with `labels`; binary cross-entropy summed over the classes for the
        multi-hot labels of a multi-label adapter) for prompted inputs made by `prepare_dataset`.

        The frozen model runs without gradient; only the decoder (W, radii) trains. On the first training batch
        the radii get the paper's data-dependent initialisation.
        """
        if input_ids is None:
            raise ValueError("DecT's forward needs input_ids made by model.prepare_dataset(...).")
        bb = self.backbone()
        was_training = self.model.training
        self.model.eval()  # the frozen backbone gives deterministic features: no dropout, as in fit()
        try:
            with torch.no_grad():
                feats = bb.forward(input_ids, attention_mask)
        finally:
            self.model.train(was_training)
        feats.check_finite()  # a NaN here would silently poison the decoder's gradients
        state = self.state()
        if self.training and labels is not None and not state.fitted and not self.dect_layer.disable_adapters:
            state.start_training(feats.hidden, labels)
        logits = self.class_logits(feats)
        loss = None
        if labels is not None and labels.dim() == 2:  # multi-label: fit()'s loss, BCE summed over the classes
            target = labels.to(logits.device, logits.dtype)
            loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1).mean()
        elif labels is not None:
            loss = F.cross_entropy(logits, labels.to(logits.device))
        return SequenceClassifierOutput(loss=loss, logits=logits)
