"""The tuner layer that holds DecT's tensors: it wraps the LM head and passes its output through unchanged.

Holding the decoder on a PEFT tuner layer gives DecT the usual PEFT life cycle for free: one entry per adapter
name, `set_adapter`, `delete_adapter`, `disable_adapter()`, and `save_pretrained` writing only these tensors.
`AdapterState` is the named view on one adapter's tensors that the DecT core reads and writes.
"""

from __future__ import annotations

import itertools

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .decoder import DecoderWeights, init_radii, init_weights
from .fit import FitResult, shots_of


def module_device(module: nn.Module) -> torch.device | None:
    """Device of a module's tensors (a dynamically quantised linear layer keeps its weight behind a method)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    weight = getattr(module, "weight", None)
    weight = weight() if callable(weight) else weight
    return weight.device if isinstance(weight, torch.Tensor) else None


class DecTLayer(nn.Module, BaseTunerLayer):
    """LM head wrapper with per-adapter decoder tensors.

    Trainable: `dect_W` (d, H) and `dect_radii` (C,). Buffers: `dect_prototypes` (C, d) fixed class prototypes,
    `dect_content_free` (C,) label-word log-probabilities of the content-free input, and `dect_settings`, the fitted
    fusion settings that travel with the weights (read and written through `state(name)`).
    """

    adapter_layer_names = ("dect_W", "dect_radii")
    other_param_names = ("dect_prototypes", "dect_content_free", "dect_settings")

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
        self.radius_init: dict[str, str] = {}  # adapter -> its config's radius_init, read by the Trainer path
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config) -> None:
        """(Re)initialise an adapter's tensors from its config: seeded W and prototypes, zero radii, not fitted."""
        num_classes = len(config.label_words)
        W, prototypes = init_weights(self.hidden_size, config.decoder_dim, num_classes, config.seed)
        device = module_device(self.base_layer)
        self.dect_W[adapter_name] = nn.Parameter(W.to(device))
        self.dect_radii[adapter_name] = nn.Parameter(torch.zeros(num_classes, device=device))
        self.dect_prototypes[adapter_name] = prototypes.to(device)
        self.dect_content_free[adapter_name] = torch.zeros(num_classes, device=device)
        self.dect_settings[adapter_name] = AdapterState.initial_settings(config, device)
        self.radius_init[adapter_name] = config.radius_init
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def state(self, adapter_name: str) -> AdapterState:
        return AdapterState(self, adapter_name)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.base_layer(x, *args, **kwargs)

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        raise ValueError("DecT adds a decoder on top of the frozen model; there is nothing to merge into its weights.")

    def unmerge(self) -> None:
        return None

    def __repr__(self) -> str:
        return "dect." + super().__repr__()


class AdapterState:
    """One adapter's DecT state in a `DecTLayer`, by name: decoder weights, content-free scores, fusion settings.

    The settings are saved as one small tensor `dect_settings` = [lam, calibrate, fitted, content-free ready], the
    layout of every adapter format so far; only this class knows it.
    """

    _LAM, _CALIBRATE, _FITTED, _CF_READY = range(4)

    def __init__(self, layer: DecTLayer, name: str) -> None:
        self.layer = layer
        self.name = name

    @classmethod
    def initial_settings(cls, config, device=None) -> torch.Tensor:
        lam = float("nan") if config.lam is None else float(config.lam)
        return torch.tensor([lam, float(config.calibrate), 0.0, 0.0], device=device)

    @property
    def _settings(self) -> torch.Tensor:
        return self.layer.dect_settings[self.name]

    def _flag(self, index: int) -> bool:
        return bool(self._settings[index] > 0.5)

    def _set(self, index: int, value: float) -> None:
        with torch.no_grad():
            self._settings[index] = value

    @property
    def device(self) -> torch.device:
        return self._settings.device

    @property
    def fitted(self) -> bool:
        return self._flag(self._FITTED)

    @fitted.setter
    def fitted(self, value: bool) -> None:
        self._set(self._FITTED, float(value))

    @property
    def lam(self) -> float:
        """Fusion weight of the calibrated prior (NaN while neither configured nor fitted)."""
        return float(self._settings[self._LAM])

    @lam.setter
    def lam(self, value: float) -> None:
        self._set(self._LAM, float(value))

    @property
    def calibrate(self) -> bool:
        return self._flag(self._CALIBRATE)

    @property
    def content_free(self) -> torch.Tensor | None:
        """Label-word log-probabilities of the content-free input, None until computed."""
        return self.layer.dect_content_free[self.name] if self._flag(self._CF_READY) else None

    @content_free.setter
    def content_free(self, value: torch.Tensor | None) -> None:
        if value is not None:
            cf = self.layer.dect_content_free[self.name]
            with torch.no_grad():
                cf.copy_(value.to(cf))
        self._set(self._CF_READY, float(value is not None))

    @property
    def weights(self) -> DecoderWeights | None:
        """The fitted decoder (one member), None before fitting."""
        if not self.fitted:
            return None
        layer, name = self.layer, self.name
        return DecoderWeights(
            layer.dect_W[name].unsqueeze(0), layer.dect_radii[name].unsqueeze(0), layer.dect_prototypes[name]
        )

    def start_training(self, hidden: torch.Tensor, labels: torch.Tensor) -> None:
        """Trainer path, first batch: the paper's data-dependent radii, lam = 1/shots unless set; now fitted."""
        layer, name = self.layer, self.name
        num_classes = layer.dect_radii[name].numel()
        with torch.no_grad():
            W = layer.dect_W[name].detach().unsqueeze(0)
            weight = torch.ones(1, labels.shape[0], device=W.device)
            normalized = layer.radius_init.get(name) != "reference"
            radii = init_radii(W, hidden.to(W), labels.to(W.device), weight, num_classes, normalized)
            layer.dect_radii[name].copy_(radii[0])
        if self.lam != self.lam:  # NaN: neither configured nor set by prepare_dataset
            self.lam = 1.0 / shots_of(labels, num_classes)
        self.fitted = True

    def write(self, result: FitResult) -> None:
        """Store a fit: the decoder's tensors and the settings it predicts with."""
        layer = self.layer
        with torch.no_grad():
            layer.dect_W[self.name].copy_(result.weights.W[0])
            layer.dect_radii[self.name].copy_(result.weights.radii[0])
            layer.dect_prototypes[self.name].copy_(result.weights.prototypes)
        self.lam = result.lam
        self._set(self._CALIBRATE, float(result.calibrate))
        self.fitted = True
