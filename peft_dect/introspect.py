"""What peft-dect needs to know about a model: its kind, its head, its sizes, its fingerprint, its processes.

Nothing here runs the model: these are reads of a transformers model (or a `peft.PeftModel` around one) and of the
`accelerate` launch state, shared by the backbone, the methods and the command line.
"""

from __future__ import annotations

import hashlib
import os
import weakref

import torch
from accelerate import PartialState
from peft import PeftModel, get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
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


# Tensors of at most this many elements are hashed whole (norms, biases, soft prompts, small heads); larger ones
# by this many evenly strided elements. Chosen so that fingerprinting SmolLM2-135M costs milliseconds (see README).
FINGERPRINT_WHOLE = 65_536
FINGERPRINT_SAMPLES = 4_096


def _tensor_digest(digest, name: str, tensor: torch.Tensor) -> None:
    """Feed a tensor's name, shape, dtype and contents (whole, or a strided sample when large) to `digest`."""
    digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
    if tensor.is_meta or tensor.numel() == 0:
        return  # offloaded to disk or empty: only its name and shape are known
    flat = tensor.detach().reshape(-1)
    if flat.numel() > FINGERPRINT_WHOLE:
        step = flat.numel() // FINGERPRINT_SAMPLES
        flat = flat[step // 2 :: step][:FINGERPRINT_SAMPLES]  # an odd offset: not only the rows' first columns
    try:
        digest.update(flat.contiguous().cpu().view(torch.uint8).numpy().tobytes())
    except (RuntimeError, TypeError):  # quantized or otherwise opaque storage: hash its values instead
        digest.update(repr(flat.float().cpu().tolist()).encode())


def _passes_through(layer: nn.Module) -> bool:
    """Whether a PEFT tuner layer's output equals its base layer's now (so its adapter tensors change no feature).

    Probed on one fixed input row: DecT's layer around the LM head holds the decoder, which no forward pass reads;
    a LoRA layer whose update is still zero (or that is disabled) gives its base layer's output too, and the
    moment its update changes the output, its tensors count. Layers that cannot be probed always count.
    """
    base = getattr(layer, "base_layer", None)
    weight = getattr(base, "weight", None)
    if not isinstance(base, nn.Linear) or weight is None or weight.is_meta:
        return False
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(1, base.in_features, generator=generator).to(device=weight.device, dtype=weight.dtype)
    modes = [(module, module.training) for module in layer.modules()]
    layer.eval()  # features are extracted in eval mode (no dropout)
    try:
        with torch.no_grad():
            out = layer(probe)
            return isinstance(out, torch.Tensor) and torch.equal(out, base(probe))
    except Exception:  # noqa: BLE001 - any layer that cannot run the probe is simply counted
        return False
    finally:
        for module, mode in modes:
            module.training = mode


# tuner layer -> (digest of its tensors and state when probed, whether it passed its base layer's output through)
_PROBED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def weights_fingerprint(model: nn.Module) -> str:
    """A digest of every parameter and buffer a forward pass of `model` can read: names, shapes, dtypes, values.

    Guarantees: it is certain to change when a tensor is added, removed, renamed, reshaped or cast, when any
    tensor of at most `FINGERPRINT_WHOLE` elements changes at all (norms, biases, soft prompts), and when any
    sampled element of a larger tensor changes; an update that touches a fraction f of a large tensor's elements
    goes unseen with probability about (1 - f) ** FINGERPRINT_SAMPLES, i.e. never in practice for fine-tuning,
    a merged LoRA, a soft prompt trained further or any dense update (f = 1). A change to a few isolated elements
    of a large matrix (a hand edit of one weight) can go unseen. Tensors of PEFT tuner layers that pass their base
    layer's output through unchanged (see `_passes_through`) are left out, with the names of their active
    adapters: they change no feature, so two DecT adapters with one prompt share their features.
    Cost: one strided read of at most `FINGERPRINT_SAMPLES` elements per tensor (about 20-30 ms for a model of
    SmolLM2-135M's size on 2 CPU cores); a tuner layer is probed again only when its tensors or state changed.
    """
    digest = hashlib.sha256()
    skipped: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            state = f"{name}|{module.active_adapters}|{module.disable_adapters}|{module.merged}"
            layer_digest = hashlib.sha256(state.encode())
            for tensor_name, tensor in (*module.named_parameters(), *module.named_buffers()):
                _tensor_digest(layer_digest, tensor_name, tensor)
            known = _PROBED.get(module)
            if known is None or known[0] != layer_digest.digest():  # probe again only when the layer changed
                known = (layer_digest.digest(), _passes_through(module))
                _PROBED[module] = known
            if known[1]:  # neither its tensors nor which adapter is active change a feature (DecT's layer)
                prefix = f"{name}." if name else ""
                skipped |= {prefix + attr for attr in (*module.adapter_layer_names, *module.other_param_names)}
            else:
                digest.update(state.encode())
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if not any(name == s or name.startswith(s + ".") for s in skipped):
            _tensor_digest(digest, name, tensor)
    return digest.hexdigest()[:32]


def model_fingerprint(model: nn.Module) -> str:
    """A short id of the weights the features depend on: the model class, its name and `weights_fingerprint`.

    For a PeftModel the active adapters' type and a digest of their weights are added, so that features of a
    model with a soft prompt or LoRA never mix with those of the bare model (or of another adapter state). It is
    cheap enough to compute before every feature extraction, so weights updated in place (a soft prompt trained
    further, a LoRA merged) never reuse the features of the old weights.
    """
    base = unwrap_peft(model)
    name = getattr(getattr(base, "config", None), "_name_or_path", "") or ""
    key = f"{type(base).__name__}|{name}|{weights_fingerprint(base)}"
    # `disable_adapters` is a flag on PEFT tuners but a method on transformers models (the base of prompt learning)
    if isinstance(model, PeftModel) and not adapters_disabled(model):
        for adapter in model.active_adapters:
            digest = hashlib.sha256()
            for tensor_name, tensor in sorted(get_peft_model_state_dict(model, adapter_name=adapter).items()):
                _tensor_digest(digest, tensor_name, tensor)
            key += f"|{model.peft_config[adapter].peft_type}:{adapter}:{digest.hexdigest()[:16]}"
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
