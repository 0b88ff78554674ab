"""The grid's methods on SmolLM2-135M-Instruct: zero-shot, calibrated zero-shot, linear probe and DecT.

All of them read the task's causal template and label words from `peft_dect.tasks`, and share one `FeatureCache` on
disk, so the model runs once per distinct prompt (test features are extracted once for every seed and method).
Training costs are measured from a cold cache in the cells of the timing seeds (default: seed 13): there a method that
trains pays for its own model passes over the training (and dev) inputs, which run again in a private in-memory cache,
and DecT's cell also times a plain inference pass over the same inputs. The model is slow on 2 shared CPU cores, so
the other seeds train on features from the shared cache and record the fit alone ("timing": "warm").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data import CellData


logger = logging.getLogger(__name__)

MODEL_NAME = "SmolLM2-135M-Instruct (GGUF Q4_1 de-quantised to float32)"
PROBE_C = (1.0, 0.1, 10.0, 0.01, 100.0)  # first wins ties: sklearn's default C = 1 unless dev says otherwise


@dataclass
class MethodResult:
    """What a method returns for one cell; the runner scores the predictions and writes the record."""

    predictions: list[int]
    train_seconds: float
    train_passes: int
    predict_passes: int
    extra: dict[str, Any] = field(default_factory=dict)
    test_index: list[int] | None = None  # the test rows predicted, when a method scores a subsample of the test set


class SmolLM:
    """SmolLM2 with one DecT adapter per task, loaded on first use, and the shared on-disk feature cache."""

    def __init__(
        self,
        cache_dir: str | Path | None,
        batch_size: int = 16,
        show_progress: bool = False,
        timing_seeds: tuple[int, ...] = (13,),
    ) -> None:
        from peft_dect import FeatureCache

        self.cache = FeatureCache(cache_dir)
        self.timing_seeds = tuple(timing_seeds)
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.peft_model = None
        self.tokenizer = None
        self._backbones: dict[str, Any] = {}

    def config(self, task: str):
        """The DecT config of a task in the grid: its causal template and label words, the template alone."""
        from peft_dect import DecTConfig
        from peft_dect.tasks import get_task

        spec = get_task(task)
        return DecTConfig(
            template=spec.causal_template,
            label_words=spec.label_words,
            text_column="text_a",
            text_pair_column="text_b",
            budget=1,  # the grid's "dect": the template alone, as before prompt candidates ("dect_prompts": default)
        )

    def activate(self, task: str):
        """The DecT tuner with the task's adapter active (model loaded and adapter added on first use)."""
        from peft import get_peft_model

        from peft_dect.embedded import load_smollm2

        if self.peft_model is None:
            torch.manual_seed(0)
            model, self.tokenizer = load_smollm2()
            self.peft_model = get_peft_model(model, self.config(task), adapter_name=task)
        elif task not in self.peft_model.peft_config:
            self.peft_model.add_adapter(task, self.config(task))
        self.peft_model.set_adapter(task)
        return self.peft_model.base_model

    def backbone(self, task: str, cache=None):
        """A feature extractor with exactly the keys of the task's DecT adapter, on the shared (or given) cache."""
        from peft_dect import Backbone

        if cache is None and task in self._backbones:
            return self._backbones[task]
        tuner = self.activate(task)
        dect_bb = tuner.backbone(self.tokenizer)
        bb = Backbone(
            dect_bb.model,
            self.tokenizer,
            dect_bb.template,
            dect_bb.verbalizer,
            max_length=dect_bb.max_length,
            batch_size=self.batch_size,
            show_progress=self.show_progress,
            cache=cache if cache is not None else self.cache,
        )
        if cache is None:
            self._backbones[task] = bb
        return bb

    def features(self, task: str, ds, cache=None):
        """(features, seconds, model passes) of a dataset's prompts."""
        bb = self.backbone(task, cache)
        pair = bb.template.is_pair
        before, start = bb.passes, time.perf_counter()
        feats = bb.extract(list(ds["text_a"]), list(ds["text_b"]) if pair else None, desc=f"{task} features")
        return feats, time.perf_counter() - start, bb.passes - before

    def content_free(self, task: str, cache=None):
        """(label-word log-probs of the content-free input, seconds, passes)."""
        from peft_dect.prompting import content_free_texts

        bb = self.backbone(task, cache)
        a, b = content_free_texts(bb.template)
        before, start = bb.passes, time.perf_counter()
        feats = bb.extract([a], None if b is None else [b], desc="calibration")
        return feats.label_logits[0], time.perf_counter() - start, bb.passes - before

    def training_features(self, task: str, seed: int, *datasets):
        """(features per dataset, seconds, passes, timing): from an empty cache for the timing seeds (the model pass a
        training method pays for), else from the shared cache."""
        import datasets as hf_datasets

        from peft_dect import FeatureCache

        joined = hf_datasets.concatenate_datasets(list(datasets))
        cold = seed in self.timing_seeds
        feats, seconds, passes = self.features(task, joined, cache=FeatureCache() if cold else None)
        shared = self.backbone(task)
        texts_b = list(joined["text_b"]) if shared.template.is_pair else None
        self.cache.put(shared.keys(list(joined["text_a"]), texts_b), feats)
        parts, start = [], 0
        for ds in datasets:
            parts.append(feats[start : start + len(ds)])
            start += len(ds)
        return parts, seconds, passes, "cold" if cold else "warm"


