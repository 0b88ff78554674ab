"""LM-BFF prompt-based fine-tuning: a `LabelWordClassifier` whose LM (all of it, or a LoRA adapter) is trained.

The head is the label words' log-probabilities at the prediction position, so before any step the model is the
zero-shot prompt classifier; training moves the LM so that the right label word wins. Regression (STS-B)
interpolates between a low and a high word, as in LM-BFF's `models.py`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainerCallback

from ..backbone import Backbone, unwrap_peft
from ..classifier import LabelWordClassifier
from ..data import _columns
from ..tasks import metric_value as compute_metric
from .config import LMBFFConfig


logger = logging.getLogger(__name__)


def regression_targets(values: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """(N, 2) target distributions ``[1 - t, t]`` over (low word, high word), ``t = (y - lb) / (ub - lb)``."""
    lb, ub = bounds
    t = (values.float() - lb) / (ub - lb)
    return torch.stack([1 - t, t], dim=-1)


def regression_loss(logits: torch.Tensor, values: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """KL(target || p) between ``[1 - t, t]`` and the softmax over the two label words, averaged over the batch.

    LM-BFF computes this with ``nn.KLDivLoss(log_target=True)`` on probabilities (not log-probabilities) and a mean
    over both columns; the divergence itself, as here, is what its paper describes and has the same minimiser.
    """
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return F.kl_div(log_p, regression_targets(values, bounds).to(log_p), reduction="batchmean")


def regression_prediction(logits: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """``lb + (ub - lb) * p_high``: the expected value under the two label words' distribution."""
    lb, ub = bounds
    return lb + (ub - lb) * torch.softmax(logits.float(), dim=-1)[:, 1]


