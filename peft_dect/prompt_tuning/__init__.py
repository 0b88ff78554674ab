"""Prompt tuning (Lester et al., EMNLP 2021) with PEFT's own `PromptTuningConfig`, as a few-shot label-word classifier.

PEFT owns the soft prompt (its embedding, forward, saving); this module adds what few-shot classification needs:

- `prompt_tuning_config` picks the task type that makes PEFT prepend the prompt for a masked or a causal LM;
- `init_soft_prompt` initialises a prompt as in the paper: ``"random"``, ``"sample_vocab"`` or ``"class_label"``
  (the first tokens are the label words' embeddings, the rest sampled vocabulary);
- `get_prompt_tuning_model` does both and returns a ready `PeftModel`, to be wrapped in a `LabelWordClassifier`.

The default prompt length is 20 tokens: Lester et al. (Fig. 3) find that gains flatten out beyond 20 tokens for
every model size, and 20 leaves room for class-label init of tasks with many label words.
"""

from .adapters import (
    SOFT_PROMPT_FOLDER,
    check_prompt_adapter,
    check_prompt_model,
    load_prompt_model,
    read_prompt_init,
    write_prompt_files,
)
from .ensemble import PromptEnsemble, soft_prompt, stacked_prompt_log_probs
from .init import (
    DEFAULT_PROMPT_LENGTH,
    INITS,
    VOCAB_POOL,
    get_prompt_tuning_model,
    init_soft_prompt,
    label_word_embeddings,
    prompt_init_tensor,
    prompt_task_type,
    prompt_tuning_config,
    vocab_pool,
)


__all__ = [
    "DEFAULT_PROMPT_LENGTH",
    "INITS",
    "SOFT_PROMPT_FOLDER",
    "VOCAB_POOL",
    "PromptEnsemble",
    "check_prompt_adapter",
    "check_prompt_model",
    "get_prompt_tuning_model",
    "init_soft_prompt",
    "load_prompt_model",
    "label_word_embeddings",
    "prompt_init_tensor",
    "prompt_task_type",
    "prompt_tuning_config",
    "read_prompt_init",
    "soft_prompt",
    "stacked_prompt_log_probs",
    "vocab_pool",
    "write_prompt_files",
]