def _labels(ds) -> torch.Tensor:
    return torch.tensor(ds["label"])


class ZeroShot:
    """The task's prompt and label words, no training: the most probable label word wins."""

    name = "zero_shot"

    def __init__(self, lm: SmolLM) -> None:
        self.lm = lm

    def run(self, data: CellData) -> MethodResult:
        feats, _, _ = self.lm.features(data.task, data.test)
        return MethodResult(feats.label_logits.argmax(-1).tolist(), 0.0, 0, len(data.test))


class CalibratedZeroShot(ZeroShot):
    """Zero-shot with content-free calibration (Zhao et al., 2021): one extra model pass, no labelled data."""

    name = "calibrated_zero_shot"

    def run(self, data: CellData) -> MethodResult:
        from peft_dect import FeatureCache

        cf, seconds, passes = self.lm.content_free(data.task, cache=FeatureCache())  # cold: it is the "training"
        feats, _, _ = self.lm.features(data.task, data.test)
        pred = (feats.label_logits - cf).argmax(-1).tolist()
        return MethodResult(pred, seconds, passes, len(data.test), {"timing": "cold"})


class LinearProbe(ZeroShot):
    """Logistic regression on the hidden states DecT uses (standardised), C chosen on the dev split."""

    name = "linear_probe"

    def run(self, data: CellData) -> MethodResult:
        import numpy as np
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        (train, dev), feature_seconds, passes, timing = self.lm.training_features(
            data.task, data.seed, data.train, data.dev
        )
        start = time.perf_counter()
        x, y = train.hidden.numpy(), np.array(data.train["label"])
        xd, yd = dev.hidden.numpy(), np.array(data.dev["label"])

        def fit(c: float):
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
            return probe.fit(x, y)

        dev_acc = {c: float((fit(c).predict(xd) == yd).mean()) for c in PROBE_C}
        best = max(PROBE_C, key=lambda c: dev_acc[c])  # max keeps the first of equals
        probe = fit(best)
        fit_seconds = time.perf_counter() - start
        test, _, _ = self.lm.features(data.task, data.test)
        pred = probe.predict(test.hidden.numpy()).tolist()
        extra = {
            "timing": timing,
            "C": best,
            "dev_accuracy": dev_acc,
            "feature_seconds": feature_seconds,
            "fit_seconds": fit_seconds,
        }
        train_passes = passes if timing == "cold" else len(data.train) + len(data.dev)
        return MethodResult(pred, feature_seconds + fit_seconds, train_passes, len(data.test), extra)


CHOICE_KEYS = ("calibrate", "epochs", "lam", "heldout_accuracy", "selected_on", "selected_by")


