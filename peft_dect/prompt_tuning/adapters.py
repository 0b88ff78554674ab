"""Prompt adapters on disk and beside DecT: checks before loading, the recorded init, model cards.

`PromptAdapterHook` is what prompt tuning adds to label-word classifier folders (`peft_dect.classifier`'s hook of
the PROMPT_TUNING peft type): the width check before loading, and the init record and card after saving.
"""

from __future__ import annotations

import dataclasses
import json
import os

from peft import PeftModel, PromptTuningConfig
from torch import nn

from ..cards import RunRecord, render_card, write_card
from ..classifier import register_adapter_hook
from ..saving import CONFIG_FILE, check_adapter_folder, read_json_object
from .init import INITS, prompt_config


SOFT_PROMPT_FOLDER = "soft_prompt"
"""Subfolder of a saved DecT adapter that holds the soft prompt its features are read with."""
INIT_FILE = "prompt_init.json"
INIT_TEXT = {
    "class_label": "class-label init (Lester et al.): the first tokens are the embeddings of the label words (one "
    "token per word, sub-tokens averaged), the rest embeddings of tokens sampled from the 5000 most common",
    "sample_vocab": "sampled vocabulary: embeddings of tokens sampled from the 5000 most common",
    "random": "random: uniform noise on the scale of the model's token embeddings",
}


def check_prompt_adapter(model: nn.Module, folder: str | os.PathLike, *, required: bool = True) -> None:
    """Refuse, with a clear ValueError, a saved prompt-tuning adapter whose prompt width differs from the model's.

    With `required=False` a folder holding another kind of adapter passes unchecked.
    """
    path = os.path.join(str(folder), CONFIG_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{folder} has no {CONFIG_FILE}: it is not a saved adapter (use save_pretrained).")
    saved = read_json_object(path, "adapter config")
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
    config = prompt_config(prompt_model, prompt_model.active_adapter)
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


def load_prompt_model(base_model: nn.Module, folder: str) -> PeftModel:
    """A saved prompt-tuning adapter (checked first: safetensors, width) on `base_model`, whose parameters keep the
    trainable flags they had (loading a prompt with PEFT freezes the model it wraps)."""
    check_adapter_folder(folder)
    check_prompt_adapter(base_model, folder)
    trainable = {n: p.requires_grad for n, p in base_model.named_parameters()}
    prompt_model = PeftModel.from_pretrained(base_model, folder)
    for n, p in base_model.named_parameters():
        p.requires_grad_(trainable.get(n, False))
    return prompt_model


def read_prompt_init(peft_model, directory: str) -> None:
    """After loading a saved prompt adapter: remember its recorded init, for the card of a later save."""
    path = os.path.join(directory, INIT_FILE)
    if isinstance(peft_model, PeftModel) and os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            init = json.load(fh)
        if isinstance(init, dict) and init.get("init") in INITS:
            name = peft_model.active_adapter
            peft_model.prompt_init = {**getattr(peft_model, "prompt_init", {}), name: init}


def prompt_card(config: PromptTuningConfig, record: RunRecord, init: dict | None) -> str:
    """The README.md of a prompt-tuning label-word classifier: method, initialisation, prompt, metrics."""
    if init and init.get("init") in INIT_TEXT:
        init_text = f"{INIT_TEXT[init['init']]} (seed {init.get('seed', 0)})"
    else:
        init_text = f"PEFT's `{getattr(config.prompt_tuning_init, 'value', config.prompt_tuning_init)}`"
    record = dataclasses.replace(
        record,
        card="prompt_tuning",
        tags=["prompt-tuning", "prompting"],
        base_model=config.base_model_name_or_path or record.base_model,
        training=record.training
        or "Not recorded: train with `transformers.Trainer` on `classifier.prepare_dataset(...)`.",
    )
    return render_card(
        record,
        prompt_tokens=config.num_virtual_tokens,
        token_dim=config.token_dim,
        task_type=getattr(config.task_type, "value", config.task_type),
        init=init_text,
    )


def write_prompt_files(peft_model: PeftModel, name: str, folder: str, record: RunRecord) -> None:
    """A saved prompt adapter's init record and card (a card the user wrote is kept)."""
    init = getattr(peft_model, "prompt_init", {}).get(name)
    if init is not None:
        with open(os.path.join(folder, INIT_FILE), "w", encoding="utf-8") as fh:
            json.dump(init, fh, indent=2)
    write_card(os.path.join(folder, "README.md"), prompt_card(peft_model.peft_config[name], record, init))


class PromptAdapterHook:
    """What prompt tuning adds to a label-word classifier's folder (see `peft_dect.classifier.AdapterHook`)."""

    def check(self, model: nn.Module, folder: str) -> None:
        check_prompt_adapter(model, folder)

    def after_load(self, peft_model: PeftModel, folder: str) -> None:
        read_prompt_init(peft_model, folder)

    def after_save(self, peft_model: PeftModel, adapter_name: str, folder: str, classifier) -> None:
        write_prompt_files(peft_model, adapter_name, folder, classifier.run_record)


register_adapter_hook("PROMPT_TUNING", PromptAdapterHook())
