"""LM-BFF prompt-based fine-tuning: a `LabelWordClassifier` whose LM (all of it, or a LoRA adapter) is trained.

The head is the label words' log-probabilities at the prediction position, so before any step the model is the
zero-shot prompt classifier; training moves the LM so that the right label word wins. Regression (STS-B)
interpolates between a low and a high word, as in LM-BFF's `models.py`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer, TrainerCallback

from ..backbone import Backbone
from ..cards import render_card, write_card
from ..classifier import LabelWordClassifier, compute_metrics, load_saved_model
from ..data import column_names
from ..metrics import metric_value
from ..prompting.demonstrations import Demonstrations
from ..saving import POOL_FILE, read_json_object
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
        settings = config.prompt_settings()
        template, words = settings.pop("template"), settings.pop("label_words")
        super().__init__(
            model, tokenizer, template, words, batch_size=batch_size, show_progress=show_progress, **settings
        )
        self.config = config
        self.demonstrations = None
        self.train_report: dict[str, Any] | None = None
        self.run_record.card = "lmbff"
        self.run_record.library_name = "peft" if config.tuning == "peft" else "transformers"
        kind = [self.peft_kind.lower()] if self.peft_kind else []
        self.run_record.tags = ["lm-bff", "prompt-based-fine-tuning", *kind]
        if config.demonstrations is not None:
            if train_dataset is None:
                raise ValueError(
                    "config.demonstrations is set: pass train_dataset=... (the labelled examples demonstrations are "
                    "drawn from) to LMBFFModel."
                )
            self.use_demonstrations(train_dataset)

    # ---------------------------------------------------------------- demonstrations
    @property
    def peft_kind(self) -> str:
        """The peft type of the trained adapter ('LORA', ...), empty for full fine-tuning."""
        peft_config = self.config.peft_config
        return str(getattr(peft_config.peft_type, "value", peft_config.peft_type)) if peft_config else ""

    def use_demonstrations(self, train_dataset) -> None:
        """Draw demonstrations from `train_dataset` (settings from `config.demonstrations`) for every input."""
        texts_a, texts_b = self.prompt.read_texts(train_dataset)
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
            texts_a, texts_b, labels, self.template, words, **cfg.demonstrations.sampler_options(0)
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
        texts_a, texts_b = self.prompt.read_texts(inputs)
        show = self.show_progress if show_progress is None else show_progress
        runs = [
            self.backbone.run(self.backbone.tokenize(texts_a, texts_b, s), f"predict (set {s + 1}/{sets})", show=show)
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

    def read_targets(self, data):
        """Class indices (classification) or float targets within `regression_bounds` (regression)."""
        column = self.config.label_column
        if not self.config.is_regression:
            if column in column_names(data) and any(
                isinstance(v, float) and not float(v).is_integer() for v in data[column]
            ):
                raise ValueError(
                    f"The label column {column!r} holds float values (e.g. STS-B similarity scores), but this "
                    "LMBFFConfig is a classifier. For regression set regression_bounds=(lb, ub) and two label words "
                    "(low first, high second); for classification give class names or integer labels."
                )
            return super().read_targets(data)
        if column not in column_names(data):
            raise ValueError(f"The label column {column!r} is not in the data (columns: {column_names(data)}).")
        lb, ub = self.config.regression_bounds
        out = []
        for row, value in enumerate(data[column]):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
                raise ValueError(f"Row {row} has target {value!r}; regression needs a finite number per row.")
            if not lb <= float(value) <= ub:
                raise ValueError(f"Row {row} has target {value}, outside regression_bounds ({lb:g}, {ub:g}).")
            out.append(float(value))
        texts, _ = self.prompt.read_texts(data)
        if len(texts) != len(out):
            raise ValueError(f"The data has {len(texts)} texts but {len(out)} targets; give one target per text.")
        return torch.tensor(out)

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the label words, or LM-BFF's KL loss against ``[1 - t, t]`` for regression."""
        if self.config.is_regression:
            return regression_loss(logits, labels, self.config.regression_bounds)
        if labels.is_floating_point():
            raise ValueError("Classification needs integer class labels; got float targets (regression?).")
        return super().compute_loss(logits, labels)

    # ---------------------------------------------------------------- prediction
    @property
    def default_metrics(self) -> tuple[str, ...]:
        return ("pearson", "spearman") if self.config.is_regression else ("accuracy",)

    def decide(self, logits: torch.Tensor) -> list:
        """Class names, or floats in `regression_bounds` for regression."""
        if not self.config.is_regression:
            return super().decide(logits)
        return regression_prediction(logits, self.config.regression_bounds).tolist()

    def score(self, logits: torch.Tensor, targets, metric=None) -> dict[str, float]:
        """The task metric(s): accuracy by default, Pearson and Spearman correlation for regression."""
        if not self.config.is_regression:
            return super().score(logits, targets, metric)
        pred = regression_prediction(logits, self.config.regression_bounds).numpy()
        return compute_metrics(metric, self.default_metrics, pred, np.asarray(targets))

    def trainer_metrics(self, metric: str | None = None):
        """A `compute_metrics` function for `transformers.Trainer` evaluations (the task metric of the logits)."""
        bounds = self.config.regression_bounds

        def compute(eval_pred) -> dict[str, float]:
            logits = torch.as_tensor(np.asarray(eval_pred.predictions))
            refs = np.asarray(eval_pred.label_ids)
            if bounds is not None:
                pred = regression_prediction(logits, bounds).numpy()
                return {m: metric_value(m, pred, refs) for m in ([metric] if metric else ["pearson", "spearman"])}
            return {metric or "accuracy": metric_value(metric or "accuracy", logits.argmax(-1).numpy(), refs)}

        return compute

    # ---------------------------------------------------------------- saving and loading
    def model_card(self) -> str:
        """The README.md of the classifier, from its run record."""
        config, record = self.config, self.run_record
        if config.tuning == "peft":
            tuning = (
                f"only a {self.peft_kind} adapter was trained (this repository holds the adapter, the base model is "
                "frozen)."
            )
            load = 'model = LMBFFModel.from_pretrained("path/to/model", base_model=base_model, tokenizer=tokenizer)'
        else:
            tuning = "every parameter of the model was fine-tuned, as in the paper (this repository holds the model)."
            load = 'model = LMBFFModel.from_pretrained("path/to/model")'
        if config.is_regression:
            lb, ub = config.regression_bounds
            task = (
                f"Regression: the prediction is `{lb:g} + {ub - lb:g} * p({config.classes[1]})`, interpolating "
                "between the two label words."
            )
        else:
            task = "Classification: the class is the one whose label words are most likely at the prediction position."
        if config.demonstrations is not None:
            task += f" Every input carries demonstrations from the training set ({config.demonstrations})."
        if self.train_report:
            items = ", ".join(f"{k} {v}" for k, v in self.train_report.items())
            record.training = f"Trained with the transformers Trainer: {items}."
        return render_card(record, tuning_sentence=tuning, task_sentence=task, load_line=load)

    def save_files(self, save_directory: str, **kwargs: Any) -> None:
        """Write the adapter (LoRA) or the whole model (full fine-tuning) with safetensors, the config and a card.

        With demonstrations the pool they are drawn from is saved too (`demonstration_pool.json`), so that a
        loaded model renders the same prompts. `save_pretrained` (inherited) stages these files and moves them in.
        """
        super().save_files(save_directory, **kwargs)
        self.tokenizer.save_pretrained(save_directory)
        self.config.save_pretrained(save_directory)
        if self.demonstrations is not None:
            with open(os.path.join(save_directory, POOL_FILE), "w", encoding="utf-8") as fh:
                json.dump(self.pool, fh)
        write_card(os.path.join(save_directory, "README.md"), self.model_card())

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
            model = load_saved_model(base_model, directory, is_trainable=True)
        else:
            model = load_full_model(directory, base_model)
        pool = None
        if config.demonstrations is not None:
            path = os.path.join(directory, POOL_FILE)
            if not os.path.isfile(path):
                raise ValueError(f"{directory} uses demonstrations but has no {POOL_FILE}; save the model again.")
            pool = read_json_object(path, "demonstration pool")
        return cls(model, tokenizer, config, train_dataset=pool, batch_size=batch_size, show_progress=show_progress)


def load_full_model(directory: str, base_model: nn.Module | None) -> nn.Module:
    """A fully fine-tuned masked or causal LM saved in `directory` (safetensors only)."""
    if base_model is not None:
        raise ValueError(
            f"{directory} holds a fully fine-tuned model, which is loaded from the folder itself; do not pass "
            "base_model."
        )
    if not os.path.isfile(os.path.join(directory, "model.safetensors")) and not any(
        f.startswith("model-") and f.endswith(".safetensors") for f in os.listdir(directory)
    ):
        raise ValueError(f"{directory} has no model.safetensors; peft-dect loads weights from safetensors only.")
    auto_config = AutoConfig.from_pretrained(directory)
    is_causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in auto_config.architectures or [])
    auto = AutoModelForCausalLM if is_causal else AutoModelForMaskedLM
    return auto.from_pretrained(directory, use_safetensors=True)


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
