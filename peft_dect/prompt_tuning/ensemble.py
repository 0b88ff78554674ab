"""Prompt ensembles (Lester et al., section 6): several soft prompts on one frozen model, one batched pass."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from peft import PeftModel
from torch import nn

from ..prompting import label_log_probs
from .adapters import INIT_FILE, check_prompt_adapter, read_prompt_init
from .init import _prompt_config


def soft_prompt(peft_model: PeftModel, adapter_name: str) -> torch.Tensor:
    """The (num_virtual_tokens, H) soft prompt of a prompt-tuning adapter, as PEFT's forward prepends it."""
    _prompt_config(peft_model, adapter_name)
    encoder = peft_model.prompt_encoder[adapter_name]
    return encoder(peft_model.prompt_tokens[adapter_name].to(encoder.embedding.weight.device))


def stacked_prompt_log_probs(
    peft_model: PeftModel,
    adapter_names: Sequence[str],
    backbone,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Label-word log-probabilities (A, N, C) of a batch under each of A soft prompts, in one forward pass.

    PEFT prepends only the active adapter's prompt (its mixed-adapter batches cover LoRA-style tuners, not prompt
    learning), so the batch is replicated once per adapter with that adapter's prompt in front, exactly as PEFT's
    forward builds its input, and the frozen model runs once on the A*N rows. Adapters whose prompts differ in
    length run as one pass per length. `backbone` (a `Backbone` on the base model) gives the prediction positions,
    the LM head split and the label-word ids.
    """
    base = peft_model.get_base_model()
    embeds = peft_model.word_embeddings(input_ids)
    n, width = input_ids.shape
    positions = backbone.positions(input_ids, attention_mask)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    ids, mask = backbone._word_ids.to(embeds.device), backbone._word_mask.to(embeds.device)
    out = torch.empty(len(adapter_names), n, ids.shape[0], device=embeds.device)
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
        at = (positions + length).repeat(len(members))
        index = torch.arange(len(members) * n, device=rows.device)
        if backbone._split is not None:
            body, head = backbone._split
            hidden = body(inputs_embeds=rows, attention_mask=full_mask)[0][index, at]
            vocab_logits = head(hidden)
        else:
            vocab_logits = base(inputs_embeds=rows, attention_mask=full_mask).logits[index, at]
        scores = label_log_probs(vocab_logits, ids, mask, backbone.verbalizer.aggregation)
        out[members] = scores.reshape(len(members), n, -1).to(out.dtype)
    return out


COMBINE = ("mean", "vote")
ENSEMBLE_FILE = "prompt_ensemble.json"


class PromptEnsemble:
    """Several soft prompts for one task on one frozen model (Lester et al., section 6): one prediction from all.

    The members are prompt-tuning adapters of the classifier's PeftModel, sharing its template and label words.
    Each batch runs once, replicated per member with that member's prompt in front (`stacked_prompt_log_probs`).
    `combine="mean"` averages the members' class probabilities; ``"vote"`` is the paper's majority vote (ties go to
    the higher mean probability).
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
            _prompt_config(model, name)
        self.classifier = classifier
        self.adapter_names = names
        self.combine = combine

    @property
    def classes(self) -> tuple[str, ...]:
        return self.classifier.classes

    def member_log_probs(self, inputs, *, batch_size: int | None = None) -> torch.Tensor:
        """Label-word log-probabilities (members, N, C) of every member, batches in one pass each."""
        clf = self.classifier
        texts_a, texts_b = clf._texts(inputs)
        ids = clf.backbone.tokenize(texts_a, texts_b)
        size = batch_size or clf.backbone.batch_size
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = torch.empty(len(self.adapter_names), len(ids), len(self.classes))
        modes = [(module, module.training) for module in clf.model.modules()]
        clf.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(order), size):
                    chunk = order[start : start + size]
                    device = clf.backbone.device
                    batch = {k: v.to(device) for k, v in clf.backbone.collate([ids[i] for i in chunk]).items()}
                    scores = stacked_prompt_log_probs(
                        clf.model, self.adapter_names, clf.backbone, batch["input_ids"], batch["attention_mask"]
                    )
                    out[:, chunk] = scores.float().cpu()
        finally:
            for module, mode in modes:
                module.training = mode
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

    def predict_proba(self, inputs):
        """Mean class probabilities of the members (N, C), columns in the order of the label words."""
        return torch.softmax(self.member_log_probs(inputs), -1).mean(0).numpy()

    def predict(self, inputs) -> list[str]:
        """Predicted class names."""
        return [self.classes[i] for i in self.predict_logits(inputs).argmax(-1).tolist()]

    def evaluate(self, dataset) -> dict[str, Any]:
        """Accuracy of the ensemble and of each member, from the same forward passes."""
        labels = torch.tensor(self.classifier.encode_labels(dataset))
        scores = self.member_log_probs(dataset)
        members = {name: float((s.argmax(-1) == labels).float().mean()) for name, s in zip(self.adapter_names, scores)}
        accuracy = float((self._combined(scores).argmax(-1) == labels).float().mean())
        return {"accuracy": accuracy, "member_accuracy": members}

    def save_pretrained(self, save_directory: str) -> None:
        """Each member as a saved classifier in `<save_directory>/<adapter>/`, and the list of members."""
        from ..classifier import LabelWordClassifier

        model = self.classifier.model
        for name in self.adapter_names:
            folder = os.path.join(save_directory, name)
            model.save_pretrained(folder, selected_adapters=[name], safe_serialization=True)
            # peft writes an adapter not named "default" into a subfolder of its name: bring it up one level
            inner = os.path.join(folder, name)
            if name != "default" and os.path.isdir(inner):
                for entry in os.listdir(inner):
                    os.replace(os.path.join(inner, entry), os.path.join(folder, entry))
                os.rmdir(inner)
            settings = {"format_version": 1, **self.classifier.settings}
            with open(os.path.join(folder, "label_word_classifier.json"), "w", encoding="utf-8") as fh:
                json.dump(settings, fh, indent=2)
            LabelWordClassifier.read_settings(folder)  # the folder is a loadable classifier
            single = {name: getattr(model, "prompt_init", {}).get(name)}
            _write_member_card(model, name, folder, self.classifier.settings, single[name])
        with open(os.path.join(save_directory, ENSEMBLE_FILE), "w", encoding="utf-8") as fh:
            json.dump({"members": self.adapter_names, "combine": self.combine}, fh, indent=2)

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, tokenizer, directories: str | Sequence[str], *, combine: str | None = None
    ) -> PromptEnsemble:
        """Load saved prompt-tuned classifiers (or a saved ensemble folder) onto one base model as one ensemble.

        Every member must share the template, label words and label-word settings: their scores are averaged.
        """
        from ..classifier import LabelWordClassifier
        from ..peft_model import check_adapter_folder

        if isinstance(directories, (str, os.PathLike)):
            path = os.path.join(str(directories), ENSEMBLE_FILE)
            if not os.path.isfile(path):
                raise ValueError(f"{directories} has no {ENSEMBLE_FILE}; pass the member folders as a list.")
            with open(path, encoding="utf-8") as fh:
                saved = json.load(fh)
            combine = combine or saved.get("combine", "mean")
            directories = [os.path.join(str(directories), name) for name in saved["members"]]
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


def _write_member_card(peft_model, name: str, folder: str, settings: Mapping, init: dict | None) -> None:
    from ..cards import render_prompt_tuning_card

    card = render_prompt_tuning_card(
        peft_model.peft_config[name], template=settings["template"], label_words=settings["label_words"], init=init
    )
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(card)
    if init is not None:
        with open(os.path.join(folder, INIT_FILE), "w", encoding="utf-8") as fh:
            json.dump(init, fh, indent=2)
