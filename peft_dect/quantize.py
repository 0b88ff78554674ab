"""int8 weights for a CPU backbone: PyTorch's dynamic quantisation of the linear layers, outlier layers excepted.

Dynamic int8 quantisation scales each layer's input by its largest absolute value. Small causal LMs carry a few
"massive activations" (Sun et al., 2024): in SmolLM2-135M the inputs of a handful of MLP down-projections reach
100 to 3,300 where the others stay under 10, and quantising those layers with one scale per input wipes out every
other feature (hidden-state cosine to float32 0.83). `quantize_int8` measures each linear layer's input on a few
calibration texts and keeps the layers above `outlier_threshold` in float32, as LLM.int8() keeps outlier features
in higher precision; the LM head (the label words' scores) stays float32 too. It narrows the accuracy loss, it does
not remove it (figures at `OUTLIER_THRESHOLD`). `smooth_alpha` adds SmoothQuant (`peft_dect.smoothing`): the
remaining layers' input outliers are folded into their weights, which are then quantised per output channel
(figures at `SMOOTH_ALPHA`).

`activations="per_token"` replaces that scheme: every body layer becomes a `peft_dect.int8_linear.Int8Linear`, whose
input gets one scale per token, so a massive activation costs only its own token's precision and no layer needs to
stay in float32; with SmoothQuant at `SMOOTH_ALPHA_PER_TOKEN` it is the int8 path closest to float32 (on SmolLM2-135M
hidden-state cosine 0.998, DecT's test accuracy 0.3 and 1.7 points below float32 on SST-2 and CR at 2.3x to 2.4x its
prediction speed; benchmarks/speed.py).
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from .int8_linear import Int8Linear
from .smoothing import channel_absmax, smooth


logger = logging.getLogger(__name__)

# Inputs larger than this (absolute) mark an outlier layer. The rule's reason is a ratio that carries over: int8 has
# 127 steps, and typical inputs of a transformer's linear layers are of order 1 to 10 (SmolLM2-135M: 1 to 11 for
# the attention projections, 3 to 26 for most MLP down-projections), so an input scale 20 times a typical one
# leaves the typical features a few steps. On SmolLM2-135M it keeps 16 of the body's 210 layers in float32
# (calibration: 8 SST-2 training sentences); hidden-state cosine to float32 0.96 against 0.83 with every layer
# quantised, and DecT's test accuracy (SST-2, CR; 5 seeds, benchmarks/speed.py) 5.9 and 5.3 points below float32
# against 17.6 and 18.3 with every layer quantised, at 2.7x float32's prediction speed against 3.7x.
OUTLIER_THRESHOLD = 20.0
# SmoothQuant's migration strength for `quantize_int8(..., smooth_alpha=SMOOTH_ALPHA)`. Chosen by the agreement of
# SmolLM2-135M's int8 hidden states with float32 on the SST-2 and CR dev sentences (no labels read;
# benchmarks/int8_smooth_dev.py): with every body layer int8, alpha 0.5 / 0.6 / 0.7 / 0.8 / 0.9 gave cosines 0.970 /
# 0.983 / 0.987 / 0.986 / 0.981 (0.881 unsmoothed); with the outlier layers kept, 0.992 to 0.994 for all of them
# (0.971 unsmoothed). The SmoothQuant paper uses 0.5 for most models and up to 0.85 for those with larger outliers.
SMOOTH_ALPHA = 0.7
# The same for `activations="per_token"` (same study, every body layer int8): alpha none / 0.4 / 0.5 / 0.6 / 0.7 /
# 0.8 / 0.9 gave cosines 0.9939 / 0.9970 / 0.9980 / 0.9983 / 0.9980 / 0.9957 / 0.9946, and at 0.6 the smallest
# label-score difference (0.36) with every dev sentence's label-word order kept. One scale per token already keeps
# a massive activation from flattening the other tokens; smoothing then evens out the channels within a token.
SMOOTH_ALPHA_PER_TOKEN = 0.6
ACTIVATIONS = ("per_tensor", "per_token")
# Calibration texts when none are given: plain sentences of several kinds (reviews, requests, news, facts), so that
# every model quantised without texts of its own is quantised the same way (the command line's `--int8` fits and
# predicts with one int8 model). On SmolLM2-135M, per token at SMOOTH_ALPHA_PER_TOKEN, they give a hidden-state
# cosine to float32 of 0.9984 on the SST-2 and CR dev sentences, against 0.9983 with 8 SST-2 training sentences
# (benchmarks/int8_smooth_dev.py --builtin-calibration; results/int8_calibration_dev.json).
CALIBRATION_TEXTS = (
    "The meeting was moved to Thursday afternoon because the room was booked.",
    "I ordered a new card last week and it still has not arrived.",
    "How do I reset my password if I no longer have access to my email?",
    "The film starts slowly, but the last hour is gripping and beautifully shot.",
    "Water boils at a lower temperature at high altitude.",
    "She said the battery lasts two days, which matched what the reviews claimed.",
    "Is there a fee for transferring money to an account abroad?",
    "The committee approved the budget after a long debate on Monday.",
)


def input_absmax(model: nn.Module, tokenizer, texts: Sequence[str]) -> dict[str, float]:
    """The largest absolute input of every `nn.Linear` of `model` over `texts` (one forward pass per text)."""
    return {name: float(values.max()) for name, values in channel_absmax(model, tokenizer, texts).items()}


def quantize_int8(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str] | None = None,
    *,
    outlier_threshold: float | None = None,
    smooth_alpha: float | None = None,
    activations: str = "per_tensor",
) -> tuple[nn.Module, list[str]]:
    """A copy of `model` whose linear layers have int8 weights and dynamically quantised inputs (CPU), except the LM
    head and the layers whose inputs on `texts` exceed `outlier_threshold`; returns (the copy, the names of the
    linear layers not quantised). Pass it to `get_peft_model` like any model.

    `texts` are a few inputs like the task's (e.g. 8 training texts; default `CALIBRATION_TEXTS`): they locate
    the outlier layers and, with `smooth_alpha` (e.g. `SMOOTH_ALPHA`), measure SmoothQuant's per-channel factors for
    Llama-style decoder layers, whose weights are then quantised per output channel. `activations`: `"per_tensor"`
    (PyTorch's `quantize_dynamic`, one scale per layer input; `outlier_threshold` defaults to `OUTLIER_THRESHOLD`)
    or `"per_token"` (`Int8Linear`, one scale per token; no outlier layer by default, `smooth_alpha` is best at
    `SMOOTH_ALPHA_PER_TOKEN`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_int8 takes a torch model, got {type(model).__name__}.")
    texts = CALIBRATION_TEXTS if texts is None else texts
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("quantize_int8 needs a non-empty list of calibration texts (e.g. 8 training texts).")
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}.")
    if outlier_threshold is None:
        outlier_threshold = OUTLIER_THRESHOLD if activations == "per_tensor" else math.inf
    threshold = outlier_threshold
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
        raise ValueError(f"outlier_threshold must be a positive number (or math.inf: no outlier), got {threshold!r}.")
    dtypes = {p.dtype for p in model.parameters()}
    devices = {p.device.type for p in model.parameters()}
    if dtypes != {torch.float32} or devices != {"cpu"}:
        raise ValueError(
            f"Dynamic int8 quantisation runs float32 models on the CPU; this one is {sorted(map(str, dtypes))} on "
            f"{sorted(devices)}: load it in float32 on the CPU (or use dtype='bfloat16' on a GPU instead)."
        )
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    absmax = input_absmax(model, tokenizer, texts)
    names = {m: n for n, m in model.named_modules()}
    head_name = names.get(head) if head is not None else None
    in_head = lambda n: head_name is not None and (n == head_name or n.startswith(f"{head_name}."))  # noqa: E731
    # (a model that already carries a DecT adapter wraps its head: the linear layer inside stays float32 too)
    kept = [n for n, v in absmax.items() if in_head(n) or not math.isfinite(v) or v > threshold]
    copied = copy.deepcopy(model)
    qconfig = torch.ao.quantization.default_dynamic_qconfig
    if smooth_alpha is not None:
        smoothed = smooth(copied, tokenizer, texts, smooth_alpha)
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        logger.info("int8: SmoothQuant (alpha %g) folded into %d decoder layers.", smooth_alpha, smoothed)
    spec = {n: qconfig for n in absmax if n not in kept}
    if activations == "per_token":
        quantized = copied
        for name in spec:
            parent, _, child = name.rpartition(".")
            owner = quantized.get_submodule(parent) if parent else quantized
            setattr(owner, child, Int8Linear.from_linear(getattr(owner, child)))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notices
            quantized = torch.ao.quantization.quantize_dynamic(copied, spec, dtype=torch.qint8, inplace=True)
    logger.info(
        "int8 (%s): %d linear layers quantised, %d kept in float32 (%s).",
        activations,
        len(spec),
        len(kept),
        ", ".join(kept),
    )
    return quantized.eval(), kept
