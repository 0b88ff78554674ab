"""Prompt adapters on disk and beside DecT: checks before loading, the recorded init, model cards."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from peft import PeftModel, PromptTuningConfig
from torch import nn

from .init import INITS, _prompt_config


SOFT_PROMPT_FOLDER = "soft_prompt"
"""Subfolder of a saved DecT adapter that holds the soft prompt its features are read with."""
INIT_FILE = "prompt_init.json"


def check_prompt_adapter(model: nn.Module, folder: str | os.PathLike, *, required: bool = True) -> None:
    """Refuse, with a clear ValueError, a saved prompt-tuning adapter whose prompt width differs from the model's.

    With `required=False` a folder holding another kind of adapter passes unchecked.
    """
    path = os.path.join(str(folder), "adapter_config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{folder} has no adapter_config.json: it is not a saved adapter (use save_pretrained).")
    with open(path, encoding="utf-8") as fh:
        saved = json.load(fh)
    if saved.get("peft_type") != "PROMPT_TUNING":
        if not required:
            return
        raise ValueError(f"{folder} holds a {saved.get('peft_type')} adapter, not a prompt-tuning one.")
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    width = base.get_input_embeddings().weight.shape[1]
    if saved.get("token_dim") not in (None, width):
        raise ValueError(
            f"The soft prompt in {folder} has {saved['token_dim']}-dimensional tokens, but "
            f"{type(base).__name__} embeds tokens in {width} dimensions: load it onto the base model it was trained "
            f"with ({saved.get('base_model_name_or_path') or 'see its card'})."
        )


def check_prompt_model(prompt_model, base_model: nn.Module | None = None) -> None:
    """Refuse anything but a PEFT prompt-tuning model that prepends its prompt (on `base_model`, if given)."""
    if not isinstance(prompt_model, PeftModel):
        raise TypeError(
            f"Expected a PEFT prompt-tuning model, got {type(prompt_model).__name__}: wrap the LM with "
            "get_prompt_tuning_model(...) or peft.get_peft_model(lm, PromptTuningConfig(...))."
        )
    config = _prompt_config(prompt_model, prompt_model.active_adapter)
    if getattr(config.task_type, "value", config.task_type) not in ("CAUSAL_LM", "FEATURE_EXTRACTION"):
        raise ValueError(
            f"The prompt-tuning adapter has task_type={config.task_type!r}, under which PEFT does not prepend the "
            "prompt for a masked or causal LM; use prompt_tuning_config(model) (CAUSAL_LM or FEATURE_EXTRACTION)."
        )
    if base_model is not None and prompt_model.get_base_model() is not base_model:
        raise ValueError(
            "The prompt-tuning model wraps another copy of the base model: DecT reads features through the model it "
            "is attached to, so build both on the same base model object."
        )


def _adapter_folder(directory: str, name: str) -> str:
    return directory if name == "default" else os.path.join(directory, name)


def write_prompt_cards(peft_model, directory: str, settings: Mapping, evaluations: Mapping | None = None) -> None:
    """After a prompt-tuned classifier is saved: each prompt adapter's folder gets the init record and its card.

    Called by `LabelWordClassifier.save_pretrained`; PEFT's own generic card is replaced unless the user wrote one.
    """
    from ..cards import MARKER, render_prompt_tuning_card

    if not isinstance(peft_model, PeftModel):
        return
    for name, config in peft_model.peft_config.items():
        folder = _adapter_folder(directory, name)
        if not isinstance(config, PromptTuningConfig) or not os.path.isdir(folder):
            continue
        init = getattr(peft_model, "prompt_init", {}).get(name)
        if init is not None:
            with open(os.path.join(folder, INIT_FILE), "w", encoding="utf-8") as fh:
                json.dump(init, fh, indent=2)
        card_path = os.path.join(folder, "README.md")
        if os.path.exists(card_path):
            with open(card_path, encoding="utf-8") as fh:
                text = fh.read()
            if MARKER not in text and "# Model Card for Model ID" not in text:
                continue  # a card the user wrote (PEFT's generic one starts with that title)
        card = render_prompt_tuning_card(
            config,
            template=settings["template"],
            label_words=settings["label_words"],
            init=init,
            evaluations=list((evaluations or {}).get(name, [])),
        )
        with open(card_path, "w", encoding="utf-8") as fh:
            fh.write(card)


def read_prompt_init(peft_model, directory: str) -> None:
    """After loading a saved prompt adapter: remember its recorded init, for the card of a later save."""
    path = os.path.join(directory, INIT_FILE)
    if isinstance(peft_model, PeftModel) and os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            init = json.load(fh)
        if isinstance(init, dict) and init.get("init") in INITS:
            name = peft_model.active_adapter
            peft_model.prompt_init = {**getattr(peft_model, "prompt_init", {}), name: init}
