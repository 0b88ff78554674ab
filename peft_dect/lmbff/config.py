"""Configuration of LM-BFF prompt-based fine-tuning (Gao, Fisch and Chen, ACL 2021).

Why a plain dataclass and not a new `PeftConfig`: prompt-based fine-tuning is not a new kind of adapter. It is a
*head* (the label-word logits of the LM head at the prediction position, instead of a new classifier layer) and
a choice of *which parameters train*. The head needs no weights of its own, and the parameters are exactly those of
a standard PEFT method (LoRA in the usual PEFT way) or of the whole model (as in the paper). So `LMBFFConfig` holds
the prompt (template, label words, demonstration settings, regression bounds) and composes an ordinary peft config
(`peft_config=LoraConfig(...)`) rather than re-implementing LoRA's injection under a new `PeftType`. What is saved
is therefore an ordinary LoRA adapter (loadable by `PeftModel.from_pretrained` on its own) or an ordinary
transformers model, plus `lmbff_config.json` with the prompt.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from peft import PeftConfig

from ..saving import read_json_object
from ..settings import DemonstrationConfig, PromptSettings
from ..tasks import get_task


CONFIG_NAME = "lmbff_config.json"
FULL, PEFT = "full", "peft"
REGRESSION_BOUNDS = {"STS-B": (0.0, 5.0)}  # LM-BFF's bound_mapping


@dataclass
class LMBFFConfig(PromptSettings):
    """Prompt-based fine-tuning: classify through label-word logits, train LoRA (or any PEFT method) or all weights.

    Classification: cross-entropy over the label-word log-probabilities at the prediction position (the mask token
    of a masked LM, the end of the prompt of a causal LM). Regression (`regression_bounds=(lb, ub)`, e.g. STS-B's
    (0, 5)): exactly two classes, the first the *low* word and the second the *high* word; a target `y` becomes the
    distribution ``[1 - t, t]`` with ``t = (y - lb) / (ub - lb)``, the loss is KL(target || p) over the two words and
    the prediction is ``lb + (ub - lb) * p_high``, as in LM-BFF.

    Args:
        template, label_words, label_word_aggregation, multi_token, max_length, text_column, text_pair_column,
            label_column: the prompt and the data columns (see `PromptSettings`); the label column holds the
            targets of a regression.
        peft_config: a peft config (e.g. `LoraConfig`) whose parameters train; None fine-tunes every parameter of
            the model, as the paper does.
        regression_bounds: (lb, ub) of a regression target (STS-B: (0, 5)); None for classification.
        demonstrations: LM-BFF demonstrations drawn from the training set (a `DemonstrationConfig` or a dict of its
            settings, e.g. ``{"num_sets": 4, "seed": 0}``); None: no demonstrations.
    """

    template: str = field(
        default="{text_a} It was {mask}.",
        metadata={"help": "Prompt with {text_a}, optional {text_b} and one {mask} where the label word goes."},
    )
    peft_config: Any = field(
        default=None,
        metadata={
            "help": "A peft config (e.g. LoraConfig) whose parameters train; None fine-tunes every parameter of the "
            "model, as the paper does."
        },
    )
    regression_bounds: tuple[float, float] | None = field(
        default=None,
        metadata={"help": "(lb, ub) of a regression target (STS-B: (0, 5)); None for classification."},
    )
    demonstrations: DemonstrationConfig | dict | None = field(
        default=None,
        metadata={
            "help": "LM-BFF demonstrations: a DemonstrationConfig or a dict of its settings (e.g. {'num_sets': 4, "
            "'seed': 0}); the training examples become the demonstration pool. None: no demonstrations."
        },
    )

    def __post_init__(self) -> None:
        self.check_prompt_settings()
        if self.peft_config is not None and not isinstance(self.peft_config, PeftConfig):
            raise TypeError(
                f"peft_config must be a peft config such as LoraConfig(...) or None (full fine-tuning), got "
                f"{type(self.peft_config).__name__}."
            )
        if self.regression_bounds is not None:
            bounds = tuple(self.regression_bounds)
            if len(bounds) != 2 or not all(isinstance(b, (int, float)) and math.isfinite(b) for b in bounds):
                raise ValueError(
                    f"regression_bounds must be two finite numbers (lb, ub), got {self.regression_bounds}."
                )
            if bounds[0] >= bounds[1]:
                raise ValueError(f"regression_bounds (lb, ub) needs lb < ub, got {bounds}.")
            if len(self.label_words) != 2:
                raise ValueError(
                    "Regression interpolates between two label words: give exactly two classes, the low one first, "
                    f"e.g. {{'low': ['No'], 'high': ['Yes']}}; got {list(self.label_words)}."
                )
            self.regression_bounds = (float(bounds[0]), float(bounds[1]))
        self.demonstrations = DemonstrationConfig.coerce(self.demonstrations)

    @classmethod
    def for_task(cls, task: str, *, kind: str = "causal", **kwargs: Any) -> LMBFFConfig:
        """The paper's manual template and label words for a task of `peft_dect.tasks` (columns `text_a`, `text_b`,
        `label` as `load_task` gives them); STS-B becomes a regression on LM-BFF's bounds (0, 5).

        `kind` is "causal" or "masked" (the causal form of a template ends at the mask); `kwargs` set or override
        any other field, e.g. ``peft_config=LoraConfig(...)``.
        """
        if kind not in ("causal", "masked"):
            raise ValueError(f"kind must be 'causal' or 'masked', got {kind!r}.")
        spec = get_task(task)
        settings: dict[str, Any] = {
            "template": spec.template_for(kind),
            "label_words": spec.label_words,
            "text_column": "text_a",
            "text_pair_column": "text_b",
        }
        if spec.regression:
            settings["regression_bounds"] = REGRESSION_BOUNDS.get(spec.name, (0.0, 5.0))
        settings.update(kwargs)
        return cls(**settings)

    @property
    def is_regression(self) -> bool:
        return self.regression_bounds is not None

    @property
    def tuning(self) -> str:
        """'peft' when a peft config chooses the trainable parameters, 'full' when every parameter trains."""
        return FULL if self.peft_config is None else PEFT

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings; the peft config is saved by peft itself (adapter_config.json), so only its kind."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "peft_config"}
        out["demonstrations"] = dataclasses.asdict(self.demonstrations) if self.demonstrations else None
        out["regression_bounds"] = list(self.regression_bounds) if self.regression_bounds else None
        out["tuning"] = self.tuning
        return out

    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2)  # key order = class order: never sort

    @classmethod
    def from_pretrained(cls, directory: str, peft_config=None) -> LMBFFConfig:
        """Read `lmbff_config.json` from a folder written by `save_pretrained`."""
        path = os.path.join(str(directory), CONFIG_NAME)
        if not os.path.isfile(path):
            raise ValueError(
                f"{directory} has no {CONFIG_NAME}: it was not saved by LMBFFModel.save_pretrained (a bare LoRA "
                "adapter has no template or label words; load it with PeftModel.from_pretrained instead)."
            )
        data = read_json_object(path, "LM-BFF config")
        tuning = data.pop("tuning", FULL)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path} has unknown settings {unknown}; it was written by a newer peft-dect?")
        if tuning == PEFT and peft_config is None:
            peft_config = PeftConfig.from_pretrained(str(directory))
        if data.get("regression_bounds") is not None:
            data["regression_bounds"] = tuple(data["regression_bounds"])
        return cls(**data, peft_config=peft_config)
