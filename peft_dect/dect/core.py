"""The DecT core that the in-process (`DecTModel`) and the black-box (`BlackBoxDecT`) front-ends share.

A front-end supplies a feature source (anything with a `template` and the `extract` contract of `Backbone` and
`RemoteBackbone`), a config and a state (named decoder tensors and settings, `DecTState`); the core reads the data,
extracts features with the content-free input, fits the decoder (faithful or auto), fuses its scores with the
calibrated prior and gives class logits:

    q = softmax(label_logits - content_free),   logits_k = -|| W h / ||W h|| - p_k || + r_k + lam * q_k

Before fitting, and while adapters are disabled, the logits are the zero-shot log q.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..data import split_by_label
from ..features import Features
from ..metrics import resolve_metric
from ..prompting import Template, calibrated_probs, content_free_texts
from ..uncertainty import Calibration, fit_calibration, text_key
from . import decoder
from .fit import FitResult, fit_decoder, shots_of
from .multilabel import fit_multilabel, prior_log_odds


logger = logging.getLogger(__name__)


class FeatureSource(Protocol):
    """What the core needs of a model: the prompt's template and features for texts (see `Backbone.extract`)."""

    template: Template
    show_progress: bool  # progress bars on long work (extraction, the decoder's training)

    def extract(
        self, texts_a: Sequence[str], texts_b: Sequence[str | None] | None = None, *, desc: str = "features"
    ) -> Features: ...


class StateLike(Protocol):
    """A DecT adapter's fitted state: `DecTState`, or the view on a tuner layer's tensors (`AdapterState`)."""

    content_free: torch.Tensor | None
    lam: float

    @property
    def weights(self) -> decoder.DecoderWeights | None: ...

    @property
    def calibrate(self) -> bool: ...

    @property
    def device(self) -> torch.device: ...

    def write(self, result: FitResult) -> None: ...


