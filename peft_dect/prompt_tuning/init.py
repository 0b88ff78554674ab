"""Soft prompts as in Lester et al.: PEFT's PromptTuningConfig with the right task type, and the paper's inits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from peft import PeftModel, PromptTuningConfig, get_peft_model
from torch import nn

from ..introspect import CAUSAL, lm_kind
from ..prompting import Template, normalize_label_words
from ..prompting.verbalizer import word_token_ids


DEFAULT_PROMPT_LENGTH = 20
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
    config = prompt_config(peft_model, name)
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


def prompt_config(peft_model, name: str) -> PromptTuningConfig:
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
        # prompt learning wraps the LM itself; other PEFT methods wrap it in a tuner
        base = model.base_model if model.active_peft_config.is_prompt_learning else model.get_base_model()
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
