"""What peft-dect needs to know about a model: its kind, its head, its sizes, its fingerprint, its processes.

Nothing here runs the model: these are reads of a transformers model (or a `peft.PeftModel` around one) and of the
`accelerate` launch state, shared by the backbone, the methods and the command line.
"""

from __future__ import annotations

import os

import torch
from accelerate import PartialState
from peft import PeftModel, get_peft_model_state_dict
from torch import nn
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES


MASKED, CAUSAL = "masked", "causal"
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a `peft.PeftModel` (LoRA layers stay injected in it), else `model` itself."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def prepends_virtual_tokens(model: nn.Module) -> bool:
    """Whether `model` is a PeftModel whose active adapter is prompt learning (soft prompts before the input)."""
    return isinstance(model, PeftModel) and bool(model.active_peft_config.is_prompt_learning)


def adapters_disabled(model: nn.Module) -> bool:
    """Whether a PeftModel runs as its base model now (inside `with model.disable_adapter():`)."""
    flag = getattr(model.base_model, "disable_adapters", False)
    return bool(getattr(model, "_adapters_disabled", False)) or (isinstance(flag, bool) and flag)


def embedded_prompt_length(model: nn.Module) -> int:
    """Virtual tokens a PeftModel's active adapter prepends as input embeddings (prompt tuning, P-tuning), else 0."""
    if not prepends_virtual_tokens(model) or adapters_disabled(model):
        return 0
    config = model.active_peft_config
    if getattr(config.peft_type, "value", config.peft_type) not in ("PROMPT_TUNING", "P_TUNING"):
        return 0
    return int(config.num_virtual_tokens)


def text_config(model: nn.Module):
    """The text part of a model's config (multimodal configs nest it), else the config itself."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def lm_kind(model: nn.Module) -> str:
    """'masked' or 'causal' for a transformers LM with its head (or a PeftModel around one); TypeError otherwise."""
    model = unwrap_peft(model)
    name = type(model).__name__
    if name in MODEL_FOR_MASKED_LM_MAPPING_NAMES.values() or name.endswith("ForMaskedLM"):
        kind = MASKED
    elif name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() or name.endswith(("ForCausalLM", "LMHeadModel")):
        kind = CAUSAL
    else:
        kind = None
    get_out = getattr(model, "get_output_embeddings", None)
    if kind is None or get_out is None or get_out() is None:
        raise TypeError(
            f"{name} has no language-modelling head. peft-dect needs the LM head to score label words: load the "
            "model with AutoModelForMaskedLM (BERT, RoBERTa, ...) or AutoModelForCausalLM (Llama, SmolLM2, ...)."
        )
    return kind


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(body, head) such that head(body(x).last_hidden_state) are the vocabulary logits, or None if not separable.

    Applying the head to the prediction position only avoids computing vocabulary logits for every token.
    """
    body = getattr(model, "base_model", model)
    out_emb = model.get_output_embeddings()
    if body is model or out_emb is None:
        return None
    if any(getattr(text_config(model), name, None) for name in LOGIT_POSTPROCESSING):
        return None  # the model rescales its logits after the head (Gemma 2/3, Cohere, Granite): run it whole
    holders, others = [], []
    for _, child in model.named_children():
        if child is body:
            continue
        if any(sub is out_emb for sub in child.modules()):
            holders.append(child)
        elif any(True for _ in child.parameters()):
            others.append(child)
    if len(holders) != 1 or others:
        return None
    return body, holders[0]


def base_model_sizes(model: nn.Module) -> tuple[int, int]:
    """(hidden size, vocabulary size) as the LM head sees them."""
    head = model.get_output_embeddings()
    head = getattr(head, "base_layer", head)
    config = text_config(model)
    # a decoder reads the body's output, which can be wider than the head's input (ALBERT, ELECTRA)
    hidden = getattr(config, "hidden_size", None) or head.in_features
    vocab = getattr(head, "out_features", None) or config.vocab_size
    return int(hidden), int(vocab)


def model_fingerprint(model: nn.Module) -> str:
    """A short id of the weights the features depend on: name, shape and a checksum of a few embedding rows.

    For a PeftModel the active adapters' type and a checksum of their weights are added, so that features of a
    model with a soft prompt or LoRA never mix with those of the bare model (or of another adapter state).
    """
    base = unwrap_peft(model)
    emb = base.get_input_embeddings().weight
    checksum = float(emb.detach()[:: max(1, emb.shape[0] // 64)].double().sum())
    name = getattr(getattr(base, "config", None), "_name_or_path", "") or ""
    key = f"{type(base).__name__}|{name}|{tuple(emb.shape)}|{checksum:.8e}"
    # `disable_adapters` is a flag on PEFT tuners but a method on transformers models (the base of prompt learning)
    if isinstance(model, PeftModel) and not adapters_disabled(model):
        for adapter in model.active_adapters:
            state = get_peft_model_state_dict(model, adapter_name=adapter)
            total = sum(
                float(t.detach().double().sum()) + float(t.detach().double().abs().sum()) for t in state.values()
            )
            key += f"|{model.peft_config[adapter].peft_type}:{adapter}:{total:.10e}"
    return key


def tokenizer_fingerprint(tokenizer) -> str:
    """A short id of how a tokenizer turns prompts into ids: name, size and the ids of a probe sentence."""
    probe = tokenizer("Tokenizer probe: a gorgeous, moving film.", add_special_tokens=True)["input_ids"]
    return f"{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer)}|{probe}"


def default_max_length(model: nn.Module, tokenizer) -> int:
    """Longest prompt in tokens: the tokenizer's and the position embeddings' limit, less any soft-prompt tokens."""
    base = unwrap_peft(model)
    limits = [getattr(tokenizer, "model_max_length", None), getattr(base.config, "max_position_embeddings", None)]
    limits = [int(x) for x in limits if x is not None and 0 < x < 1_000_000]
    if getattr(base.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limits = [x - 2 if x == base.config.max_position_embeddings else x for x in limits]
    limit = min(limits) if limits else 512
    if prepends_virtual_tokens(model):
        limit -= int(model.active_peft_config.num_virtual_tokens)
    return limit


def hidden_size(model: nn.Module) -> int:
    """Width of the hidden states at the prediction position (the body's output)."""
    base = unwrap_peft(model)
    return getattr(base.config, "hidden_size", None) or base.get_input_embeddings().weight.shape[1]


def distributed_state():
    """accelerate's `PartialState` when this process is one of several (`accelerate launch`), else None."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not launched and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    # Without an accelerator, processes started by `accelerate launch --multi_gpu` / torchrun talk over gloo.
    accelerator = getattr(torch, "accelerator", None)
    has_accelerator = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    return PartialState(cpu=not has_accelerator)
