"""Prompt tuning (Lester et al., EMNLP 2021) with PEFT's own `PromptTuningConfig`, as a few-shot label-word classifier.

PEFT owns the soft prompt (its embedding, forward, saving); this module adds what few-shot classification needs:

- `prompt_tuning_config` picks the task type that makes PEFT prepend the prompt for a masked or a causal LM;
- `init_soft_prompt` initialises a prompt as in the paper: ``"random"``, ``"sample_vocab"`` or ``"class_label"``
  (the first tokens are the label words' embeddings, the rest sampled vocabulary);
- `get_prompt_tuning_model` does both and returns a ready `PeftModel`, to be wrapped in a `LabelWordClassifier`.

The default prompt length is 20 tokens: Lester et al. (Fig. 3) find that gains flatten out beyond 20 tokens for
every model size, and 20 leaves room for class-label init of tasks with many label words.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from peft import PeftModel, PromptTuningConfig, get_peft_model
from torch import nn

from .backbone import CAUSAL, lm_kind
from .prompting import Template, normalize_label_words
from .prompting.verbalizer import word_token_ids


logger = logging.getLogger(__name__)

DEFAULT_PROMPT_LENGTH = 20
SOFT_PROMPT_FOLDER = "soft_prompt"
"""Subfolder of a saved DecT adapter that holds the soft prompt its features are read with."""
INITS = ("random", "sample_vocab", "class_label")
VOCAB_POOL = 5000
"""Sampled-vocabulary init draws from the first 5000 ordinary tokens, as the paper draws from T5's 5000 most common:
BPE, SentencePiece and WordPiece vocabularies list tokens roughly by frequency (merge order or score)."""

# The closest value of PEFT's own `prompt_tuning_init` field, recorded in the saved adapter config; the exact init
# (and its seed) is recorded next to it by `LabelWordClassifier.save_pretrained` and shown on the model card.
PEFT_INIT = {"random": "RANDOM", "sample_vocab": "SAMPLE_VOCAB", "class_label": "SAMPLE_VOCAB"}


def prompt_task_type(model: nn.Module) -> str:
    """PEFT task type under which a prompt-tuned model prepends its soft prompt: CAUSAL_LM or FEATURE_EXTRACTION.

    PEFT's generic `PeftModel` (no task type) does not prepend prompts; for a masked LM, FEATURE_EXTRACTION's forward
    prepends the prompt and returns the masked LM's output (vocabulary logits) unchanged.
    """
    return "CAUSAL_LM" if lm_kind(model) == CAUSAL else "FEATURE_EXTRACTION"


def prompt_tuning_config(
    model: nn.Module, *, num_virtual_tokens: int = DEFAULT_PROMPT_LENGTH, init: str = "class_label", **kwargs
) -> PromptTuningConfig:
    """PEFT's `PromptTuningConfig` for `model` (masked or causal LM), with the task type it needs.

    `init` only sets PEFT's closest `prompt_tuning_init`; call `init_soft_prompt` (or use `get_prompt_tuning_model`)
    for the paper's initialisations.
    """
    _check_init(init)
    if num_virtual_tokens < 1:
        raise ValueError(f"num_virtual_tokens must be >= 1, got {num_virtual_tokens}.")
    kwargs.setdefault("task_type", prompt_task_type(model))
    kwargs.setdefault("prompt_tuning_init", PEFT_INIT[init])
    return PromptTuningConfig(num_virtual_tokens=num_virtual_tokens, **kwargs)


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}.")


def vocab_pool(tokenizer, num_embeddings: int, size: int = VOCAB_POOL) -> torch.Tensor:
    """Ids of the first `size` ordinary tokens: no special or added tokens, no placeholder rows ([unused3], <pad>)."""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    limit = min(len(tokenizer), num_embeddings)
    pool = []
    for i in range(limit):
        if i in special:
            continue
        token = tokenizer.convert_ids_to_tokens(i)
        if not token or token.startswith("[unused") or (token.startswith("<") and token.endswith(">")):
            continue
        pool.append(i)
        if len(pool) == size:
            break
    if not pool:
        raise ValueError("The tokenizer has no ordinary tokens to sample a prompt from.")
    return torch.tensor(pool, dtype=torch.long)


def label_word_embeddings(
    word_embeddings: nn.Module, tokenizer, label_words: Mapping[str, Sequence[str] | str], template: str | Template
) -> torch.Tensor:
    """(number of label words, H): each label word's embedding as it appears at the mask, sub-tokens averaged.

    Words are tokenized by the verbalizer's rule (with a leading space when the template has one before {mask});
    a word of several tokens gets the mean of their embeddings, as in the paper.
    """
    template = template if isinstance(template, Template) else Template(template)
    rows = []
    for words in normalize_label_words(label_words).values():
        for word in words:
            ids = word_token_ids(tokenizer, word, template.space_before_mask)
            ids_t = torch.tensor(ids, dtype=torch.long, device=word_embeddings.weight.device)
            rows.append(word_embeddings(ids_t).detach().float().mean(0))
    return torch.stack(rows)


def prompt_init_tensor(
    word_embeddings: nn.Module,
    tokenizer,
    num_virtual_tokens: int,
    *,
    init: str = "class_label",
    label_words: Mapping[str, Sequence[str] | str] | None = None,
    template: str | Template | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """The (num_virtual_tokens, H) initial soft prompt of the paper's `init` strategy, drawn with `seed`.

    - ``"random"``: uniform noise, as the paper, scaled to the embedding matrix's standard deviation (the paper's
      [-0.5, 0.5] fits T5's embeddings; PEFT's RANDOM draws N(0, 1), far off the embeddings of most models);
    - ``"sample_vocab"``: embeddings of tokens sampled from the `VOCAB_POOL` most common ordinary tokens;
    - ``"class_label"``: the label words' embeddings first (one prompt token per label word, in class order), the
      remaining tokens sampled vocabulary.
    """
    _check_init(init)
    weight = word_embeddings.weight
    gen = torch.Generator().manual_seed(seed)
    if init == "random":
        bound = float(weight.detach().float().std()) * 3**0.5  # uniform on [-b, b] has std b / sqrt(3)
        return (torch.rand(num_virtual_tokens, weight.shape[1], generator=gen) * 2 - 1) * bound
    pool = vocab_pool(tokenizer, weight.shape[0])
    picks = pool[torch.randint(len(pool), (num_virtual_tokens,), generator=gen)].to(weight.device)
    prompt = word_embeddings(picks).detach().float().cpu()
    if init == "class_label":
        if label_words is None or template is None:
            raise ValueError("Class-label init needs the classifier's label_words and template.")
        labels = label_word_embeddings(word_embeddings, tokenizer, label_words, template).cpu()
        if len(labels) > num_virtual_tokens:
            raise ValueError(
                f"Class-label init puts one prompt token per label word, but there are {len(labels)} label words "
                f"and only num_virtual_tokens={num_virtual_tokens}; use a prompt of at least {len(labels)} tokens "
                "or init='sample_vocab'."
            )
        prompt[: len(labels)] = labels
    return prompt


def init_soft_prompt(
    peft_model: PeftModel,
    tokenizer,
    *,
    init: str = "class_label",
    label_words: Mapping[str, Sequence[str] | str] | None = None,
    template: str | Template | None = None,
    adapter_name: str | None = None,
    seed: int = 0,
) -> None:
    """Overwrite a prompt-tuning adapter's soft prompt with the paper's initialisation (see `prompt_init_tensor`)."""
    name = adapter_name or peft_model.active_adapter
    config = _prompt_config(peft_model, name)
    embedding = peft_model.prompt_encoder[name].embedding
    prompt = prompt_init_tensor(
        peft_model.word_embeddings,
        tokenizer,
        config.num_virtual_tokens * config.num_transformer_submodules,
        init=init,
        label_words=label_words,
        template=template,
        seed=seed,
    )
    with torch.no_grad():
        embedding.weight.copy_(prompt.to(embedding.weight))
    config.prompt_tuning_init = PEFT_INIT[init]
    peft_model.prompt_init = {**getattr(peft_model, "prompt_init", {}), name: {"init": init, "seed": seed}}


def _prompt_config(peft_model, name: str) -> PromptTuningConfig:
    if not isinstance(peft_model, PeftModel):
        raise TypeError(
            f"Expected a PEFT prompt-tuning model, got {type(peft_model).__name__}; use get_prompt_tuning_model()."
        )
    if name not in peft_model.peft_config:
        raise ValueError(f"The model has no adapter {name!r}; its adapters are {list(peft_model.peft_config)}.")
    config = peft_model.peft_config[name]
    if not isinstance(config, PromptTuningConfig):
        raise TypeError(
            f"Adapter {name!r} is {config.peft_type}, not prompt tuning: wrap the LM with PEFT's PromptTuningConfig."
        )
    return config


def get_prompt_tuning_model(
    model: nn.Module,
    tokenizer,
    *,
    label_words: Mapping[str, Sequence[str] | str] | None = None,
    template: str | Template | None = None,
    init: str = "class_label",
    num_virtual_tokens: int = DEFAULT_PROMPT_LENGTH,
    seed: int = 0,
    adapter_name: str = "default",
) -> PeftModel:
    """Wrap a masked or causal LM with PEFT prompt tuning and initialise the soft prompt (class-label by default).

    Passing an existing prompt-tuned `PeftModel` adds a new adapter `adapter_name` to it (a member of an ensemble).
    """
    _check_init(init)
    if isinstance(model, PeftModel):
        base = (
            model.base_model if model._is_prompt_learning else model.get_base_model()
        )  # prompt learning wraps the LM
        config = prompt_tuning_config(base, num_virtual_tokens=num_virtual_tokens, init=init)
        model.add_adapter(adapter_name, config)
        peft_model = model
    else:
        config = prompt_tuning_config(model, num_virtual_tokens=num_virtual_tokens, init=init)
        peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    init_soft_prompt(
        peft_model,
        tokenizer,
        init=init,
        label_words=label_words,
        template=template,
        adapter_name=adapter_name,
        seed=seed,
    )
    return peft_model


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
    from .prompting import label_log_probs

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


# ---------------------------------------------------------------- model cards and the recorded init
INIT_FILE = "prompt_init.json"


def _adapter_folder(directory: str, name: str) -> str:
    return directory if name == "default" else os.path.join(directory, name)


def write_prompt_cards(peft_model, directory: str, settings: Mapping, evaluations: Mapping | None = None) -> None:
    """After a prompt-tuned classifier is saved: each prompt adapter's folder gets the init record and its card.

    Called by `LabelWordClassifier.save_pretrained`; PEFT's own generic card is replaced unless the user wrote one.
    """
    from .cards import MARKER, render_prompt_tuning_card

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


# ---------------------------------------------------------------- ensembles
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
        from .classifier import LabelWordClassifier

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
        from .classifier import LabelWordClassifier
        from .peft_model import check_adapter_folder

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
    from .cards import render_prompt_tuning_card

    card = render_prompt_tuning_card(
        peft_model.peft_config[name], template=settings["template"], label_words=settings["label_words"], init=init
    )
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(card)
    if init is not None:
        with open(os.path.join(folder, INIT_FILE), "w", encoding="utf-8") as fh:
            json.dump(init, fh, indent=2)