@dataclass
class DecTState:
    """A DecT adapter's fitted state held in plain tensors (the black-box front-end's)."""

    weights: decoder.DecoderWeights | None = None
    content_free: torch.Tensor | None = None
    lam: float = 0.0
    calibrate: bool = True

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def write(self, result: FitResult) -> None:
        self.weights, self.lam, self.calibrate = result.weights, float(result.lam), bool(result.calibrate)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of a saved adapter, named as a DecT tuner layer names them (`dect_W`, ...)."""
        if self.content_free is None:
            raise ValueError("Nothing to save yet: call fit() first.")
        out = {"dect_content_free": self.content_free.contiguous()}
        if self.weights is not None:
            out |= {
                "dect_W": self.weights.W[0].contiguous(),
                "dect_radii": self.weights.radii[0].contiguous(),
                "dect_prototypes": self.weights.prototypes.contiguous(),
            }
        return out

    def load_tensors(self, tensors: dict[str, torch.Tensor], num_classes: int, where: str) -> None:
        """Take the decoder and content-free scores from saved `tensors` (of `where`), checked first."""
        cf = tensors.get("dect_content_free")
        if cf is None or cf.shape != (num_classes,):
            raise ValueError(f"{where} has no content-free scores for {num_classes} classes.")
        self.content_free = cf
        if "dect_W" in tensors:
            W, radii, protos = (tensors.get(k) for k in ("dect_W", "dect_radii", "dect_prototypes"))
            if radii is None or protos is None or radii.shape != (num_classes,) or protos.shape[0] != num_classes:
                raise ValueError(f"{where} holds an incomplete decoder; save the adapter again.")
            self.weights = decoder.DecoderWeights(W.unsqueeze(0), radii.unsqueeze(0), protos)


def zero_shot_logits(
    label_logits: torch.Tensor, content_free: torch.Tensor | None, multi_label: bool = False
) -> torch.Tensor:
    """The zero-shot classifier's class logits: log q, calibrated when `content_free` is given; for a multi-label
    adapter the per-class log-ratios of `multilabel.prior_log_odds` (a class is predicted where it is positive)."""
    if multi_label:
        return prior_log_odds(label_logits, content_free)
    return torch.log(calibrated_probs(label_logits, content_free).clamp_min(1e-30))


def check_finite_state(weights: decoder.DecoderWeights | None, content_free: torch.Tensor | None, lam) -> None:
    """Refuse decoder tensors, content-free scores or a fusion weight holding NaN or infinity (a corrupt or edited
    adapter): they would give NaN probabilities, and the first class for every input, without a word."""
    named = {"content-free scores (dect_content_free)": content_free}
    if weights is not None:
        named |= {"dect_W": weights.W, "dect_radii": weights.radii, "dect_prototypes": weights.prototypes}
    bad = [name for name, t in named.items() if t is not None and not bool(torch.isfinite(t).all())]
    if lam is not None and not math.isfinite(lam):
        bad.append(f"lam ({lam})")
    if bad:
        raise ValueError(
            f"The adapter's decoder tensors hold NaN or infinite values ({', '.join(bad)}): the adapter file is "
            "corrupt or was fitted on broken features; fit it again (or load an intact copy)."
        )


def class_logits(
    state: StateLike, features: Features, *, zero_shot: bool = False, multi_label: bool = False
) -> torch.Tensor:
    """Class logits (N, C): the decoder's fused scores, or the zero-shot log q before fitting or when `zero_shot`
    (disabled adapters: calibrated whenever the content-free scores are known). A multi-label adapter's prior is
    the per-class log-ratio of `multilabel.prior_log_odds` and its logits are per-class log-odds."""
    weights = None if zero_shot else state.weights
    calibrate = zero_shot or state.calibrate
    content_free = state.content_free if calibrate else None
    check_finite_state(weights, content_free, None if weights is None else state.lam)
    # The decoder computes in float32 whatever dtype the model was moved to (bfloat16 tensors, float32 features).
    if weights is not None:
        weights = decoder.DecoderWeights(weights.W.float(), weights.radii.float(), weights.prototypes.float())
    content_free = None if content_free is None else content_free.float()
    label_logits = features.label_logits.to(state.device, torch.float32)
    if weights is None:
        return zero_shot_logits(label_logits, content_free, multi_label)
    if features.hidden.shape[1] != weights.W.shape[-1]:
        raise ValueError(
            f"The features have width {features.hidden.shape[1]}, but this decoder was fitted on width "
            f"{weights.W.shape[-1]}: they come from another model than the one the adapter was fitted on."
        )
    q = prior_log_odds(label_logits, content_free) if multi_label else calibrated_probs(label_logits, content_free)
    return decoder.scores(weights, features.hidden.to(state.device, torch.float32), q, state.lam)[0]


class DecTCore:
    """One DecT adapter at work: its config (prompt, columns, decoder settings), a feature source and its state."""

    def __init__(self, config, source: FeatureSource, state: StateLike) -> None:
        self.config = config
        self.source = source
        self.state = state

    def features(self, datasets: list, desc: str) -> list[Features]:
        """Features of several datasets (and of the content-free input, while the state lacks it) in one extraction.

        One call sorts all new inputs by length together, so batches waste less padding than one call per split.
        """
        sets = [self.config.read_texts(data) for data in datasets]
        with_cf = self.state.content_free is None
        if with_cf:
            a, b = content_free_texts(self.source.template)
            sets.append(([a], None if b is None else [b]))
        texts_a = [t for a, _ in sets for t in a]
        texts_b = [t for _, b in sets for t in b] if self.source.template.is_pair else None
        feats = self.source.extract(texts_a, texts_b, desc=desc)
        parts, start = [], 0
        for a, _ in sets:
            parts.append(feats[start : start + len(a)])
            start += len(a)
        if with_cf:
            self.state.content_free = parts.pop().label_logits[0].clone()
        return parts

    def fit(self, train_dataset, eval_dataset=None, *, with_decoder: bool = True, metric=None) -> dict:
        """Extract the training (and, in auto mode, eval) features, fit the decoder and store it in the state.

        Auto mode chooses by `metric` (a name of `peft_dect.metrics.METRICS`, a callable or an `evaluate` metric;
        accuracy when None), checked before any model pass, and its held-out predictions make the calibration
        (`config.uncertainty`: temperature, conformal and rejection scores). Rows labelled
        `config.out_of_scope_label` are not trained on: they set the rejection threshold.
        Without a decoder (a server without embeddings) the state keeps the calibrated prior alone. Returns the
        fit's report: the choice, shots, timings.
        """
        cfg = self.config
        t0 = time.perf_counter()
        resolve_metric(metric)  # an unknown metric fails before the model runs
        out_of_scope = None
        if cfg.out_of_scope_label is not None:
            train_dataset, out_of_scope = split_by_label(train_dataset, cfg.label_column, cfg.out_of_scope_label)
        labels = cfg.read_labels(train_dataset)
        use_eval = eval_dataset is not None and cfg.mode == "auto"
        eval_labels = cfg.read_labels(eval_dataset) if use_eval else None
        if eval_dataset is not None and not use_eval:
            logger.warning("Faithful mode chooses nothing on held-out data: eval_dataset is not used by fit().")
        extra = [eval_dataset] if use_eval else []
        extra += [out_of_scope] if out_of_scope is not None and len(out_of_scope[cfg.label_column]) else []
        train, *rest = self.features([train_dataset] + extra, desc="features")
        t1 = time.perf_counter()
        content_free = self.state.content_free
        content_free = content_free.detach().clone().cpu() if (cfg.calibrate or cfg.mode == "auto") else None
        if with_decoder and cfg.multi_label:
            evaluated = rest[0] if use_eval else None
            result, choice = fit_multilabel(
                train, labels, content_free, cfg, evaluated, eval_labels, self.source.show_progress
            )
            self.state.write(result)
            report = self.write_multi_label(choice, cfg.read_texts(train_dataset))
            return {
                **result.report,
                **report,
                "shots": shots_of(labels, len(cfg.classes)),
                "train_examples": int(labels.shape[0]),
                "feature_seconds": t1 - t0,
                "decoder_seconds": time.perf_counter() - t1,
            }
        if with_decoder:
            evaluated = rest[0] if use_eval else None
            result = fit_decoder(
                train, labels, content_free, cfg, evaluated, eval_labels, metric, self.source.show_progress
            )
        else:
            result = FitResult(None, 0.0, cfg.calibrate, 0, {"mode": "logits", "lam": 0.0, "calibrate": cfg.calibrate})
        self.state.write(result)
        oos_logits = class_logits(self.state, rest[-1]).cpu() if len(extra) > int(use_eval) else None
        report = self.calibrate(result, oos_logits, cfg.read_texts(train_dataset))
        t2 = time.perf_counter()
        return {
            **result.report,
            **report,
            "shots": shots_of(labels, len(cfg.classes)),
            "train_examples": int(labels.numel()),
            "feature_seconds": t1 - t0,
            "decoder_seconds": t2 - t1,
        }

    def write_multi_label(self, choice, texts) -> dict:
        """Write a multi-label fit's thresholds and temperature into the config; its held-out figures."""
        cfg = self.config
        keys = [text_key(a, b) for a, b in zip(texts[0], texts[1] or [None] * len(texts[0]))]
        cfg.thresholds = choice.thresholds
        cal = Calibration(
            temperature=choice.temperature,
            ece_before=choice.ece_before,
            ece_after=choice.ece_after,
            heldout=choice.heldout,
            sources=choice.sources,
            training_texts=keys,
        )
        cfg.uncertainty = cal.to_dict()
        if not choice.heldout:
            return {}
        return {
            "temperature": cal.temperature,
            "heldout_ece_before": cal.ece_before,
            "heldout_ece_after": cal.ece_after,
        }

    def calibrate(self, result: FitResult, oos_logits: torch.Tensor | None, texts) -> dict:
        """Write the calibration of a fit into `config.uncertainty` from its held-out predictions; its figures."""
        cfg = self.config
        keys = [text_key(a, b) for a, b in zip(texts[0], texts[1] or [None] * len(texts[0]))]
        if result.heldout is None:
            cal = Calibration(training_texts=keys)
        else:
            sources = result.report.get("selected_on", "")
            logits, labels, split_rows = result.heldout
            cal = fit_calibration(
                logits,
                labels,
                split_rows=split_rows,
                temperature=cfg.calibrate_probabilities,
                oos_logits=oos_logits,
                sources=sources,
                training_texts=keys,
            )
        cfg.uncertainty = cal.to_dict()
        if not cal.has_heldout:
            return {}
        return {
            "temperature": cal.temperature,
            "heldout_ece_before": cal.ece_before,
            "heldout_ece_after": cal.ece_after,
            "out_of_scope_examples": len(cal.oos_unknown_scores),
        }

    def logits(self, inputs, *, zero_shot: bool = False) -> torch.Tensor:
        """Class logits (N, C) of texts, (text_a, text_b) pairs, a dict of columns or a Dataset, on the CPU."""
        (feats,) = self.features([inputs], desc="predict")
        with torch.no_grad():
            return class_logits(self.state, feats, zero_shot=zero_shot, multi_label=self.config.multi_label).cpu()

    def zero_shot_logits(self, inputs, *, calibrate: bool = True) -> torch.Tensor:
        """Zero-shot class log-probabilities (N, C) from the label words alone, calibrated or not."""
        (feats,) = self.features([inputs], desc="predict")
        content_free = self.state.content_free if calibrate else None
        return zero_shot_logits(feats.label_logits, content_free, self.config.multi_label).cpu()


