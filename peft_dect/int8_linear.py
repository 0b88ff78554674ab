"""A W8A8 linear layer for the CPU: int8 weights per output channel, inputs quantised to int8 per token as it runs.

PyTorch's dynamic quantisation (`torch.ao`, deprecated) gives a layer's whole input one scale: one token with a
massive activation, or the longest sentence of a padded batch, sets the step for every other token of the batch, so
a sentence's features depend on its neighbours. Here each row (token) of the input gets its own scale, as in
SmoothQuant's per-token setting and LLM.int8()'s vector-wise quantisation; the product runs in int8 with int32
accumulation (`torch._int_mm`, the kernel torchao builds on; oneDNN with VNNI on x86) and is rescaled in float32.
"""

from __future__ import annotations

import torch
from torch import nn


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 rows, float32 step per row) of `x` flattened to rows of its last dimension: symmetric, 127 steps."""
    rows = x.reshape(-1, x.shape[-1]).float()
    step = rows.abs().amax(dim=1, keepdim=True).clamp_(min=torch.finfo(torch.float32).tiny).div_(127)
    return torch.div(rows, step).round_().to(torch.int8), step  # |value| <= 127 by the choice of step


class Int8Linear(nn.Module):
    """A linear layer whose weight is int8 with one scale per output channel and whose input is quantised to int8
    with one scale per token at each call. Build it with `Int8Linear.from_linear(layer)`; it takes and returns the
    dtype of its input (the product itself is int8, the rescaling float32).

    Args:
        weight (`torch.Tensor`): int8, shape (in_features, out_features): the transposed quantised weight.
        weight_scale (`torch.Tensor`): float32, shape (out_features,): the step of each output channel's weights.
        bias (`torch.Tensor`, *optional*): float32, shape (out_features,).
    """

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if weight.dtype != torch.int8 or weight.dim() != 2:
            raise TypeError(f"Int8Linear needs a 2-D int8 weight, got {weight.dtype} of shape {tuple(weight.shape)}.")
        if weight_scale.shape != (weight.shape[1],):
            raise ValueError(f"weight_scale must have shape ({weight.shape[1]},), got {tuple(weight_scale.shape)}.")
        self.in_features, self.out_features = weight.shape
        self.register_buffer("weight_t", weight.contiguous())
        self.register_buffer("weight_scale", weight_scale.float())
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """The int8 counterpart of `linear` (symmetric, round to nearest, 127 steps each side per output channel)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Int8Linear.from_linear takes an nn.Linear, got {type(linear).__name__}.")
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(quantized.t(), scale, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quantized, step = quantize_rows(x)
        out = torch._int_mm(quantized, self.weight_t).float().mul_(step).mul_(self.weight_scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