class LMBFFModel(LabelWordClassifier):
    """Prompt-based fine-tuning (LM-BFF) of a masked or causal LM, with LoRA (or any peft config) or all weights.

    >>> model = LMBFFModel(base_model, tokenizer, LMBFFConfig(template=..., label_words=..., peft_config=LoraConfig()))
    >>> Trainer(model, args, train_dataset=model.prepare_dataset(train), data_collator=model.collate).train()
    >>> model.predict(["a gorgeous, moving film"])

    With `config.peft_config` the base model is wrapped by `peft.get_peft_model` and only the adapter trains (a
    PeftModel that already carries the adapter is used as it is); with None every parameter trains (the paper's
    setting). `train_dataset` is the demonstration pool when `config.demonstrations` is set.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        config: LMBFFConfig,
        *,
        train_dataset=None,
        batch_size: int = 16,
        show_progress: bool = True,
    ) -> None:
        from peft import PeftModel, get_peft_model

        if not isinstance(config, LMBFFConfig):
            raise TypeError(f"config must be an LMBFFConfig, got {type(config).__name__}.")
        if config.peft_config is None:
            if isinstance(model, PeftModel):
                raise TypeError(
                    "config.peft_config is None, which fine-tunes every weight: pass the bare transformers model, "
                    "not a PeftModel (or set peft_config to train an adapter)."
                )
            model.requires_grad_(True)
        elif not isinstance(model, PeftModel):
            model = get_peft_model(model, copy.deepcopy(config.peft_config))
        super().__init__(
            model,
            tokenizer,
            config.template,
            config.label_words,
            max_length=config.max_length,
            label_word_aggregation=config.label_word_aggregation,
            multi_token=config.multi_token,
            text_column=config.text_column,
            text_pair_column=config.text_pair_column,
            label_column=config.label_column,
            batch_size=batch_size,
            show_progress=show_progress,
        )
        self.config = config
        self.demonstrations = None
        self.train_report: dict[str, Any] | None = None
        self.evaluations: list[dict[str, Any]] = []
        if config.demonstrations is not None:
            if train_dataset is None:
                raise ValueError(
                    "config.demonstrations is set: pass train_dataset=... (the labelled examples demonstrations are "
                    "drawn from) to LMBFFModel."
                )
            self.use_demonstrations(train_dataset)

    # ---------------------------------------------------------------- demonstrations
    def use_demonstrations(self, train_dataset) -> None:
        """Draw demonstrations from `train_dataset` (settings from `config.demonstrations`) for every input."""
        from ..prompting.demonstrations import Demonstrations

        texts_a, texts_b = self._texts(train_dataset)
        labels = self.encode_labels(train_dataset)
        cfg = self.config
        self.pool = {cfg.text_column or "text_a": texts_a, cfg.label_column: list(labels)}
        if texts_b is not None:
            self.pool[cfg.text_pair_column or "text_b"] = texts_b
        if cfg.is_regression:  # LM-BFF: a score above the middle of the range is a "high" demonstration
            lb, ub = cfg.regression_bounds
            labels = [int(y > (lb + ub) / 2) for y in labels]
        words = {c: list(w) for c, w in zip(self.classes, self.backbone.verbalizer.words)}
        self.demonstrations = Demonstrations(
            texts_a, texts_b, labels, self.template, words, **(self.config.demonstrations or {})
        )
        previous = self.backbone
        self.backbone = Backbone(
            self.model,
            self.tokenizer,
            previous.template,
            previous.verbalizer,
            max_length=self.config.max_length,
            batch_size=previous.batch_size,
            show_progress=False,
            demonstrations=self.demonstrations,
        )

    def predict_logits(self, inputs, *, show_progress: bool | None = None) -> torch.Tensor:
        """Class logits (N, C); with demonstrations, the mean over the configured number of demonstration sets."""
        sets = self.demonstrations.num_sets if self.demonstrations is not None else 1
        if sets == 1:
            return super().predict_logits(inputs, show_progress=show_progress)
        texts_a, texts_b = self._texts(inputs)
        show = self.show_progress if show_progress is None else show_progress
        runs = [
            self.backbone._run(self.backbone.tokenize(texts_a, texts_b, s), f"predict (set {s + 1}/{sets})", show=show)
            for s in range(sets)
        ]
        return torch.stack([r.label_logits for r in runs]).mean(0)

    # ---------------------------------------------------------------- targets and loss
    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs: Any):
        """Class logits and loss (see `LabelWordClassifier.forward`); training batches are counted for the card."""
        if self.training and labels is not None:
            report = (
                self.train_report if self.train_report is not None else {"training batches": 0, "examples seen": 0}
            )
            report["training batches"] += 1
            report["examples seen"] += int(labels.shape[0])
            self.train_report = report
        return super().forward(input_ids, attention_mask, labels, **kwargs)

    def encode_labels(self, data) -> list:
        """Class indices (classification) or float targets within `regression_bounds` (regression)."""
        column = self.config.label_column
        if not self.config.is_regression:
            if column in _columns(data) and any(
                isinstance(v, float) and not float(v).is_integer() for v in data[column]
            ):
                raise ValueError(
                    f"The label column {column!r} holds float values (e.g. STS-B similarity scores), but this "
                    "LMBFFConfig is a classifier. For regression set regression_bounds=(lb, ub) and two label words "
                    "(low first, high second); for classification give class names or integer labels."
                )
            return super().encode_labels(data)
        if column not in _columns(data):
            raise ValueError(f"The label column {column!r} is not in the data (columns: {_columns(data)}).")
        lb, ub = self.config.regression_bounds
        out = []
        for row, value in enumerate(data[column]):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
                raise ValueError(f"Row {row} has target {value!r}; regression needs a finite number per row.")
            if not lb <= float(value) <= ub:
                raise ValueError(f"Row {row} has target {value}, outside regression_bounds ({lb:g}, {ub:g}).")
            out.append(float(value))
        texts, _ = self._texts(data)
        if len(texts) != len(out):
            raise ValueError(f"The data has {len(texts)} texts but {len(out)} targets; give one target per text.")
        return out

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the label words, or LM-BFF's KL loss against ``[1 - t, t]`` for regression."""
        if self.config.is_regression:
            return regression_loss(logits, labels, self.config.regression_bounds)
        if labels.is_floating_point():
            raise ValueError("Classification needs integer class labels; got float targets (regression?).")
        return super().compute_loss(logits, labels)

    # ---------------------------------------------------------------- prediction
    def predict(self, inputs, *, show_progress: bool | None = None) -> list:
        """Class names, or floats in `regression_bounds` for regression."""
        if not self.config.is_regression:
            return super().predict(inputs, show_progress=show_progress)
        logits = self.predict_logits(inputs, show_progress=show_progress)
        return regression_prediction(logits, self.config.regression_bounds).tolist()

    def evaluate(
        self,
        dataset,
        *,
        metric: str | None = None,
        name: str | None = None,
        split: str = "test",
        show_progress: bool | None = None,
    ) -> dict[str, float]:
        """The task metric(s) on a labelled dataset (accuracy by default; Pearson and Spearman for regression).

        Recorded, with `name` and `split`, for the model card.
        """
        targets = self.encode_labels(dataset)
        logits = self.predict_logits(dataset, show_progress=show_progress)
        if self.config.is_regression:
            pred = regression_prediction(logits, self.config.regression_bounds).numpy()
            names = [metric] if metric else ["pearson", "spearman"]
        else:
            pred = logits.argmax(-1).numpy()
            names = [metric or "accuracy"]
        metrics = {m: compute_metric(m, pred, targets) for m in names}
        record = {"dataset": name or "evaluation data", "split": split, "examples": len(targets), "metrics": metrics}
        self.evaluations = [e for e in self.evaluations if (e["dataset"], e["split"]) != (record["dataset"], split)]
        self.evaluations.append(record)
        return metrics

    def trainer_metrics(self, metric: str | None = None):
        """A `compute_metrics` function for `transformers.Trainer` evaluations (the task metric of the logits)."""
        bounds = self.config.regression_bounds

        def compute(eval_pred) -> dict[str, float]:
            logits = torch.as_tensor(np.asarray(eval_pred.predictions))
            refs = np.asarray(eval_pred.label_ids)
            if bounds is not None:
                pred = regression_prediction(logits, bounds).numpy()
                return {m: compute_metric(m, pred, refs) for m in ([metric] if metric else ["pearson", "spearman"])}
            return {metric or "accuracy": compute_metric(metric or "accuracy", logits.argmax(-1).numpy(), refs)}

        return compute

    # ---------------------------------------------------------------- saving and loading
    @property
    def base_model_name(self) -> str | None:
        name = getattr(unwrap_peft(self.model).config, "_name_or_path", None)
        return name or None

    def _save_files(self, save_directory: str, **kwargs: Any) -> None:
        """Write the adapter (LoRA) or the whole model (full fine-tuning) with safetensors, the config and a card.

        With demonstrations the pool they are drawn from is saved too (`demonstration_pool.json`), so that a
        loaded model renders the same prompts. `save_pretrained` (inherited) stages these files and moves them in.
        """
        import json

        from ..cards import MARKER, render_lmbff_card

        super()._save_files(save_directory, **kwargs)
        self.tokenizer.save_pretrained(save_directory)
        self.config.save_pretrained(save_directory)
        if self.demonstrations is not None:
            with open(os.path.join(save_directory, POOL_NAME), "w", encoding="utf-8") as fh:
                json.dump(self.pool, fh)
        card = os.path.join(save_directory, "README.md")
        keep = False
        if os.path.exists(card):
            with open(card, encoding="utf-8") as fh:
                text = fh.read()
            # peft writes its own generic card during save_pretrained; a card the user wrote has neither marker
            keep = MARKER not in text and "library_name: peft" not in text and "base_model:" not in text
        if not keep:
            with open(card, "w", encoding="utf-8") as fh:
                fh.write(
                    render_lmbff_card(
                        self.config,
                        base_model=self.base_model_name,
                        training=self.train_report,
                        evaluations=self.evaluations,
                    )
                )

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        directory: str,
        *,
        base_model: nn.Module | None = None,
        tokenizer=None,
        batch_size: int = 16,
        show_progress: bool = True,
    ) -> LMBFFModel:
        """Load a model saved by `save_pretrained`.

        A LoRA (peft) save needs `base_model` (the model it was trained on); a full fine-tuning save is a complete
        transformers model and is loaded from `directory` (safetensors). `tokenizer` defaults to the one saved in
        `directory`, if any.
        """
        import json

        from peft import PeftModel
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

        from ..peft_model import check_adapter_folder

        directory = str(directory)
        config = LMBFFConfig.from_pretrained(directory)
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(directory)
            except (OSError, ValueError):
                raise ValueError(f"{directory} holds no tokenizer: pass tokenizer=... (the base model's).") from None
        if config.tuning == "peft":
            if base_model is None:
                raise ValueError(
                    f"{directory} holds a {config.peft_config.peft_type} adapter: pass base_model=... (the model it "
                    f"was trained on, {config.peft_config.base_model_name_or_path or 'see its card'})."
                )
            if isinstance(base_model, PeftModel):
                raise TypeError("Pass the base model (not a PeftModel): the saved adapter is loaded onto it.")
            check_adapter_folder(directory)
            model = PeftModel.from_pretrained(base_model, directory, is_trainable=True)
        else:
            if base_model is not None:
                raise ValueError(
                    f"{directory} holds a fully fine-tuned model, which is loaded from the folder itself; "
                    "do not pass base_model."
                )
            if not os.path.isfile(os.path.join(directory, "model.safetensors")) and not any(
                f.startswith("model-") and f.endswith(".safetensors") for f in os.listdir(directory)
            ):
                raise ValueError(
                    f"{directory} has no model.safetensors; peft-dect loads weights from safetensors only."
                )
            auto_config = AutoConfig.from_pretrained(directory)
            is_causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in auto_config.architectures or [])
            auto = AutoModelForCausalLM if is_causal else AutoModelForMaskedLM
            model = auto.from_pretrained(directory, use_safetensors=True)
        pool = None
        if config.demonstrations is not None:
            path = os.path.join(directory, POOL_NAME)
            if not os.path.isfile(path):
                raise ValueError(f"{directory} uses demonstrations but has no {POOL_NAME}; save the model again.")
            with open(path, encoding="utf-8") as fh:
                pool = json.load(fh)
        return cls(model, tokenizer, config, train_dataset=pool, batch_size=batch_size, show_progress=show_progress)


POOL_NAME = "demonstration_pool.json"


class BestOnDevCallback(TrainerCallback):
    """Keep the trainable weights of the best dev evaluation and restore them when training ends.

    LM-BFF evaluates on dev every few steps and keeps the best checkpoint; this does it in memory (a LoRA adapter
    is a few hundred kilobytes), so no checkpoint is written to disk.
    """

    def __init__(self, metric: str = "accuracy") -> None:
        self.metric = metric
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.history: dict[int, float] = {}
        self._state: dict[str, torch.Tensor] | None = None

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        value = (metrics or {}).get(f"eval_{self.metric}")
        if value is None or model is None:
            return
        self.history[int(state.global_step)] = float(value)
        if self.best_value is None or value > self.best_value:
            self.best_value, self.best_step = float(value), int(state.global_step)
            self._state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._state is None or model is None:
            return
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, value in self._state.items():
                params[name].copy_(value)
        report = getattr(model, "train_report", None)
        if isinstance(report, dict):
            report[f"kept the best dev {self.metric}"] = f"{self.best_value:.4f} (step {self.best_step})"
        logger.info("Restored the weights of step %d (dev %s %.4f).", self.best_step, self.metric, self.best_value)
