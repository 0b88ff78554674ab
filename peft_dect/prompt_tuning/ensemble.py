"""Prompt ensembles (Lester et al., section 6): several soft prompts on one frozen model, one batched pass."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from torch import nn

from ..backbone import Backbone
from ..classifier import FewShotClassifier, LabelWordClassifier, write_settings
from ..saving import adapter_folder, check_adapter_folder, inside_folder, read_json_object, staged_folder
from .adapters import check_prompt_adapter, read_prompt_init, write_prompt_files
from .init import prompt_config


def soft_prompt(peft_model: PeftModel, adapter_name: str) -> torch.Tensor:
    """The (num_virtual_tokens, H) soft prompt of a prompt-tuning adapter, as PEFT's forward prepends it."""
    prompt_config(peft_model, adapter_name)
    encoder = peft_model.prompt_encoder[adapter_name]
    return encoder(peft_model.prompt_tokens[adapter_name].to(encoder.embedding.weight.device))


def stacked_prompt_log_probs(
    peft_model: PeftModel,
    adapter_names: Sequence[str],
    backbone: Backbone,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Label-word log-probabilities (A, N, C) of a batch under each of A soft prompts, in one forward pass.

    PEFT prepends only the active adapter's prompt (its mixed-adapter batches cover LoRA-style tuners, not prompt
    learning), so the batch is replicated once per adapter with that adapter's prompt in front, exactly as PEFT's
    forward builds its input, and the frozen model runs once on the A*N rows. Adapters whose prompts differ in
    length run as one pass per length. `backbone` (the classifier's) gives the prediction positions and scores the
    label words at them.
    """
    embeds = peft_model.word_embeddings(input_ids)
    n, width = input_ids.shape
    positions = backbone.positions(input_ids, attention_mask)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    out = torch.empty(len(adapter_names), n, backbone.verbalizer.num_classes, device=embeds.device)
    by_length: dict[int, list[int]] = {}
    prompts = [soft_prompt(peft_model, name).to(embeds.dtype) for name in adapter_names]
    for a, prompt in enumerate(prompts):
        by_length.setdefault(prompt.shape[0], []).append(a)
    for length, members in by_length.items():
        stack = torch.stack([prompts[a] for a in members])  # (A', P, H)
        rows = torch.cat(
            (stack[:, None].expand(-1, n, -1, -1), embeds[None].expand(len(members), -1, -1, -1)), dim=2
        ).reshape(len(members) * n, length + width, -1)
        full_mask = torch.cat((attention_mask.new_ones(n, length), attention_mask), dim=1).repeat(len(members), 1)
        scores = backbone.from_embeddings(rows, full_mask, (positions + length).repeat(len(members))).label_logits
        out[members] = scores.reshape(len(members), n, -1).to(out.dtype)
    return out


COMBINE = ("mean", "vote")
ENSEMBLE_FILE = "prompt_ensemble.json"


class PromptEnsemble(FewShotClassifier):
    """Several soft prompts for one task on one frozen model (Lester et al., section 6): one prediction from all.

    The members are prompt-tuning adapters of the classifier's PeftModel, sharing its template and label words.
    Each batch runs once, replicated per member with that member's prompt in front (`stacked_prompt_log_probs`).

    Args:
        classifier: a `LabelWordClassifier` around a PEFT prompt-tuning model.
        adapter_names: the members (default: every adapter of the model).
        combine: ``"mean"`` averages the members' class probabilities; ``"vote"`` is the paper's majority vote
            (ties go to the higher mean probability).
    """

    def __init__(self, classifier, adapter_names: Sequence[str] | None = None, *, combine: str = "mean") -> None:
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}.")
        model = classifier.model
        if not isinstance(model, PeftModel):
            raise TypeError("A prompt ensemble needs a classifier around a PEFT prompt-tuning model.")
        names = list(adapter_names) if adapter_names is not None else list(model.peft_config)
        if not names:
            raise ValueError("A prompt ensemble needs at least one prompt-tuning adapter.")
        for name in names:
            prompt_config(model, name)
        self.classifier = classifier
        self.adapter_names = names
        self.combine = combine
        self.run_record = dataclasses.replace(classifier.run_record, evaluations=[])

    @property
    def classes(self) -> tuple[str, ...]:
        return self.classifier.classes

    def read_targets(self, data) -> torch.Tensor:
        return self.classifier.read_targets(data)

    def member_log_probs(self, inputs, *, batch_size: int | None = None) -> torch.Tensor:
        """Label-word log-probabilities (members, N, C) of every member, batches in one pass each."""
        clf = self.classifier
        bb = clf.backbone
        ids = bb.tokenize(*clf.prompt.read_texts(inputs))
        out = torch.empty(len(self.adapter_names), len(ids), len(self.classes))
        with bb.evaluating():
            for chunk in bb.batches(ids, batch_size):
                batch = {k: v.to(bb.device) for k, v in bb.collate([ids[i] for i in chunk]).items()}
                scores = stacked_prompt_log_probs(
                    clf.model, self.adapter_names, bb, batch["input_ids"], batch["attention_mask"]
                )
                out[:, chunk] = scores.float().cpu()
        bad = [name for name, scores in zip(self.adapter_names, out) if not bool(torch.isfinite(scores).all())]
        if bad:
            raise ValueError(
                f"The soft prompt(s) of ensemble member(s) {bad} give NaN or infinite label-word scores: their "
                "adapter tensors are corrupt, or the model overflows (load it in float32 or bfloat16)."
            )
        return out

    def _combined(self, member_scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(member_scores, -1).mean(0)
        if self.combine == "mean":
            return torch.log(probs)
        votes = torch.nn.functional.one_hot(member_scores.argmax(-1), len(self.classes)).sum(0).float()
        return torch.log_softmax(votes * 1e3 + probs, -1)  # most votes first, mean probability breaks ties

    def predict_logits(self, inputs) -> torch.Tensor:
        """Ensemble class log-scores (N, C): log of the mean probability, or of the vote (see `combine`)."""
        return self._combined(self.member_log_probs(inputs))

    def predict_proba(self, inputs) -> np.ndarray:
        """Mean class probabilities of the members (N, C), columns in the order of the label words."""
        return torch.softmax(self.member_log_probs(inputs), -1).mean(0).numpy()

    def evaluate(self, dataset, *, metric=None, name: str | None = None, split: str = "test") -> dict[str, Any]:
        """Metrics of the ensemble (recorded for the card) and each member's accuracy, from the same passes."""
        labels = self.read_targets(dataset)
        scores = self.member_log_probs(dataset)
        metrics = self.score(self._combined(scores), labels, metric)
        self.run_record.add_evaluation(name, split, len(labels), metrics)
        members = {n: float((s.argmax(-1) == labels).float().mean()) for n, s in zip(self.adapter_names, scores)}
        return {**metrics, "member_accuracy": members}

    def save_pretrained(self, save_directory: str) -> None:
        """Each member as a saved classifier in `<save_directory>/<adapter>/`, and the list of members.

        The whole ensemble is written into a hidden folder beside the target and moved in at the end, so an
        interrupted save leaves a previous ensemble loadable.
        """
        model = self.classifier.model
        with staged_folder(save_directory) as staging:
            for name in self.adapter_names:
                folder = os.path.join(staging, name)
                model.save_pretrained(folder, selected_adapters=[name], safe_serialization=True)
                inner = adapter_folder(folder, name)  # peft writes a non-default adapter into a subfolder
                if inner != folder:
                    for entry in os.listdir(inner):
                        os.replace(os.path.join(inner, entry), os.path.join(folder, entry))
                    os.rmdir(inner)
                write_settings(folder, self.classifier.settings)
                write_prompt_files(model, name, folder, self.run_record)
            with open(os.path.join(staging, ENSEMBLE_FILE), "w", encoding="utf-8") as fh:
                json.dump({"members": self.adapter_names, "combine": self.combine}, fh, indent=2)

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, tokenizer, directories: str | Sequence[str], *, combine: str | None = None
    ) -> PromptEnsemble:
        """Load saved prompt-tuned classifiers (or a saved ensemble folder) onto one base model as one ensemble.

        Every member must share the template, label words and label-word settings: their scores are averaged.
        """
        if isinstance(directories, (str, os.PathLike)):
            path = os.path.join(str(directories), ENSEMBLE_FILE)
            if not os.path.isfile(path):
                raise ValueError(f"{directories} has no {ENSEMBLE_FILE}; pass the member folders as a list.")
            saved = read_json_object(path, "ensemble file")
            members = saved.get("members")
            if not isinstance(members, list) or not all(isinstance(m, str) and is_plain_name(m) for m in members):
                raise ValueError(f"{path}: 'members' must be a list of member folder names inside the ensemble.")
            combine = combine or saved.get("combine", "mean")
            directories = [inside_folder(str(directories), name, "An ensemble member") for name in members]
        if not directories:
            raise ValueError("A prompt ensemble needs at least one member folder.")
        settings = [LabelWordClassifier.read_settings(str(d)) for d in directories]
        for d, s in zip(directories[1:], settings[1:]):
            different = [
                k
                for k in ("template", "label_words", "label_word_aggregation", "multi_token")
                if s.get(k) != settings[0].get(k)
            ]
            if different:
                raise ValueError(
                    f"Ensemble members must share the template and label words: {d} differs from {directories[0]} "
                    f"in {', '.join(different)} ({s.get(different[0])!r} vs {settings[0].get(different[0])!r})."
                )
        base = model.get_base_model() if isinstance(model, PeftModel) else model
        names = []
        peft_model = None
        for i, d in enumerate(directories):
            d = str(d)
            check_adapter_folder(d)
            check_prompt_adapter(base, d)
            name = os.path.basename(os.path.normpath(d)) or f"member{i}"
            name = name if name not in names else f"{name}-{i}"
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(base, d, adapter_name=name)
            else:
                peft_model.load_adapter(d, adapter_name=name)
            peft_model.set_adapter(name)
            read_prompt_init(peft_model, d)
            names.append(name)
        classifier = LabelWordClassifier(peft_model, tokenizer, **settings[0])
        return cls(classifier, names, combine=combine or "mean")


def is_plain_name(name: str) -> bool:
    """A folder name inside another folder: not absolute, no separator, not '.' or '..'."""
    return bool(name) and name not in (".", "..") and not os.path.isabs(name) and not {os.sep, "/", "\\"} & set(name)
