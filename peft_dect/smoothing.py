"""SmoothQuant (Xiao et al., ICML 2023) for Llama-style decoder layers: move activation outliers into the weights.

A linear layer's int8 error is set by the largest channel of its input, and a few input channels of a transformer's
linear layers are tens of times larger than the rest. For a per-channel factor `s`, `x W^T = (x / s) (W s)^T`
exactly: folding `1 / s` into what produces `x` (an RMSNorm's weight before the attention and MLP projections, the
up-projection before the down-projection, the value projection before the output projection) and `s` into the
layer's weight columns leaves the float model's outputs unchanged and flattens its inputs, with
`s_j = max|x_j| ** alpha / max|W_:j| ** (1 - alpha)` measured on a few calibration texts (alpha 0: nothing moves,
1: the whole range moves into the weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


EPS = 1e-5
PROJECTIONS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def channel_absmax(model: nn.Module, tokenizer, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per input channel, the largest absolute input of every `nn.Linear` of `model` over `texts`."""
    seen: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0).float()
            seen[name] = torch.maximum(seen[name], x) if name in seen else x

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for text in texts:
                model(**{k: v.to(device) for k, v in tokenizer(text, return_tensors="pt").items()})
    finally:
        for handle in handles:
            handle.remove()
    return seen


def decoder_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Llama-style decoder layer: RMSNorms before attention and MLP, q/k/v/o and
    gate/up/down projections (Llama, Mistral, Qwen2, SmolLM2, ...)."""
    found = []
    for name, module in model.named_modules():
        parts = {part: getattr(module, part, None) for part in PROJECTIONS}
        norms = (getattr(module, "input_layernorm", None), getattr(module, "post_attention_layernorm", None))
        if any(n is None or getattr(n, "weight", None) is None for n in norms) or None in parts.values():
            continue
        if all(
            isinstance(getattr(parts[p], proj, None), nn.Linear) for p, projs in PROJECTIONS.items() for proj in projs
        ):
            found.append((name, module))
    return found


def factors(absmax: torch.Tensor, weights: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    """SmoothQuant's per-channel factors for an input of largest values `absmax` read by `weights` (out, in)."""
    return balance(absmax, torch.stack([x.abs().amax(0) for x in weights]).amax(0), alpha)


def balance(absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """`absmax ** alpha / weight_absmax ** (1 - alpha)`, kept away from 0."""
    return (absmax.clamp(min=EPS) ** alpha / weight_absmax.clamp(min=EPS) ** (1 - alpha)).clamp(min=EPS)


@torch.no_grad()
def smooth_layer(layer: nn.Module, absmax: dict[str, torch.Tensor], prefix: str, alpha: float) -> None:
    """Fold SmoothQuant's factors into one decoder layer, in place (`absmax` by module name, `prefix` the layer's)."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv = (attn.q_proj, attn.k_proj, attn.v_proj)
    s = factors(absmax[f"{prefix}self_attn.q_proj"], [proj.weight for proj in qkv], alpha)
    layer.input_layernorm.weight.div_(s)
    for proj in qkv:
        proj.weight.mul_(s)
    s = factors(absmax[f"{prefix}mlp.gate_proj"], [mlp.gate_proj.weight, mlp.up_proj.weight], alpha)
    layer.post_attention_layernorm.weight.div_(s)
    for proj in (mlp.gate_proj, mlp.up_proj):
        proj.weight.mul_(s)
    s = factors(absmax[f"{prefix}mlp.down_proj"], [mlp.down_proj.weight], alpha)
    _scale_rows(mlp.up_proj, 1 / s)  # down_proj reads silu(gate) * up: one factor per up-projection row
    mlp.down_proj.weight.mul_(s)
    # o_proj reads the heads' values; a key/value head serves `groups` query heads, which share its factors
    kv_channels, o_channels = attn.v_proj.out_features, attn.o_proj.in_features
    groups = o_channels // kv_channels
    head_dim = getattr(attn, "head_dim", None) or o_channels // attn.config.num_attention_heads
    kv_heads = kv_channels // head_dim
    a = absmax[f"{prefix}self_attn.o_proj"].view(kv_heads, groups, head_dim).amax(1)
    w = attn.o_proj.weight.abs().amax(0).view(kv_heads, groups, head_dim).amax(1)
    s = balance(a, w, alpha)
    _scale_rows(attn.v_proj, 1 / s.reshape(-1))
    attn.o_proj.weight.mul_(s[:, None, :].expand(-1, groups, -1).reshape(-1))


def _scale_rows(linear: nn.Linear, factor: torch.Tensor) -> None:
    linear.weight.mul_(factor[:, None])
    if linear.bias is not None:
        linear.bias.mul_(factor)


def smooth(model: nn.Module, tokenizer, texts: Sequence[str], alpha: float) -> int:
    """Apply SmoothQuant to every Llama-style decoder layer of `model`, in place; returns how many were smoothed.
    The float model must compute what it computed before (checked on the first text): a model whose norms do not
    fold (a norm with an offset, as Gemma's `1 + weight`) or with no such layer is refused."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"smooth_alpha must be a number in [0, 1] (SmoothQuant's migration strength), got {alpha!r}.")
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(
            f"smooth_alpha needs Llama-style decoder layers (input_layernorm, self_attn.q/k/v/o_proj, "
            f"post_attention_layernorm, mlp.gate/up/down_proj); {type(model).__name__} has none: leave it None."
        )
    ids = {k: v.to(next(model.parameters()).device) for k, v in tokenizer(texts[0], return_tensors="pt").items()}
    with torch.no_grad():
        before = model(**ids, output_hidden_states=True).hidden_states[-1]
    absmax = channel_absmax(model, tokenizer, texts)
    for name, layer in layers:
        smooth_layer(layer, absmax, f"{name}." if name else "", alpha)
    with torch.no_grad():
        after = model(**ids, output_hidden_states=True).hidden_states[-1]
    if not torch.allclose(before, after, rtol=1e-3, atol=1e-3 * float(before.abs().max())):
        raise ValueError(
            f"Smoothing changed {type(model).__name__}'s outputs (its norms do not fold a per-channel factor, e.g. "
            "a `1 + weight` norm): quantise it without smooth_alpha."
        )
    return len(layers)