class DecT(ZeroShot):
    """DecT in auto mode, the default config, fitted through the public `fit` (dev split as its eval set).

    In the cells of the timing seeds the fit starts from a cold cache, and the cell also times one plain inference
    pass over the same inputs (the prompts of train, dev and the content-free input, left-padded batches, logits at
    the last position only, as `benchmarks.dect_bench` does) to give the fit / inference ratio.
    """

    name = "dect"

    def run(self, data: CellData) -> MethodResult:
        from benchmarks.dect_bench import plain_inference
        from peft_dect import FeatureCache
        from peft_dect.prompting import content_free_texts
        from peft_dect.tasks import get_task

        tuner = self.lm.activate(data.task)
        tok = self.lm.tokenizer
        bb = tuner.backbone(tok)
        cold = data.seed in self.lm.timing_seeds
        extra: dict[str, Any] = {"timing": "cold" if cold else "warm"}
        if cold:
            pair = bb.template.is_pair
            inputs = list(zip(data.train["text_a"], data.train["text_b"]))
            inputs += list(zip(data.dev["text_a"], data.dev["text_b"]))
            prompts = [bb.render(a, b if pair else None) for a, b in inputs]
            prompts.append(bb.render(*content_free_texts(bb.template)))
            word_ids = [ids[0] for ids in bb.verbalizer.token_ids]
            start = time.perf_counter()
            plain_inference(tuner.model, tok, prompts, word_ids, self.lm.batch_size)
            extra["plain_inference_seconds"] = time.perf_counter() - start
            extra["plain_inference_inputs"] = len(prompts)
        bb.cache = FeatureCache() if cold else self.lm.cache  # cold: the fit pays for its own model passes
        tuner.reset_adapter()  # forget the previous cell's fit and content-free scores
        spec = get_task(data.task)  # auto mode chooses by the task's metric (F1 for MRPC and QQP, MCC for CoLA)
        metric = spec.metric if spec.metric in ("f1", "matthews_correlation") else None
        try:
            start = time.perf_counter()
            report = self.lm.peft_model.fit(
                data.train, tok, data.dev, batch_size=self.lm.batch_size, show_progress=False, metric=metric
            )
            fit_seconds = time.perf_counter() - start
        finally:
            bb.cache = self.lm.cache
        test, _, _ = self.lm.features(data.task, data.test)
        with torch.no_grad():
            pred = tuner.class_logits(test).argmax(-1).tolist()
        extra.update(
            mode=report["mode"],
            choice={
                k: report[k] for k in ("calibrate", "epochs", "lam", "heldout_accuracy", "selected_on", "selected_by")
            },
            feature_seconds=report["feature_seconds"],
            decoder_seconds=report["decoder_seconds"],
        )
        if cold:
            extra["fit_over_inference"] = fit_seconds / extra["plain_inference_seconds"]
        train_passes = report["model_passes"] if cold else len(data.train) + len(data.dev) + 1
        return MethodResult(pred, fit_seconds, train_passes, len(data.test), extra)


