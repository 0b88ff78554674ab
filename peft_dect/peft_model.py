"""The PEFT model class of peft-dect adapters: a language model used as a few-shot sequence classifier."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from peft import PeftModelForSequenceClassification
from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING

from .compat import check_format_version
from .prompt_tuning import SOFT_PROMPT_FOLDER


class PeftModelForFewShotClassification(PeftModelForSequenceClassification):
    """`get_peft_model` returns this for peft-dect configs (task type ``FEW_SHOT_CLS``).

    It behaves as a sequence classifier for `transformers.Trainer` (forward returns class logits and loss) and adds
    the fast few-shot API of its tuner: `fit`, `predict`, `predict_proba`, `evaluate`, `prepare_dataset`.
    """

    def fit(self, train_dataset, tokenizer=None, eval_dataset=None, **kwargs) -> dict[str, Any]:
        """Fit the active adapter on labelled data (see the tuner's `fit`)."""
        return self.base_model.fit(train_dataset, tokenizer, eval_dataset, **kwargs)

    def predict(self, inputs, tokenizer=None, **kwargs) -> list[str]:
        """Class names predicted for texts, (text_a, text_b) pairs or a dataset."""
        return self.base_model.predict(inputs, tokenizer, **kwargs)

    def predict_proba(self, inputs, tokenizer=None, **kwargs) -> np.ndarray:
        """Class probabilities (N, C), columns in the order of the config's `label_words`."""
        return self.base_model.predict_proba(inputs, tokenizer, **kwargs)

    def evaluate(self, dataset, tokenizer=None, **kwargs) -> dict[str, float]:
        """Metrics of the active adapter on a labelled dataset."""
        return self.base_model.evaluate(dataset, tokenizer, **kwargs)

    def prepare_dataset(self, dataset, tokenizer=None, **kwargs):
        """Prompted, tokenised dataset for `transformers.Trainer` (use `model.collate` as its data collator)."""
        return self.base_model.prepare_dataset(dataset, tokenizer, **kwargs)

    def collate(self, rows):
        """Data collator for datasets made by `prepare_dataset`."""
        return self.base_model.collate(rows)

    def use_soft_prompt(self, prompt_model, adapter_name: str | None = None) -> None:
        """Read the adapter's features with a PEFT prompt-tuning model's soft prompt prepended (DecT on a prompt-tuned
        model); `prompt_model` wraps this same base model. Saved and loaded with the adapter (in `soft_prompt/`)."""
        self.base_model.use_soft_prompt(prompt_model, adapter_name)

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Save the adapter (config and decoder tensors as safetensors); never the base model's embeddings.

        The files are written into a temporary folder next to `save_directory` and then moved into place one by
        one with `os.replace`, so an interrupted save leaves the previous adapter intact and no half-written file.
        An adapter that reads features through a soft prompt gets that prompt-tuning adapter in its `soft_prompt/`.
        """
        kwargs.setdefault("save_embedding_layers", False)
        kwargs.setdefault("safe_serialization", True)
        if not kwargs["safe_serialization"]:
            raise ValueError("peft-dect adapters are saved with safetensors only (safe_serialization=True).")
        with staged_folder(save_directory) as staging:
            super().save_pretrained(staging, **kwargs)
            if kwargs.get("is_main_process", True):
                self._save_soft_prompts(staging, kwargs.get("selected_adapters") or list(self.peft_config))

    def _save_soft_prompts(self, directory: str, adapter_names) -> None:
        for name in adapter_names:
            entry = self.base_model.soft_prompt_of(name)
            if entry is not None:
                prompt_model, prompt_adapter = entry
                folder = directory if name == "default" else os.path.join(directory, name)
                prompt_model.save_pretrained(
                    os.path.join(folder, SOFT_PROMPT_FOLDER), selected_adapters=[prompt_adapter]
                )

    def load_adapter(self, model_id, adapter_name: str, *args: Any, **kwargs: Any):
        """Load an adapter after checking its folder: safetensors weights only, readable, of the expected shapes."""
        folder = os.path.join(str(model_id), kwargs.get("subfolder") or "")
        if not os.path.isdir(folder):  # a Hub id: fetch the safetensors first, so peft never falls back to a pickle
            folder = hub_adapter_folder(str(model_id), kwargs)
        check_adapter_folder(folder)
        try:
            result = super().load_adapter(model_id, adapter_name, *args, **kwargs)
        except RuntimeError as err:
            if "size mismatch" not in str(err):
                raise
            raise ValueError(
                f"The tensors in {model_id} do not fit this adapter's shapes ({str(err).splitlines()[1].strip()}); "
                "the adapter was saved with another config or base model."
            ) from None
        if getattr(self.peft_config[adapter_name], "soft_prompt", None):
            self._load_soft_prompt(model_id, adapter_name, kwargs)
        return result

    def _load_soft_prompt(self, model_id, adapter_name: str, kwargs: dict) -> None:
        """Load the prompt-tuning adapter an adapter's features are read with (saved in its `soft_prompt/`)."""
        from peft import PeftModel

        from .prompt_tuning import check_prompt_adapter

        relative = self.peft_config[adapter_name].soft_prompt
        base = self.base_model.model
        trainable = {n: p.requires_grad for n, p in self.named_parameters()}  # loading a prompt freezes the model
        subfolder = os.path.join(kwargs.get("subfolder") or "", relative)
        local = os.path.join(str(model_id), subfolder)
        if not os.path.isdir(local):  # a Hub repository: its safetensors only, as for the adapter itself
            local = hub_adapter_folder(str(model_id), {**kwargs, "subfolder": subfolder})
        check_adapter_folder(local)
        check_prompt_adapter(base, local)
        prompt_model = PeftModel.from_pretrained(base, local)
        for n, p in self.named_parameters():
            p.requires_grad_(trainable.get(n, False))
        self.base_model.use_soft_prompt(prompt_model, adapter_name, keep_fit=True)

    def create_or_update_model_card(self, output_dir: str) -> None:
        """Write the peft-dect card (README.md); a card the user wrote is kept and only gets peft's metadata."""
        from .cards import MARKER, render_dect_card

        path = os.path.join(output_dir, "README.md")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                if MARKER not in fh.read():
                    return super().create_or_update_model_card(output_dir)
        name = self.active_adapter
        tuner = self.base_model
        card = render_dect_card(
            self.peft_config[name],
            fit=tuner.fit_reports.get(name),
            evaluations=tuner.evaluations.get(name, []),
            repo=getattr(self, "_card_repo_id", None),
        )
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(card)

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None, **kwargs: Any) -> str:
        """Save the active adapter (with its card) and upload it to `repo_id` as one commit; returns the repo URL.

        The repository id and the credentials are checked before anything is uploaded.
        """
        from .hub import check_repo_id, push_adapter_folder

        check_repo_id(repo_id)
        self._card_repo_id = repo_id
        try:
            with tempfile.TemporaryDirectory() as folder:
                name = self.active_adapter
                self.save_pretrained(folder, selected_adapters=[name], **kwargs)
                # peft saves adapters other than "default" in a subfolder of their name
                adapter_folder = folder if name == "default" else os.path.join(folder, name)
                if adapter_folder != folder:
                    self.create_or_update_model_card(adapter_folder)
                return push_adapter_folder(adapter_folder, repo_id, private=private, token=token)
        finally:
            del self._card_repo_id


