"""The PEFT model class of peft-dect adapters (task type ``FEW_SHOT_CLS``): a language model used as a few-shot
sequence classifier, with atomic safetensors saves, checked loading and Hub pushes.

Its tuner (DecT's) provides the few-shot API and the files an adapter keeps beside its config: `model_card(name,
repo)`, `write_adapter_files(folder, name)` and `read_adapter_files(folder, name, fetch)`.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
from peft import PeftModelForSequenceClassification
from peft.auto import MODEL_TYPE_TO_PEFT_MODEL_MAPPING
from peft.config import PeftConfigMixin

from ._enums import FEW_SHOT_CLS
from .cards import card_is_ours
from .hub import check_repo_id, local_adapter_folder, push_adapter_folder
from .saving import (
    POOL_FILE,
    SAVE_ID_KEY,
    adapter_folder,
    check_adapter_folder,
    new_save_id,
    read_json_object,
    staged_folder,
    stamp_weights,
)


class PeftModelForFewShotClassification(PeftModelForSequenceClassification):
    """`get_peft_model` returns this for peft-dect configs (task type ``FEW_SHOT_CLS``).

    It behaves as a sequence classifier for `transformers.Trainer` (forward returns class logits and loss) and adds
    the fast few-shot API of its tuner: `fit`, `predict`, `predict_proba`, `evaluate`, `prepare_dataset`, and
    the uncertainty methods `predict_set`, `unknown_score`, `calibrate`, `suggest` (`predict(reject=True)`).
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

    def predict_many(self, inputs, adapters=None, tokenizer=None, **kwargs) -> dict[str, list[str] | np.ndarray]:
        """{adapter: answers} of several adapters on the same inputs, one model pass per template (see the tuner)."""
        return self.base_model.predict_many(inputs, adapters, tokenizer, **kwargs)

    def predict_set(self, inputs, tokenizer=None, *, alpha: float = 0.1, **kwargs) -> list[list[str]]:
        """Per input, a conformal prediction set of class names at miscoverage `alpha` (see `FewShotClassifier`)."""
        return self.base_model.predict_set(inputs, tokenizer, alpha=alpha, **kwargs)

    def unknown_score(self, inputs, tokenizer=None, **kwargs) -> np.ndarray:
        """One out-of-scope score per input (higher: more likely outside every class)."""
        return self.base_model.unknown_score(inputs, tokenizer, **kwargs)

    def calibrate(self, dataset, tokenizer=None, **kwargs) -> dict[str, float]:
        """Fit the active adapter's calibration on labelled held-out data (saved with the adapter)."""
        return self.base_model.calibrate(dataset, tokenizer, **kwargs)

    def suggest(self, pool, k: int, tokenizer=None, *, strategy: str = "margin", **kwargs) -> list[int]:
        """Indices of the `k` pool inputs whose labels would help the active adapter most."""
        return self.base_model.suggest(pool, k, tokenizer, strategy=strategy, **kwargs)

    def evaluate(self, dataset, tokenizer=None, **kwargs) -> dict[str, float]:
        """Metrics of the active adapter on a labelled dataset (see `FewShotClassifier.evaluate`)."""
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
        Files the tuner keeps beside an adapter's config (a demonstration pool, a soft prompt) go with it. Each
        save writes one id into both the config and the weights' metadata: a folder left with the weights of one
        save and the config of another is refused on load; saves into one folder run one at a time (a lock).
        """
        kwargs.setdefault("save_embedding_layers", False)
        kwargs.setdefault("safe_serialization", True)
        if not kwargs["safe_serialization"]:
            raise ValueError("peft-dect adapters are saved with safetensors only (safe_serialization=True).")
        names = kwargs.get("selected_adapters") or list(self.peft_config)
        save_id = new_save_id()
        for name in names:
            if hasattr(self.peft_config[name], SAVE_ID_KEY):
                setattr(self.peft_config[name], SAVE_ID_KEY, save_id)
        with staged_folder(save_directory) as staging:
            super().save_pretrained(staging, **kwargs)
            if kwargs.get("is_main_process", True):
                for name in names:
                    folder = adapter_folder(staging, name)
                    if hasattr(self.peft_config[name], SAVE_ID_KEY):
                        stamp_weights(folder, save_id)
                    self.base_model.write_adapter_files(folder, name)

    def load_adapter(self, model_id, adapter_name: str, *args: Any, **kwargs: Any):
        """Load an adapter after checking its folder: safetensors weights only, readable, of the expected shapes."""
        folder = local_adapter_folder(model_id, kwargs, optional=(POOL_FILE,))  # a Hub id: safetensors, no pickle
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

        def fetch(relative: str) -> str:
            """The local folder of a subfolder of the adapter (downloaded from the Hub when the adapter is there)."""
            subfolder = os.path.join(kwargs.get("subfolder") or "", relative)
            if os.path.isdir(os.path.join(str(model_id), kwargs.get("subfolder") or "")):  # a local adapter
                path = os.path.join(folder, relative)
                if not os.path.isdir(path):
                    raise ValueError(
                        f"The adapter in {folder} reads through the soft prompt in its {relative}/ folder, which is "
                        "missing: copy the whole adapter folder, or save the adapter again."
                    )
                return path
            return local_adapter_folder(model_id, {**kwargs, "subfolder": subfolder})

        self.base_model.read_adapter_files(folder, adapter_name, fetch)
        return result

    def create_or_update_model_card(self, output_dir: str) -> None:
        """Write the peft-dect card (README.md); a card the user wrote is kept and only gets peft's metadata."""
        path = os.path.join(output_dir, "README.md")
        if not card_is_ours(path):
            return super().create_or_update_model_card(output_dir)
        card = self.base_model.model_card(self.active_adapter, repo=getattr(self, "_card_repo_id", None))
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(card)

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None, **kwargs: Any) -> str:
        """Save the active adapter (with its card) and upload it to `repo_id` as one commit; returns the repo URL.

        The repository id and the credentials are checked before anything is uploaded.
        """
        check_repo_id(repo_id)
        self._card_repo_id = repo_id
        try:
            with tempfile.TemporaryDirectory() as folder:
                name = self.active_adapter
                self.save_pretrained(folder, selected_adapters=[name], **kwargs)
                target = adapter_folder(folder, name)  # peft saves adapters other than "default" in a subfolder
                if target != folder:
                    self.create_or_update_model_card(target)
                return push_adapter_folder(target, repo_id, private=private, token=token)
        finally:
            del self._card_repo_id


MODEL_TYPE_TO_PEFT_MODEL_MAPPING[FEW_SHOT_CLS] = PeftModelForFewShotClassification


PEFT_FROM_JSON_FILE = PeftConfigMixin.from_json_file.__func__


def checked_from_json_file(cls, path_json_file: str, **kwargs: Any) -> dict:
    """peft's reader of adapter configs, with a ValueError that names the file when it is not a JSON object.

    `PeftModel.from_pretrained` reads the config's peft type before any peft-dect code runs; without this a corrupt
    or list-valued adapter_config.json ends in a bare JSONDecodeError or TypeError from inside peft.
    """
    read_json_object(path_json_file, "adapter config")
    return PEFT_FROM_JSON_FILE(cls, path_json_file, **kwargs)


PeftConfigMixin.from_json_file = classmethod(checked_from_json_file)
