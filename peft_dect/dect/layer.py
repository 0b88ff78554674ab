"""The tuner layer that holds DecT's tensors: it wraps the LM head and passes its output through unchanged.

Holding the decoder on a PEFT tuner layer gives DecT the usual PEFT life cycle for free: one entry per adapter
name, `set_adapter`, `delete_adapter`, `disable_adapter()`, and `save_pretrained` writing only these tensors.
"""

from __future__ import annotations

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .decoder import init_weights


class DecTLayer(nn.Module, BaseTunerLayer):
    """LM head wrapper with per-adapter decoder tensors.

    Trainable: `dect_W` (d, H) and `dect_radii` (C,). Buffers: `dect_prototypes` (C, d) fixed class prototypes,
    `dect_content_free` (C,) label-word log-probabilities of the content-free input, and `dect_settings`
    [lam, calibrate, fitted, content_free_ready], the fitted fusion settings that travel with the weights.
    """

    adapter_layer_names = ("dect_W", "dect_radii")
    other_param_names = ("dect_prototypes", "dect_content_free", "dect_settings")

    LAM, CALIBRATE, FITTED, CF_READY = range(4)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, hidden_size: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.hidden_size = hidden_size
        self.dect_W = nn.ParameterDict({})
        self.dect_radii = nn.ParameterDict({})
        self.dect_prototypes = BufferDict({}, persistent=True)
        self.dect_content_free = BufferDict({}, persistent=True)
        self.dect_settings = BufferDict({}, persistent=True)
        self._active_adapter = adapter_name
        self.merged_adapters = []
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config) -> None:
        num_classes = len(config.label_words)
        W, prototypes = init_weights(self.hidden_size, config.decoder_dim, num_classes, config.seed)
        device = self.base_layer.weight.device if hasattr(self.base_layer, "weight") else None
        self.dect_W[adapter_name] = nn.Parameter(W.to(device))
        self.dect_radii[adapter_name] = nn.Parameter(torch.zeros(num_classes, device=device))
        self.dect_prototypes[adapter_name] = prototypes.to(device)
        self.dect_content_free[adapter_name] = torch.zeros(num_classes, device=device)
        lam = float("nan") if config.lam is None else float(config.lam)
        self.dect_settings[adapter_name] = torch.tensor([lam, float(config.calibrate), 0.0, 0.0], device=device)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.base_layer(x, *args, **kwargs)

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        raise ValueError("DecT adds a decoder on top of the frozen model; there is nothing to merge into its weights.")

    def unmerge(self) -> None:
        return None

    def __repr__(self) -> str:
        return "dect." + super().__repr__()