class ConfigUncertainty:
    """The uncertainty state of a DecT front-end, kept in its config so that it saves, loads and pushes with the
    adapter: `calibration` (`config.uncertainty`), `reject_label`, `reject_rate`; and the inputs' texts."""

    @property
    def dect_config(self):
        """The DecT config of the adapter in use."""
        raise NotImplementedError

    @property
    def fit_in_use(self) -> bool:
        """Whether predictions come from the fitted decoder (False while adapters are disabled: zero-shot)."""
        return True

    @property
    def calibration(self) -> Calibration | None:
        saved = self.dect_config.uncertainty
        return None if saved is None or not self.fit_in_use else Calibration.from_dict(saved)

    @calibration.setter
    def calibration(self, value: Calibration | None) -> None:
        self.dect_config.uncertainty = None if value is None else value.to_dict()

    @property
    def multi_label(self) -> bool:
        return bool(self.dect_config.multi_label)

    @property
    def thresholds(self) -> list[float] | None:
        """The fitted per-class thresholds (None while adapters are disabled: 0.5 on the zero-shot log-ratios)."""
        return self.dect_config.thresholds if self.fit_in_use else None

    @property
    def reject_label(self) -> str | None:
        return self.dect_config.reject_label

    @property
    def reject_rate(self) -> float:
        return self.dect_config.reject_rate

    def read_inputs(self, data) -> tuple[list[str], list[str] | None]:
        return self.dect_config.read_texts(data)