class DecTPrompts(ZeroShot):
    """DecT's default config (`budget=2`): auto mode also chooses the prompt, the template alone or with one set of
    LM-BFF demonstrations, on the same held-out data (CV + dev split) as its other settings.

    Features with demonstrations differ per seed (their pool is the seed's training split), test rows included. In
    the timing seeds the fit starts from an empty in-memory cache and pays for every candidate's model passes; the
    prediction time over the test rows is recorded in every cell.
    """

    name = "dect_prompts"

    def run(self, data: CellData) -> MethodResult:
        from peft_dect.dect.prompt_search import DEFAULT_BUDGET
        from peft_dect.tasks import get_task

        lm = self.lm
        lm.activate(data.task)
        name = f"{data.task}-prompts"
        peft_model = lm.peft_model
        if name not in peft_model.peft_config:
            config = lm.config(data.task)
            config.budget = DEFAULT_BUDGET
            peft_model.add_adapter(name, config)
        peft_model.set_adapter(name)
        tuner = peft_model.base_model
        tuner.reset_adapter()
        cold = data.seed in lm.timing_seeds
        tuner.use_cache_dir(None if cold else lm.cache.directory)
        spec = get_task(data.task)
        metric = spec.metric if spec.metric in ("f1", "matthews_correlation") else None
        try:
            start = time.perf_counter()
            report = peft_model.fit(
                data.train, lm.tokenizer, data.dev, batch_size=lm.batch_size, show_progress=False, metric=metric
            )
            fit_seconds = time.perf_counter() - start
        finally:
            tuner.use_cache_dir(lm.cache.directory)
        start = time.perf_counter()
        pred = tuner.predict_logits(data.test).argmax(-1).tolist()
        predict_seconds = time.perf_counter() - start
        extra: dict[str, Any] = {
            "timing": "cold" if cold else "warm",
            "mode": report["mode"],
            "choice": {k: report[k] for k in CHOICE_KEYS},
            "prompt": report["prompt"],
            "prompt_candidates": report.get("prompt_candidates"),
            "predict_passes_per_input": report["predict_passes_per_input"],
            "prompt_tokens_per_input": report["prompt_tokens_per_input"],
            "predict_seconds_per_input": predict_seconds / len(data.test),
            "feature_seconds": report["feature_seconds"],
        }
        tried = len(report.get("prompt_candidates") or [None])
        train_passes = report["model_passes"] if cold else tried * (len(data.train) + len(data.dev) + 1)
        predict_passes = report["predict_passes_per_input"] * len(data.test)
        return MethodResult(pred, fit_seconds, train_passes, predict_passes, extra)


class InContextLearning(ZeroShot):
    """LM-BFF's in-context learning: the prompt carries one solved training example per class (sampled per query,
    seeded), label words are scored as in zero-shot, nothing is trained (`peft_dect.prompting.demonstrations`).

    Prompts with demonstrations are 2-6 times longer and differ for every seed and shot count, so on the shared 2-core
    machine ICL scores a seeded subsample of `test_cap` rows of the capped test sample, with one demonstration set
    per query (LM-BFF averages 16 sets).
    """

    name = "icl"

    def __init__(self, lm: SmolLM, test_cap: int | None = 40) -> None:
        super().__init__(lm)
        self.test_cap = test_cap

    def run(self, data: CellData) -> MethodResult:
        from peft_dect import DecTConfig
        from peft_dect.tasks import get_task

        from .data import TEST_SAMPLE_SEED, capped_sample

        spec = get_task(data.task)
        name = f"{data.task}-icl"
        self.lm.activate(data.task)
        peft_model = self.lm.peft_model
        if name not in peft_model.peft_config:
            config = DecTConfig(
                template=spec.causal_template,
                label_words=spec.label_words,
                text_column="text_a",
                text_pair_column="text_b",
                demonstrations=1,
                demo_per_class=1,
                demo_filter="random",
            )
            peft_model.add_adapter(name, config)
        peft_model.set_adapter(name)
        tuner = peft_model.base_model
        tuner.set_demonstrations(data.train, self.lm.tokenizer)
        bb = tuner.backbone(self.lm.tokenizer)
        bb.cache, bb.batch_size, bb.show_progress = self.lm.cache, self.lm.batch_size, self.lm.show_progress
        index = capped_sample(len(data.test), self.test_cap, seed=TEST_SAMPLE_SEED)
        test = data.test.select(index)
        logits = tuner.zero_shot_logits(test, calibrate=False)
        extra = {
            "demonstrations": "1 set per query, 1 example per class, sampled per query from the training split",
            "test_subsample": f"{len(index)} of the {len(data.test)} capped test rows (seed {TEST_SAMPLE_SEED})",
        }
        return MethodResult(logits.argmax(-1).tolist(), 0.0, 0, len(index), extra, test_index=index)


LM_METHODS = {m.name: m for m in (ZeroShot, CalibratedZeroShot, LinearProbe, DecT, DecTPrompts, InContextLearning)}