def hub_adapter_folder(repo_id: str, kwargs: dict) -> str:
    """Download (or find in the cache) a Hub adapter's config and safetensors weights; return their folder.

    peft itself would fall back to a pickled adapter_model.bin when a repository has no safetensors file.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    options = {k: kwargs[k] for k in ("revision", "token", "cache_dir") if kwargs.get(k) is not None}
    subfolder = kwargs.get("subfolder") or None
    try:
        hf_hub_download(repo_id, "adapter_config.json", subfolder=subfolder, **options)
        weights = hf_hub_download(repo_id, "adapter_model.safetensors", subfolder=subfolder, **options)
    except EntryNotFoundError:  # also the offline cache miss (LocalEntryNotFoundError)
        raise ValueError(
            f"{repo_id} has no adapter_config.json and adapter_model.safetensors on the Hub (or in the local cache); "
            "peft-dect loads safetensors adapters only and never unpickles adapter_model.bin."
        ) from None
    return os.path.dirname(weights)


@contextmanager
def staged_folder(save_directory) -> Iterator[str]:
    """A hidden folder next to `save_directory` to write a save into; on success its files are moved in.

    An interrupted save thus leaves the previous files intact and no half-written one. A README.md already in the
    target (a card the user wrote) is copied in first, so that card writers can see and keep it.
    """
    target = os.path.abspath(os.fspath(save_directory))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.saving-", dir=parent)
    try:
        card = os.path.join(target, "README.md")
        if os.path.isfile(card):
            shutil.copy2(card, os.path.join(staging, "README.md"))
        yield staging
        move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_into_place(staging: str, target: str) -> None:
    """Move every file of `staging` to the same place under `target` with `os.replace` (atomic per file).

    Weights go before configs, so a config on disk never describes tensors that are not there yet.
    """
    files = [os.path.join(root, f) for root, _, names in os.walk(staging) for f in names]
    files.sort(key=lambda f: (not f.endswith(".safetensors"), f.endswith(".md"), f))
    for path in files:
        dest = os.path.join(target, os.path.relpath(path, staging))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(path, dest)


def check_adapter_folder(folder: str) -> None:
    """Raise a ValueError naming the problem if `folder` is not a loadable peft-dect adapter. Nothing is unpickled."""
    from safetensors import SafetensorError, safe_open

    config = os.path.join(folder, "adapter_config.json")
    weights = os.path.join(folder, "adapter_model.safetensors")
    if not os.path.isfile(config):
        raise ValueError(f"{folder} has no adapter_config.json: it is not a saved adapter (use save_pretrained).")
    if not os.path.isfile(weights):
        pickled = [f for f in ("adapter_model.bin", "adapter_model.pt") if os.path.isfile(os.path.join(folder, f))]
        hint = f" ({pickled[0]} is a pickle, which peft-dect never loads)" if pickled else ""
        raise ValueError(f"{folder} has no adapter_model.safetensors{hint}; save the adapter with save_pretrained.")
    try:
        with safe_open(weights, framework="pt") as shard:
            names = list(shard.keys())
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights} is not a valid safetensors file ({err}); save the adapter again.") from None
    try:
        with open(config, encoding="utf-8") as fh:
            saved = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config} is not a readable JSON file ({err}); save the adapter again.") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{config} does not hold a JSON object; save the adapter again.")
    check_format_version(saved.get("format_version"), f"The adapter in {folder}")
    peft_type = saved.get("peft_type")
    prefix = PEFT_TYPE_TO_PREFIX_MAPPING.get(peft_type)
    if peft_type in ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"):  # peft saves their prompt as one tensor
        unknown = [n for n in names if n != "prompt_embeddings"]
    else:
        unknown = [n for n in names if prefix is not None and f".{prefix}" not in n]
    if unknown:
        raise ValueError(
            f"{weights} holds tensors that are not {peft_type}'s ({unknown[:3]}); the weights and the config "
            "come from different adapters."
        )
