"""DecT as a PEFT tuner: the frozen LM is queried once per input and a small decoder classifies its features."""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTuner
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from ..backbone import Backbone, lm_kind
from ..data import read_labels, read_texts
from ..features import FeatureCache, Features
from ..prompting import Template, Verbalizer, calibrated_probs, content_free_texts
from ..prompting.demonstrations import Demonstrations
from . import decoder
from .fit import FitResult, fit_auto, fit_faithful, shots_of
from .layer import DecTLayer


logger = logging.getLogger(__name__)


_LOCK = threading.RLock()


def serialized(method):
    """Run `method` under peft-dect's lock: feature caches, tokenizer state and decoder writes are shared, so
    `fit`/`predict`/`evaluate` called from several threads run one at a time (results equal sequential calls)."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with _LOCK:
            return method(*args, **kwargs)

    return wrapper


def output_embedding_name(model: nn.Module) -> str:
    """Module name of the LM head's output projection (e.g. 'lm_head', 'cls.predictions.decoder')."""
    lm_kind(model)  # raises a clear TypeError for models without an LM head
    out = model.get_output_embeddings()
    for name, module in model.named_modules():
        if module is out or (isinstance(module, DecTLayer) and module.base_layer is out):
            return name
    raise TypeError(f"Could not locate the output embeddings of {type(model).__name__} among its modules.")


def base_model_sizes(model: nn.Module) -> tuple[int, int]:
    """(hidden size, vocabulary size) as the LM head sees them."""
    head = model.get_output_embeddings()
    head = getattr(head, "base_layer", head)
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    # the decoder reads the body's output, which can be wider than the head's input (ALBERT, ELECTRA)
    hidden = getattr(text_config, "hidden_size", None) or head.in_features
    vocab = getattr(head, "out_features", None) or text_config.vocab_size
    return int(hidden), int(vocab)


def check_base_model(model: nn.Module, config) -> None:
    """Record the base model's sizes in a new config; refuse an adapter made for another base model."""
    hidden, vocab = base_model_sizes(model)
    if config.base_hidden_size is None and config.base_vocab_size is None:
        config.base_hidden_size, config.base_vocab_size = hidden, vocab
        return
    if (config.base_hidden_size, config.base_vocab_size) != (hidden, vocab):
        raise ValueError(
            f"This DecT adapter was made for a base model with hidden size {config.base_hidden_size} and "
            f"vocabulary {config.base_vocab_size}, but {type(model).__name__} has hidden size {hidden} and "
            f"vocabulary {vocab}. Load it onto its base model ({config.base_model_name_or_path or 'see its card'}); "
            "a DecTConfig records the first base model it is used with, so give another base model a new config."
        )


