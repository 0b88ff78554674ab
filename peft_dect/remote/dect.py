"""Black-box DecT: fit and predict with a model that peft-dect reaches only over HTTP.

The decoder, its fitting and its scores are DecT's own (`peft_dect.dect.fit`, `peft_dect.dect.decoder`); only the
features come from the server: label-word log-probabilities from the top next-token candidates, hidden states from
the prompt's embedding. A server without embeddings gives DecT its logit term alone: calibrated zero-shot scores.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..data import read_labels, read_texts
from ..dect import DecTConfig, decoder
from ..dect.fit import FitResult, fit_auto, fit_faithful, shots_of
from ..features import Features
from ..prompting import calibrated_probs, content_free_texts
from .client import OpenAIEndpoint
from .features import RemoteBackbone


logger = logging.getLogger(__name__)

REMOTE_FILE = "remote_endpoint.json"
WEIGHTS_FILE = "adapter_model.safetensors"
TENSORS = ("dect_W", "dect_radii", "dect_prototypes", "dect_content_free")


class BlackBoxDecT:
    """DecT on a served model: one log-probability request and one embedding per input, then decoder fitting.

    `config` is an ordinary `DecTConfig` (template, label words, mode, decoder settings); demonstrations and soft
    prompts need the model in-process and are refused. `endpoint` is an `OpenAIEndpoint`; its `stats` count every
    request, and `fit` reports the requests, tokens and wall time it cost.
    """

    def __init__(
        self,
        config: DecTConfig,
        endpoint: OpenAIEndpoint,
        *,
        missing_label_words: str = "exact",
        label_token_ids: dict[str, int] | None = None,
        tokenizer=None,
    ) -> None:
        if not isinstance(config, DecTConfig):
            raise TypeError(f"config must be a DecTConfig, got {type(config).__name__}.")
        if not isinstance(endpoint, OpenAIEndpoint):
            raise TypeError(f"endpoint must be a peft_dect.remote.OpenAIEndpoint, got {type(endpoint).__name__}.")
        if config.demonstrations or config.soft_prompt:
            raise ValueError(
                "Black-box DecT sends the template alone: demonstrations and soft prompts need the model in-process "
                "(use get_peft_model with a transformers model)."
            )
        if config.max_length is not None:
            raise ValueError(
                "Black-box DecT cannot truncate prompts (it has no tokenizer): leave max_length=None; the server "
                "refuses prompts longer than its context with an HTTP error that names it."
            )
        self.config = config
        self.endpoint = endpoint
        self.backbone = RemoteBackbone(
            endpoint,
            config.template,
            config.label_words,
            aggregation=config.label_word_aggregation,
            missing=missing_label_words,
            label_token_ids=label_token_ids,
            tokenizer=tokenizer,
            multi_token=config.multi_token,
        )
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = endpoint.model
        self.weights: decoder.DecoderWeights | None = None
        self.content_free: torch.Tensor | None = None
        self.lam = 0.0
        self.calibrate = config.calibrate
        self.last_fit: dict[str, Any] = {}
        self.evaluations: list[dict[str, Any]] = []

    @property
    def classes(self) -> list[str]:
        return self.config.classes

    @property
    def uses_hidden(self) -> bool:
        """Whether the decoder term is used (the server gives embeddings), or the logit term alone."""
        return self.endpoint.embeddings

    # ---------------------------------------------------------------- data
    def _texts(self, data) -> tuple[list[str], list[str] | None]:
        texts_a, texts_b = read_texts(
            data,
            needs_pair=self.backbone.template.is_pair,
            text_column=self.config.text_column,
            text_pair_column=self.config.text_pair_column,
        )
        if not texts_a:
            raise ValueError("The data is empty: DecT needs at least one input.")
        return texts_a, texts_b

    def _labels(self, data) -> torch.Tensor:
        labels = read_labels(data, self.classes, self.config.label_column)
        texts, _ = self._texts(data)
        if len(texts) != labels.numel():
            raise ValueError(f"The data has {len(texts)} texts but {labels.numel()} labels; give one label per text.")
        return labels

    def _features(self, datasets: list, desc: str) -> list[Features]:
        """Features of several datasets, plus the content-free prompt while it is not known, in one extraction."""
        sets = [self._texts(d) for d in datasets]
        with_cf = self.content_free is None
        if with_cf:
            a, b = content_free_texts(self.backbone.template)
            sets.append(([a], None if b is None else [b]))
        texts_a = [t for a, _ in sets for t in a]
        texts_b = [t for _, b in sets for t in b] if self.backbone.template.is_pair else None
        feats = self.backbone.extract(texts_a, texts_b, desc=desc)
        parts, start = [], 0
        for a, _ in sets:
            parts.append(feats[start : start + len(a)])
            start += len(a)
        if with_cf:
            self.content_free = parts.pop().label_logits[0].clone()
        return parts

    # ---------------------------------------------------------------- fitting
    def fit(self, train_dataset, eval_dataset=None) -> dict[str, Any]:
        """Query the server once per new training input (plus the content-free prompt), then fit the decoder.

        Returns DecT's fit report plus what it cost: requests by kind, retries, prompts answered from the cache,
        prompt tokens (as the server counts them) and wall seconds.
        """
        cfg = self.config
        before = self.endpoint.stats.copy()
        missing_before = dict(self.backbone.missing_counts)
        t0 = time.perf_counter()
        labels = self._labels(train_dataset)
        use_eval = eval_dataset is not None and cfg.mode == "auto"
        eval_labels = self._labels(eval_dataset) if use_eval else None
        if eval_dataset is not None and not use_eval:
            logger.warning("Faithful mode chooses nothing on held-out data: eval_dataset is not used by fit().")
        self.content_free = None  # recomputed (from the cache when known): the server may have changed models
        train, *rest = self._features([train_dataset] + ([eval_dataset] if use_eval else []), desc="features")
        t1 = time.perf_counter()
        num_classes = len(self.classes)
        cf = self.content_free if (cfg.calibrate or cfg.mode == "auto") else None
        if self.uses_hidden:
            if cfg.mode == "faithful":
                result = fit_faithful(train, labels, cf, cfg, num_classes)
            else:
                result = fit_auto(train, labels, cf, cfg, num_classes, rest[0] if use_eval else None, eval_labels)
        else:
            result = FitResult(weights=None, lam=0.0, calibrate=cfg.calibrate, epochs=0, report={"mode": "logits"})
        self.weights, self.lam, self.calibrate = result.weights, float(result.lam), bool(result.calibrate)
        cfg.base_hidden_size = int(train.hidden.shape[1]) if self.uses_hidden else None
        t2 = time.perf_counter()
        cost = self.endpoint.stats.since(before)
        self.last_fit = {
            "mode": cfg.mode if self.uses_hidden else "logits",
            "lam": self.lam,
            "calibrate": self.calibrate,
            "epochs": result.epochs,
            **{k: v for k, v in result.report.items() if k not in ("mode",)},
            "shots": shots_of(labels, num_classes),
            "train_examples": int(labels.numel()),
            "model_passes": cost.prompts_sent,
            "requests": cost.requests,
            "completion_requests": cost.completion_requests,
            "embedding_requests": cost.embedding_requests,
            "label_word_requests": cost.forced_requests,
            "retries": cost.retries,
            "cached_prompts": cost.cached_prompts,
            "prompt_tokens": cost.prompt_tokens,
            "feature_seconds": t1 - t0,
            "decoder_seconds": t2 - t1,
            "wall_seconds": t2 - t0,
            "missing_label_words": {
                word: count - missing_before.get(word, 0)
                for word, count in self.backbone.missing_counts.items()
                if count > missing_before.get(word, 0)
            },
        }
        self.evaluations = []
        return self.last_fit

    # ---------------------------------------------------------------- prediction
    def class_logits(self, features: Features) -> torch.Tensor:
        """Class logits (N, C): the fused decoder scores, or log calibrated probabilities before fitting or without
        embeddings (DecT's logit term alone)."""
        q = calibrated_probs(features.label_logits, self.content_free if self.calibrate else None)
        if self.weights is not None and features.hidden.shape[1] != self.weights.W.shape[-1]:
            raise ValueError(
                f"The server's embeddings have width {features.hidden.shape[1]}, but this decoder was fitted on "
                f"width {self.weights.W.shape[-1]}: the endpoint serves another model than "
                f"{self.config.base_model_name_or_path!r}."
            )
        if self.weights is None:
            return torch.log(q.clamp_min(1e-30))
        return decoder.scores(self.weights, features.hidden, q, self.lam)[0]

    def predict_logits(self, inputs) -> torch.Tensor:
        """Class logits (N, C) for texts, (text_a, text_b) pairs, a dict of columns or a Dataset."""
        (feats,) = self._features([inputs], desc="predict")
        with torch.no_grad():
            return self.class_logits(feats)

    def predict_proba(self, inputs) -> np.ndarray:
        """Class probabilities (N, C), columns in the order of the label words' classes."""
        return torch.softmax(self.predict_logits(inputs), -1).numpy()

    def predict(self, inputs) -> list[str]:
        """Predicted class names."""
        return [self.classes[i] for i in self.predict_logits(inputs).argmax(-1).tolist()]

    def evaluate(self, dataset, *, name: str | None = None, split: str = "test") -> dict[str, float]:
        """Accuracy on a labelled dataset; recorded for the adapter's card."""
        labels = self._labels(dataset)
        pred = self.predict_logits(dataset).argmax(-1)
        metrics = {"accuracy": float((pred == labels).float().mean())}
        record = {"dataset": name or "evaluation data", "split": split, "examples": int(labels.numel())}
        self.evaluations = [
            e for e in self.evaluations if (e["dataset"], e["split"]) != (record["dataset"], split)
        ] + [record | {"metrics": metrics}]
        return metrics

    # ---------------------------------------------------------------- saving and loading
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write adapter_config.json, the decoder as safetensors, the endpoint settings (no API key) and a card."""
        from ..cards import render_remote_dect_card
        from ..peft_model import staged_folder

        if self.content_free is None:
            raise ValueError("Nothing to save yet: call fit() first.")
        tensors = {"dect_content_free": self.content_free.contiguous()}
        if self.weights is not None:
            tensors |= {
                "dect_W": self.weights.W[0].contiguous(),
                "dect_radii": self.weights.radii[0].contiguous(),
                "dect_prototypes": self.weights.prototypes.contiguous(),
            }
        settings = {
            "lam": self.lam,
            "calibrate": self.calibrate,
            "fit": self.last_fit,
            "evaluations": self.evaluations,
            # how label words were scored: prediction must make its features the way the fit did
            "missing_label_words": self.backbone.missing,
            "label_token_ids": self.backbone.token_ids,
        }
        with staged_folder(save_directory) as staging:
            save_file(tensors, os.path.join(staging, WEIGHTS_FILE), metadata={"format": "pt"})
            self.config.save_pretrained(staging)
            with open(os.path.join(staging, REMOTE_FILE), "w", encoding="utf-8") as f:
                json.dump({"endpoint": self.endpoint.settings(), **settings}, f, indent=2)
            card = render_remote_dect_card(
                self.config, self.endpoint.model, fit=self.last_fit, evaluations=self.evaluations
            )
            Path(staging, "README.md").write_text(card, encoding="utf-8")

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, endpoint: OpenAIEndpoint | None = None, **endpoint_kwargs: Any
    ) -> BlackBoxDecT:
        """Load a saved black-box adapter; the endpoint is rebuilt from the saved settings unless one is given
        (`endpoint_kwargs`, e.g. `url=...` or `cache_file=...`, override the saved settings). Label words are scored
        as at fit time (the saved `missing_label_words` rule and token ids)."""
        folder = Path(directory)
        try:
            saved = json.loads((folder / REMOTE_FILE).read_text(encoding="utf-8"))
            settings = saved["endpoint"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(
                f"{folder} is not a saved black-box DecT adapter ({REMOTE_FILE} missing or unreadable: {err}); "
                "save one with BlackBoxDecT.save_pretrained."
            ) from None
        try:
            tensors = load_file(str(folder / WEIGHTS_FILE))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{folder / WEIGHTS_FILE} is not a readable safetensors file ({err}).") from None
        config = DecTConfig.from_pretrained(str(folder))
        if endpoint is None:
            endpoint = OpenAIEndpoint(**(settings | endpoint_kwargs))
        out = cls(
            config,
            endpoint,
            missing_label_words=saved.get("missing_label_words", "exact"),
            label_token_ids=saved.get("label_token_ids"),
        )
        num_classes = len(config.classes)
        cf = tensors.get("dect_content_free")
        if cf is None or cf.shape != (num_classes,):
            raise ValueError(f"{folder / WEIGHTS_FILE} has no content-free scores for {num_classes} classes.")
        out.content_free = cf
        if "dect_W" in tensors:
            W, radii, protos = (tensors.get(k) for k in ("dect_W", "dect_radii", "dect_prototypes"))
            if radii is None or protos is None or radii.shape != (num_classes,) or protos.shape[0] != num_classes:
                raise ValueError(f"{folder / WEIGHTS_FILE} holds an incomplete decoder; save the adapter again.")
            out.weights = decoder.DecoderWeights(W.unsqueeze(0), radii.unsqueeze(0), protos)
        if out.weights is not None and not endpoint.embeddings:
            raise ValueError(
                "This adapter has a decoder fitted on embeddings, but the endpoint was created with embeddings=False."
            )
        out.lam, out.calibrate = float(saved.get("lam", 0.0)), bool(saved.get("calibrate", True))
        out.last_fit, out.evaluations = saved.get("fit") or {}, saved.get("evaluations") or []
        return out