class DecTModel(BaseTuner):
    """Decoder Tuning (Cui et al., ACL 2023) on a frozen masked or causal LM.

    Use it through `peft.get_peft_model(model, DecTConfig(...))`. The fast path is `fit()`, which extracts features
    once (cached) and trains the decoder in well under a second; `forward()` serves the `transformers.Trainer`.
    """

    prefix: str = "dect_"
    tuner_layer_cls = DecTLayer
    target_module_mapping: dict = {}

    def __init__(self, model, config, adapter_name, low_cpu_mem_usage: bool = False, state_dict=None) -> None:
        self._tokenizer = None
        self._backbones: dict[str, Backbone] = {}
        self._cache = FeatureCache()
        self.last_fit: dict[str, Any] = {}
        self.fit_reports: dict[str, dict[str, Any]] = {}  # per adapter, for its model card
        self.evaluations: dict[str, list[dict[str, Any]]] = {}  # per adapter, for its model card
        self.demo_encoder = None  # sentence encoder of demo_filter='similar' (texts -> embeddings); None: MiniLM
        super().__init__(model, config, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)

    # ---------------------------------------------------------------- PEFT plumbing

    def _prepare_adapter_config(self, peft_config, model_config):
        return peft_config

    def _check_target_module_exists(self, peft_config, key: str) -> bool:
        if "_head_name" not in self.__dict__:  # computed once: peft asks for every module of the model
            self._head_name = output_embedding_name(self.model)
        return key == self._head_name

    def _check_new_adapter_config(self, config) -> None:
        """Run for every adapter added or loaded: the template must suit the LM, and the base model must match."""
        if lm_kind(self.model) == "causal":
            Template(config.template).check_causal()
        check_base_model(self.model, config)

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, DecTLayer):
            target.update_layer(adapter_name, peft_config)
            return
        new_module = DecTLayer(target, adapter_name, peft_config, hidden_size=base_model_sizes(self.model)[0])
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _unload_and_optionally_merge(self, merge=True, progressbar=False, safe_merge=False, adapter_names=None):
        if merge:
            raise ValueError("DecT cannot be merged into the model weights; use unload() to remove it.")
        name = self._head_name
        parent = self.model.get_submodule(name.rpartition(".")[0]) if "." in name else self.model
        layer = self.model.get_submodule(name)
        if isinstance(layer, DecTLayer):
            setattr(parent, name.rpartition(".")[2], layer.get_base_layer())
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        return self.model

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._forget(adapter_name)

    def _forget(self, adapter_name: str) -> None:
        """Drop what this tuner remembers about an adapter's fit (feature extractor, fit report, evaluations)."""
        self._backbones.pop(adapter_name, None)
        self.fit_reports.pop(adapter_name, None)
        self.evaluations.pop(adapter_name, None)

    @property
    def dect_layer(self) -> DecTLayer:
        """The wrapped LM head that holds every adapter's decoder tensors."""
        return self.model.get_submodule(self._head_name)

    @property
    def _adapter(self) -> str:
        active = self.active_adapters
        if len(active) != 1:
            raise ValueError(f"DecT predicts with one active adapter at a time, got {active}; call set_adapter().")
        return active[0]

    @property
    def config_of_active(self):
        return self.peft_config[self._adapter]

    # ---------------------------------------------------------------- tokenizer and features
    @serialized
    def set_tokenizer(self, tokenizer) -> None:
        """Remember the tokenizer of the base model (fit, predict and prepare_dataset also accept one)."""
        if tokenizer is not None and tokenizer is not self._tokenizer:
            if self._tokenizer is not None:  # content-free scores came from the old tokenizer's prompt
                with torch.no_grad():
                    for settings in self.dect_layer.dect_settings.values():
                        settings[DecTLayer.CF_READY] = 0.0
            self._tokenizer = tokenizer
            self._backbones.clear()

    def backbone(self, tokenizer=None, *, adapter_name: str | None = None) -> Backbone:
        """The feature extractor of an adapter (its template and label words) on the frozen model."""
        self.set_tokenizer(tokenizer)
        if self._tokenizer is None:
            raise ValueError(
                "DecT needs the base model's tokenizer: pass tokenizer=... to fit/predict/prepare_dataset once "
                "(or call model.set_tokenizer(tokenizer))."
            )
        name = adapter_name or self._adapter
        if name not in self._backbones:
            cfg = self.peft_config[name]
            template = Template(cfg.template)
            verbalizer = Verbalizer.from_words(
                cfg.label_words,
                self._tokenizer,
                space_before=template.space_before_mask,
                aggregation=cfg.label_word_aggregation,
                multi_token=cfg.multi_token,
            )
            self._backbones[name] = Backbone(
                self.model,
                self._tokenizer,
                template,
                verbalizer,
                max_length=cfg.max_length,
                cache=self._cache,
                demonstrations=self._demonstrations(cfg, template, verbalizer),
            )
        return self._backbones[name]

    def _demonstrations(self, cfg, template: Template, verbalizer: Verbalizer) -> Demonstrations | None:
        if cfg.demonstrations == 0:
            return None
        if cfg.demo_pool is None:
            raise ValueError(
                "This adapter uses demonstrations but has no demonstration pool yet: call fit() (or "
                "set_demonstrations(train_dataset) for in-context learning without training) first."
            )
        pool = cfg.demo_pool
        return Demonstrations(
            pool["text_a"],
            pool.get("text_b"),
            pool["label"],
            template,
            verbalizer,
            per_class=cfg.demo_per_class,
            filter=cfg.demo_filter,
            num_sets=cfg.demonstrations,
            seed=cfg.seed,
            encoder=self.demo_encoder,
        )

    @serialized
    def set_demonstrations(self, train_dataset, tokenizer=None) -> None:
        """Record `train_dataset` as the demonstration pool of the active adapter (fit() does this itself).

        With the adapter untrained, `zero_shot_logits(inputs, calibrate=False)` is then LM-BFF's in-context
        learning: label-word scoring of prompts that carry demonstrations, averaged over the sampled sets.
        """
        self.set_tokenizer(tokenizer)
        name = self._adapter
        cfg = self.peft_config[name]
        if cfg.demonstrations == 0:
            raise ValueError("Set demonstrations=N (sets per input) in the config to use demonstrations.")
        template = Template(cfg.template)
        texts_a, texts_b = read_texts(
            train_dataset,
            needs_pair=template.is_pair,
            text_column=cfg.text_column,
            text_pair_column=cfg.text_pair_column,
        )
        labels = read_labels(train_dataset, cfg.classes, cfg.label_column)
        pool = {"text_a": texts_a, "text_b": texts_b, "label": labels.tolist()}
        if pool == cfg.demo_pool:
            return
        Demonstrations(texts_a, texts_b, pool["label"], template, cfg.label_words)  # checks every class is present
        cfg.demo_pool = pool
        self._backbones.pop(name, None)
        with torch.no_grad():  # the content-free prompt carries demonstrations too: recompute it
            self._settings(name)[DecTLayer.CF_READY] = 0.0

    @serialized
    def use_cache_dir(self, cache_dir) -> None:
        """Persist extracted features in `cache_dir` (safetensors) and reuse the ones already there.

        `None` switches to a fresh in-memory cache. Features already in memory stay available.
        """
        if cache_dir is not None and self._cache.directory is not None and self._cache.directory == Path(cache_dir):
            return
        previous = self._cache
        self._cache = FeatureCache(cache_dir)
        if cache_dir is not None:
            self._cache.absorb(previous)
        for bb in self._backbones.values():
            bb.cache = self._cache

    @serialized
    def reset_adapter(self, adapter_name: str | None = None) -> None:
        """Forget an adapter's fit and calibration: back to its seeded initial state (zero-shot predictions)."""
        name = adapter_name or self._adapter
        self.dect_layer.update_layer(name, self.peft_config[name])
        self.set_adapter(self.active_adapters)
        self.fit_reports.pop(name, None)
        self.evaluations.pop(name, None)

    def _settings(self, name: str) -> torch.Tensor:
        return self.dect_layer.dect_settings[name]

    def ensure_content_free(self, backbone: Backbone, name: str) -> torch.Tensor:
        """Label-word log-probabilities of the content-free input, computed once per adapter (one model pass)."""
        if not self._content_free_ready(name):
            self._extract_together(backbone, [], name, desc="calibration")
        return self.dect_layer.dect_content_free[name]

    def _content_free_ready(self, name: str) -> bool:
        return bool(self._settings(name)[DecTLayer.CF_READY] > 0.5)

    def _texts(self, data, backbone: Backbone) -> tuple[list[str], list[str] | None]:
        cfg = self.peft_config[self._adapter]
        texts_a, texts_b = read_texts(
            data,
            needs_pair=backbone.template.is_pair,
            text_column=cfg.text_column,
            text_pair_column=cfg.text_pair_column,
        )
        if not texts_a:
            raise ValueError("The data is empty: DecT needs at least one input.")
        return texts_a, texts_b

    def _labels(self, data, backbone: Backbone) -> torch.Tensor:
        """Class indices of `data`, checked to match its texts one for one."""
        cfg = self.peft_config[self._adapter]
        labels = read_labels(data, cfg.classes, cfg.label_column)
        texts, _ = self._texts(data, backbone)
        if len(texts) != labels.numel():
            raise ValueError(f"The data has {len(texts)} texts but {labels.numel()} labels; give one label per text.")
        return labels

    def _extract_together(self, backbone: Backbone, datasets: list, name: str, desc: str) -> list[Features]:
        """Features of several datasets (and of the content-free input, if still missing) in one extraction.

        One call sorts all new inputs by length together, so batches waste less padding than one call per split.
        """
        sets = [self._texts(data, backbone) for data in datasets]
        with_cf = not self._content_free_ready(name)
        if with_cf:
            a, b = content_free_texts(backbone.template)
            sets.append(([a], None if b is None else [b]))
        texts_a = [t for a, _ in sets for t in a]
        texts_b = [t for _, b in sets for t in b] if backbone.template.is_pair else None
        feats = backbone.extract(texts_a, texts_b, desc=desc)
        parts, start = [], 0
        for a, _ in sets:
            parts.append(feats[start : start + len(a)])
            start += len(a)
        if with_cf:
            cf = self.dect_layer.dect_content_free[name]
            with torch.no_grad():
                cf.copy_(parts.pop().label_logits[0].to(cf))
                self._settings(name)[DecTLayer.CF_READY] = 1.0
        return parts

    # ---------------------------------------------------------------- scoring
    def class_logits(self, features: Features, adapter_name: str | None = None) -> torch.Tensor:
        """Class logits (N, C) of the adapter: the decoder's fused scores, or zero-shot log-probabilities.

        The zero-shot classifier (calibrated when the content-free scores are known) is used while adapters are
        disabled and before any training.
        """
        name = adapter_name or self._adapter
        layer = self.dect_layer
        settings = layer.dect_settings[name]
        cf_ready = bool(settings[DecTLayer.CF_READY] > 0.5)
        cf = layer.dect_content_free[name] if cf_ready else None
        hidden = features.hidden.to(settings.device)
        label_logits = features.label_logits.to(settings.device)
        if layer.disable_adapters or settings[DecTLayer.FITTED] < 0.5:
            calibrate = layer.disable_adapters or bool(settings[DecTLayer.CALIBRATE] > 0.5)
            return torch.log(calibrated_probs(label_logits, cf if calibrate else None).clamp_min(1e-30))
        calibrate = bool(settings[DecTLayer.CALIBRATE] > 0.5)
        q = calibrated_probs(label_logits, cf if calibrate else None)
        weights = decoder.DecoderWeights(
            layer.dect_W[name].unsqueeze(0), layer.dect_radii[name].unsqueeze(0), layer.dect_prototypes[name]
        )
        return decoder.scores(weights, hidden, q, settings[DecTLayer.LAM])[0]

    def _write(self, name: str, result: FitResult) -> None:
        layer = self.dect_layer
        with torch.no_grad():
            layer.dect_W[name].copy_(result.weights.W[0])
            layer.dect_radii[name].copy_(result.weights.radii[0])
            layer.dect_prototypes[name].copy_(result.weights.prototypes)
            settings = layer.dect_settings[name]
            settings[DecTLayer.LAM] = result.lam
            settings[DecTLayer.CALIBRATE] = float(result.calibrate)
            settings[DecTLayer.FITTED] = 1.0

    # ---------------------------------------------------------------- the fast path
    @serialized
    def fit(
        self,
        train_dataset,
        tokenizer=None,
        eval_dataset=None,
        *,
        cache_dir=None,
        batch_size: int | None = None,
        show_progress: bool = True,
    ) -> dict[str, Any]:
        """Train the decoder of the active adapter: one model pass per new input, then decoder fitting.

        `train_dataset` (and `eval_dataset`) is a `datasets.Dataset` or a dict of columns with the text column(s)
        and labels. In auto mode cross-validation (plus the eval split, if given) chooses lam, epochs, calibration.
        Returns a report with the choice, timings and the number of model passes.
        """
        name = self._adapter
        cfg = self.peft_config[name]
        if cache_dir is not None:
            self.use_cache_dir(cache_dir)
        if cfg.demonstrations:
            self.set_demonstrations(train_dataset, tokenizer)
        bb = self.backbone(tokenizer)
        bb.show_progress = show_progress
        if batch_size is not None:
            bb.batch_size = batch_size
        passes_before = bb.passes
        t0 = time.perf_counter()
        labels = self._labels(train_dataset, bb)
        use_eval = eval_dataset is not None and cfg.mode == "auto"
        eval_labels = self._labels(eval_dataset, bb) if use_eval else None
        if eval_dataset is not None and not use_eval:
            logger.warning("Faithful mode chooses nothing on held-out data: eval_dataset is not used by fit().")
        if cfg.mode == "auto" and cfg.lam is not None:
            logger.warning(
                "Auto mode chooses lam itself; the configured lam=%g is used by faithful mode only.", cfg.lam
            )
        train, *rest = self._extract_together(
            bb, [train_dataset] + ([eval_dataset] if use_eval else []), name, desc="features"
        )
        eval_feats = rest[0] if use_eval else None
        cf = self.dect_layer.dect_content_free[name].detach().clone().cpu()
        if not (cfg.calibrate or cfg.mode == "auto"):
            cf = None
        t1 = time.perf_counter()
        num_classes = len(cfg.classes)
        if cfg.mode == "faithful":
            result = fit_faithful(train, labels, cf, cfg, num_classes)
        else:
            result = fit_auto(train, labels, cf, cfg, num_classes, eval_feats, eval_labels)
        self._write(name, result)
        t2 = time.perf_counter()
        self.last_fit = {
            **result.report,
            "shots": shots_of(labels, num_classes),
            "train_examples": int(labels.numel()),
            "model_passes": bb.passes - passes_before,
            "feature_seconds": t1 - t0,
            "decoder_seconds": t2 - t1,
        }
        self.fit_reports[name] = self.last_fit
        self.evaluations.pop(name, None)  # metrics of the previous decoder no longer apply
        return self.last_fit

    # ---------------------------------------------------------------- prediction
    @serialized
    def predict_logits(self, inputs, tokenizer=None, *, show_progress: bool = False) -> torch.Tensor:
        """Class logits (N, C) for texts, (text_a, text_b) pairs, a dict of columns or a Dataset."""
        bb = self.backbone(tokenizer)
        bb.show_progress = show_progress
        name = self._adapter
        (feats,) = self._extract_together(bb, [inputs], name, desc="predict")
        with torch.no_grad():
            return self.class_logits(feats).cpu()

    @serialized
    def zero_shot_logits(self, inputs, tokenizer=None, *, calibrate: bool = True, show_progress: bool = False):
        """Zero-shot class log-probabilities (N, C) from the label words alone, calibrated or not."""
        bb = self.backbone(tokenizer)
        bb.show_progress = show_progress
        (feats,) = self._extract_together(bb, [inputs], self._adapter, desc="predict")
        cf = self.dect_layer.dect_content_free[self._adapter] if calibrate else None
        return torch.log(calibrated_probs(feats.label_logits, cf).clamp_min(1e-30)).cpu()

    def predict_proba(self, inputs, tokenizer=None, *, show_progress: bool = False) -> np.ndarray:
        """Class probabilities (N, C), columns in the order of `label_words`."""
        return torch.softmax(self.predict_logits(inputs, tokenizer, show_progress=show_progress), -1).numpy()

    def predict(self, inputs, tokenizer=None, *, show_progress: bool = False) -> list[str]:
        """Predicted class names."""
        classes = self.config_of_active.classes
        logits = self.predict_logits(inputs, tokenizer, show_progress=show_progress)
        return [classes[i] for i in logits.argmax(-1).tolist()]

    @serialized
    def evaluate(
        self, dataset, tokenizer=None, *, name: str | None = None, split: str = "test", show_progress: bool = False
    ) -> dict[str, float]:
        """Accuracy of the active adapter on a labelled dataset; recorded (with `name`, `split`) for its model card."""
        labels = self._labels(dataset, self.backbone(tokenizer))
        pred = self.predict_logits(dataset, tokenizer, show_progress=show_progress).argmax(-1)
        metrics = {"accuracy": float((pred == labels).float().mean())}
        record = {
            "dataset": name or "evaluation data",
            "split": split,
            "examples": int(labels.numel()),
            "metrics": metrics,
        }
        history = [
            e
            for e in self.evaluations.get(self._adapter, [])
            if (e["dataset"], e["split"]) != (record["dataset"], split)
        ]
        self.evaluations[self._adapter] = history + [record]
        return metrics

    # ---------------------------------------------------------------- the Trainer path
    @serialized
    def prepare_dataset(self, dataset, tokenizer=None):
        """Prompted, tokenised copy of `dataset` for `transformers.Trainer`: input_ids, attention_mask, labels.

        Also computes the content-free calibration and, unless `lam` is configured, sets lam = 1/shots from the
        labels of the first dataset prepared: prepare the training data first.
        """
        import datasets

        name = self._adapter
        cfg = self.peft_config[name]
        bb = self.backbone(tokenizer)
        texts_a, texts_b = self._texts(dataset, bb)
        labels = self._labels(dataset, bb)
        ids = bb.tokenize(texts_a, texts_b)
        settings = self._settings(name)
        if cfg.calibrate:
            self.ensure_content_free(bb, name)
        if cfg.lam is None and settings[DecTLayer.FITTED] < 0.5 and torch.isnan(settings[DecTLayer.LAM]):
            with torch.no_grad():
                settings[DecTLayer.LAM] = 1.0 / shots_of(labels, len(cfg.classes))
        columns = {"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids], "labels": labels.tolist()}
        return datasets.Dataset.from_dict(columns)

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Data collator for prepared datasets: pads input ids (right) and stacks labels."""
        batch = self.backbone().collate([list(r["input_ids"]) for r in rows])
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([int(r["labels"]) for r in rows], dtype=torch.long)
        return batch

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs) -> SequenceClassifierOutput:
        """Class logits (and cross-entropy loss with `labels`) for prompted inputs made by `prepare_dataset`.

        The frozen model runs without gradient; only the decoder (W, radii) trains. On the first training batch
        the radii get the paper's data-dependent initialisation.
        """
        if input_ids is None:
            raise ValueError("DecT's forward needs input_ids made by model.prepare_dataset(...).")
        name = self._adapter
        bb = self.backbone()
        was_training = self.model.training
        self.model.eval()  # the frozen backbone gives deterministic features: no dropout, as in fit()
        try:
            with torch.no_grad():
                feats = bb.forward(input_ids, attention_mask)
        finally:
            self.model.train(was_training)
        settings = self._settings(name)
        layer = self.dect_layer
        if self.training and labels is not None and settings[DecTLayer.FITTED] < 0.5 and not layer.disable_adapters:
            with torch.no_grad():
                W = layer.dect_W[name].detach().unsqueeze(0)
                num_classes = layer.dect_radii[name].numel()
                weight = torch.ones(1, labels.shape[0], device=W.device)
                radii = decoder.init_radii(W, feats.hidden.to(W), labels.to(W.device), weight, num_classes)
                layer.dect_radii[name].copy_(radii[0])
                if torch.isnan(settings[DecTLayer.LAM]):
                    settings[DecTLayer.LAM] = 1.0 / shots_of(labels, num_classes)
                settings[DecTLayer.FITTED] = 1.0
        logits = self.class_logits(feats, name)
        loss = F.cross_entropy(logits, labels.to(logits.device)) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
