"""DecT as a PEFT tuner: the PEFT plumbing and the tokenizer / soft-prompt / demonstration state.

The DecT work itself (features with the content-free input, fitting, fusion) is `peft_dect.dect.core`'s, shared with
the black-box front-end; predictions and evaluation come from the classifier interface, and the Trainer path
(`prepare_dataset`, `collate`, `forward`) from `peft_dect.dect.trainer_path`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from peft.tuners.tuners_utils import BaseTuner

from ..backbone import Backbone
from ..cards import RunRecord
from ..classifier import FewShotClassifier
from ..data import split_by_label
from ..introspect import CAUSAL, base_model_sizes, lm_kind
from ..llama_cpp_runner import LlamaCppRunner
from ..prompt_tuning import SOFT_PROMPT_FOLDER, check_prompt_model, load_prompt_model
from ..prompting import Template
from ..saving import inside_folder
from . import prompt_search
from .card import dect_card, dect_record
from .checks import check_base_model, check_label_token_ids, output_embedding_name
from .core import ConfigUncertainty, DecTCore, class_logits
from .layer import AdapterState, DecTLayer
from .locking import serialized
from .sources import AdapterSources, load_recorded_tokenizer, pass_key, tokenizer_record
from .template_mean import TemplateMean
from .trainer_path import DecTTrainerPath


class DecTModel(ConfigUncertainty, DecTTrainerPath, BaseTuner, FewShotClassifier):
    """Decoder Tuning (Cui et al., ACL 2023) on a frozen masked or causal LM.

    Use it through `peft.get_peft_model(model, DecTConfig(...))`. The fast path is `fit()`, which extracts features
    once (cached) and trains the decoder in well under a second; `prepare_dataset()`, `collate()` and `forward()`
    serve the `transformers.Trainer` (`peft_dect.dect.trainer_path`).
    """

    prefix: str = "dect_"
    tuner_layer_cls = DecTLayer
    target_module_mapping: dict = {}

    def __init__(self, model, config, adapter_name, low_cpu_mem_usage: bool = False, state_dict=None) -> None:
        self.lock = threading.RLock()
        self.sources = AdapterSources(model)
        self.records: dict[str, RunRecord] = {}  # per adapter, for its model card
        super().__init__(model, config, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)

    # ---------------------------------------------------------------- PEFT plumbing
    def _prepare_adapter_config(self, peft_config, model_config):
        return peft_config

    def _check_target_module_exists(self, peft_config, key: str) -> bool:
        if "head_name" not in self.__dict__:  # computed once: peft asks for every module of the model
            self.head_name = output_embedding_name(self.model)
        return key == self.head_name

    def _check_new_adapter_config(self, config) -> None:
        """Run for every adapter added or loaded: the template must suit the LM, and the base model must match."""
        if lm_kind(self.model) == CAUSAL:
            for template in (config.template, *(config.templates or ())):
                Template(template).check_causal()
        check_base_model(self.model, config)

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if peft_config.inline_demo_pool is not None:  # format 1.0 kept the demonstration pool in the config
            self.sources.demo_pools[adapter_name] = peft_config.inline_demo_pool
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
        parent_name, _, child = self.head_name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        layer = self.model.get_submodule(self.head_name)
        if isinstance(layer, DecTLayer):
            setattr(parent, child, layer.get_base_layer())
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        return self.model

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self.sources.forget(adapter_name)
        self.records.pop(adapter_name, None)

    @property
    def dect_layer(self) -> DecTLayer:
        """The wrapped LM head that holds every adapter's decoder tensors."""
        return self.model.get_submodule(self.head_name)

    @property
    def active_name(self) -> str:
        active = self.active_adapters
        if len(active) != 1:
            raise ValueError(f"DecT predicts with one active adapter at a time, got {active}; call set_adapter().")
        return active[0]

    @property
    def config_of_active(self):
        return self.peft_config[self.active_name]

    @property
    def dect_config(self):
        return self.config_of_active

    @property
    def fit_in_use(self) -> bool:
        return not self.dect_layer.disable_adapters

    def state(self, adapter_name: str | None = None) -> AdapterState:
        return self.dect_layer.state(adapter_name or self.active_name)

    @property
    def run_record(self) -> RunRecord:
        """The active adapter's run record (fit report, evaluations), for its model card."""
        name = self.active_name
        if name not in self.records:
            self.records[name] = dect_record(self.peft_config[name])
        return self.records[name]

    # ---------------------------------------------------------------- tokenizer, demonstrations, soft prompts
    @property
    def demo_encoder(self):
        """Sentence encoder of demo_filter='similar' (texts -> embeddings); None: all-MiniLM-L6-v2."""
        return self.sources.demo_encoder

    @demo_encoder.setter
    def demo_encoder(self, encoder) -> None:
        self.sources.demo_encoder = encoder

    @serialized
    def set_tokenizer(self, tokenizer) -> None:
        """Remember the tokenizer of the base model (fit, predict and prepare_dataset also accept one)."""
        if self.sources.set_tokenizer(tokenizer):  # content-free scores came from the old tokenizer's prompt
            for name in self.peft_config:
                self.state(name).content_free = None

    def backbone(
        self, tokenizer=None, *, adapter_name: str | None = None, refit: bool = False
    ) -> Backbone | TemplateMean:
        """The feature extractor of an adapter (its template and label words) on the frozen model: a
        `TemplateMean` of one backbone per template when the adapter averages over its templates.

        The label words' token ids must be those the adapter was fitted with, unless `refit` (fit records them).
        """
        previous = self.sources.tokenizer
        name = adapter_name or self.active_name
        if tokenizer is None and previous is None:
            tokenizer = load_recorded_tokenizer(self.peft_config[name])
        content_free = {n: self.state(n).content_free for n in self.peft_config}
        content_free = {n: None if cf is None else cf.clone() for n, cf in content_free.items()}
        self.set_tokenizer(tokenizer)
        self.check_class_count(name, refit=refit)
        record = refit or not self.state(name).fitted
        if self.sources.stale(name, self.peft_config[name]):  # template or label words edited in place
            if not record:
                raise ValueError(
                    f"The template or label words of adapter {name!r} were changed after it was fitted: call fit() "
                    "again, or make a new adapter (get_peft_model with a new DecTConfig)."
                )
            self.state(name).content_free = None  # the content-free scores were of the old prompt
        try:
            return self.sources.backbone(name, self.peft_config[name], record_ids=record)
        except ValueError:
            if self.sources.tokenizer is not previous:  # a refused tokenizer is not kept for later calls
                self.sources.tokenizer = previous
                self.sources.backbones.clear()
                for n, cf in content_free.items():
                    self.state(n).content_free = cf
            raise

    def check_class_count(self, name: str, *, refit: bool) -> None:
        """Match the adapter's tensors to its config's classes after an in-place edit of `label_words`: a new fit
        starts from fresh tensors of the new class count; predicting with the old fit is a clear error."""
        saved, configured = self.dect_layer.dect_radii[name].numel(), len(self.peft_config[name].label_words)
        if saved == configured:
            return
        if not refit:
            raise ValueError(
                f"The adapter {name!r} was fitted for {saved} classes, but its config's label_words now name "
                f"{configured}: call fit() again, or make a new adapter (get_peft_model with a new DecTConfig)."
            )
        self.reset_adapter(name)

    @serialized
    def set_demonstrations(self, train_dataset, tokenizer=None) -> None:
        """Record `train_dataset` as the demonstration pool of the active adapter (fit() does this itself).

        With the adapter untrained, `zero_shot_logits(inputs, calibrate=False)` is then LM-BFF's in-context
        learning: label-word scoring of prompts that carry demonstrations, averaged over the sampled sets.
        """
        self.set_tokenizer(tokenizer)
        cfg = self.config_of_active
        if cfg.demonstrations is None:
            raise ValueError("Set demonstrations=N (sets per input) in the config to use demonstrations.")
        if self.sources.set_pool(self.active_name, cfg, train_dataset):
            self.state().content_free = None  # the content-free prompt carries demonstrations too: recompute it

    @serialized
    def use_soft_prompt(self, prompt_model, adapter_name: str | None = None, *, keep_fit: bool = False) -> None:
        """Read features with `prompt_model`'s soft prompt prepended; `None` goes back to the plain model.

        `prompt_model` is a PEFT prompt-tuning model wrapping this same base model; its active adapter is the soft
        prompt used. A decoder fitted on other features no longer applies, so the adapter is reset (fit it again).
        """
        name = adapter_name or self.active_name
        prompt_adapter = None
        if prompt_model is not None:
            check_prompt_model(prompt_model, self.model)
            prompt_adapter = prompt_model.active_adapter
        self.sources.set_soft_prompt(name, prompt_model, prompt_adapter)
        suffix = "" if prompt_adapter in (None, "default") else f"/{prompt_adapter}"
        self.peft_config[name].soft_prompt = None if prompt_model is None else SOFT_PROMPT_FOLDER + suffix
        if not keep_fit:
            self.reset_adapter(name)

    def soft_prompt_of(self, adapter_name: str | None = None):
        """(prompt-tuned PeftModel, its adapter name) whose soft prompt this adapter reads with, or None."""
        return self.sources.soft_prompts.get(adapter_name or self.active_name)

    @serialized
    def use_cache_dir(self, cache_dir, *, max_bytes: int | None = None) -> None:
        """Persist extracted features in `cache_dir` (safetensors) and reuse the ones already there.

        `None` switches to a fresh in-memory cache. Features already in memory stay available. `max_bytes` bounds
        the memory the cached rows take (least recently used rows are dropped first; None: no bound).
        """
        self.sources.use_cache_dir(cache_dir, max_bytes)

    @serialized
    def use_llama_cpp(self, gguf_file, **options) -> None:
        """Run the frozen model's body in-process with llama.cpp from `gguf_file` (the same model as a GGUF file,
        e.g. `peft_dect.embedded.smollm2_gguf()`'s): its quantised CPU kernels instead of PyTorch's; the LM head
        stays this model's. `None` switches back to PyTorch. `options` go to `LlamaCppRunner` (`n_threads`,
        `n_ctx`, `max_sequences`). Features computed either way are cached apart (their values differ slightly).
        """
        if gguf_file is None:
            self.set_runner(None)
            return
        if lm_kind(self.model) != CAUSAL:
            raise ValueError(
                f"The GGUF model {str(gguf_file)!r} is not this base model: llama.cpp runs causal LMs and "
                f"{type(self.model).__name__} is a {lm_kind(self.model)} LM; run it with PyTorch."
            )
        runner = LlamaCppRunner(gguf_file, **options)
        try:
            runner.check_sizes(*base_model_sizes(self.model))
        except ValueError:
            runner.close()
            raise
        self.set_runner(runner)

    def set_runner(self, runner) -> None:
        """Run the body with `runner` (None: PyTorch); content-free scores are recomputed the new way."""
        self.sources.set_runner(runner)
        for name in self.peft_config:
            self.state(name).content_free = None

    @serialized
    def streaming(self):
        """Under this context, predicted inputs bypass the feature cache (its memory bound and its folder too): the
        features of a streamed batch are dropped once it is predicted, so that `predict_stream` takes memory
        independent of the number of inputs."""
        return self.sources.transient_cache()

    @serialized
    def reset_adapter(self, adapter_name: str | None = None) -> None:
        """Forget an adapter's fit and calibration: back to its seeded initial state (zero-shot predictions)."""
        name = adapter_name or self.active_name
        self.dect_layer.update_layer(name, self.peft_config[name])
        self.peft_config[name].uncertainty = None
        self.set_adapter(self.active_adapters)
        self.records.pop(name, None)

    # ---------------------------------------------------------------- files beside the adapter config
    def write_adapter_files(self, folder: str, adapter_name: str) -> None:
        """Files an adapter keeps beside its config: its demonstration pool, the soft prompt it reads through."""
        if self.peft_config[adapter_name].demonstrations is not None:
            self.sources.write_pool(folder, adapter_name)
        entry = self.soft_prompt_of(adapter_name)
        if entry is not None:
            prompt_model, prompt_adapter = entry
            prompt_model.save_pretrained(os.path.join(folder, SOFT_PROMPT_FOLDER), selected_adapters=[prompt_adapter])

    def read_adapter_files(self, folder: str, adapter_name: str, fetch: Callable[[str], str]) -> None:
        """Read what `write_adapter_files` wrote; `fetch` gives the local folder of a subfolder of the adapter."""
        self.sources.read_pool(folder, adapter_name)
        relative = self.peft_config[adapter_name].soft_prompt
        if relative:
            inside_folder(folder, relative, "The adapter's soft_prompt")  # never a path outside the adapter
            self.use_soft_prompt(load_prompt_model(self.model, fetch(relative)), adapter_name, keep_fit=True)

    def model_card(self, adapter_name: str, repo: str | None = None) -> str:
        """The README.md of an adapter, from its run record."""
        return dect_card(self.records.get(adapter_name), self.peft_config[adapter_name], repo)

    # ---------------------------------------------------------------- fitting and prediction
    def core(self, tokenizer=None, *, refit: bool = False) -> DecTCore:
        """The DecT core of the active adapter: its config, its feature extractor and its state."""
        bb = self.backbone(tokenizer, refit=refit)
        return DecTCore(self.config_of_active, bb, self.state())

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
        metric=None,
    ) -> dict[str, Any]:
        """Train the decoder of the active adapter: one model pass per new input and prompt candidate, then decoder
        fitting.

        `train_dataset` (and `eval_dataset`) is a `datasets.Dataset` or a dict of columns with the text column(s)
        and labels. In auto mode cross-validation (plus the eval split, if given) chooses lam, epochs, calibration
        and, within the config's `budget`, the prompt (the template alone or with demonstrations, see
        `peft_dect.dect.prompt_search`) by `metric` (accuracy, f1, macro_f1, matthews_correlation, a callable or an
        `evaluate` metric), which `evaluate()` then reports next to accuracy.
        Returns a report with the choice, timings and the number of model passes.
        """
        cfg = self.config_of_active
        if cache_dir is not None:
            self.use_cache_dir(cache_dir)
        pool = train_dataset  # the demonstration pool holds in-scope examples only
        if cfg.out_of_scope_label is not None:
            pool, _ = split_by_label(train_dataset, cfg.label_column, cfg.out_of_scope_label)
        counts = []
        if not cfg.multi_label and cfg.mode == "auto" and cfg.budget > 1:
            counts = prompt_search.distinct_per_class(*cfg.read_texts(pool), cfg.read_labels(pool), len(cfg.classes))
        candidates = prompt_search.plan(cfg, counts, self.chat_available(tokenizer))
        first = candidates[0]  # is the plan's first prompt the one configured (or chosen before)?
        replaced = (first.demonstrations, first.template, first.averaged > 0) != (
            cfg.demonstrations,
            cfg.template_chosen,
            cfg.templates_averaged,
        )
        fit_args = (train_dataset, pool, tokenizer, eval_dataset, batch_size, show_progress, metric)
        reports = []
        for candidate in candidates:
            self.use_prompt(candidate)
            reports.append(self.fit_prompt(*fit_args))
        passes = sum(r["model_passes"] for r in reports)
        chosen = 0
        if len(candidates) > 1:
            chosen = prompt_search.best(candidates, [prompt_search.heldout_score(r) for r in reports])
        report = reports[chosen]
        if chosen != len(candidates) - 1:  # the last fit is in the state: fit the chosen one again (cached features)
            self.use_prompt(candidates[chosen])
            report = self.fit_prompt(*fit_args)
            passes += report["model_passes"]
        if len(candidates) > 1 or cfg.chosen_prompt is not None or replaced:
            cfg.chosen_prompt = candidates[chosen].name
        report = {**report, "model_passes": passes, **self.prompt_report(candidates, reports, chosen, pool)}
        self.run_record.start_fit(report)
        return report

    def chat_available(self, tokenizer=None) -> bool:
        """Whether the base model is a causal LM whose tokenizer (this one, or the one set before) has a chat
        template: auto mode may then try the prompt wrapped in it."""
        tokenizer = tokenizer if tokenizer is not None else self.sources.tokenizer
        return lm_kind(self.model) == CAUSAL and bool(getattr(tokenizer, "chat_template", None))

    def use_prompt(self, candidate: prompt_search.PromptCandidate) -> None:
        """Prompt the active adapter as `candidate` says from now on (its features and content-free scores anew)."""
        cfg = self.config_of_active
        chat_changes = cfg.chat_template is None and cfg.chat_chosen != candidate.chat
        averaged = candidate.averaged > 0
        same = (cfg.demonstrations, cfg.template_chosen, cfg.templates_averaged) == (
            candidate.demonstrations,
            candidate.template,
            averaged,
        )
        if same and not chat_changes:
            return
        cfg.demonstrations, cfg.template_chosen, cfg.templates_averaged = (
            candidate.demonstrations,
            candidate.template,
            averaged,
        )
        if cfg.chat_template is None:
            cfg.chat_chosen = candidate.chat
        self.sources.drop_backbone(self.active_name)
        self.state().content_free = None

    def fit_prompt(self, train_dataset, pool, tokenizer, eval_dataset, batch_size, show_progress, metric) -> dict:
        """Fit the active adapter with the prompt its config holds now; the core's report and the passes it ran."""
        cfg = self.config_of_active
        if cfg.demonstrations is not None:
            self.set_demonstrations(pool, tokenizer)
        core = self.core(tokenizer, refit=True)
        check_label_token_ids(cfg, core.source.verbalizer, record=True)
        self.peft_config[self.active_name].recorded.tokenizer = tokenizer_record(self.sources.tokenizer)
        core.source.show_progress = show_progress
        if batch_size is not None:
            core.source.batch_size = batch_size
        passes = core.source.passes
        report = core.fit(train_dataset, eval_dataset, metric=metric)
        report["model_passes"] = core.source.passes - passes
        self.fit_metric = metric
        return report

    def prompt_report(self, candidates, reports: list[dict], chosen: int, pool) -> dict:
        """What the fit report says of the prompt: the one chosen, what it costs per input at prediction (model
        passes, mean prompt tokens over the training inputs), and every candidate's held-out score."""
        texts_a, texts_b = self.config_of_active.read_texts(pool)
        ids = self.backbone().tokenize(texts_a, texts_b)  # a mean over templates: every template's prompt
        picked = candidates[chosen]
        sets = picked.passes // max(1, picked.averaged)  # demonstration sets: one prompt each
        out = {
            "prompt": picked.name,
            "predict_passes_per_input": picked.passes,
            "prompt_tokens_per_input": sets * sum(map(len, ids)) / max(1, len(ids)),
        }
        if len(candidates) > 1:
            scores = [prompt_search.heldout_score(r) for r in reports]
            out["prompt_candidates"] = {c.name: s for c, s in zip(candidates, scores)}
        return out

    @property
    def classes(self) -> list[str]:
        return self.config_of_active.classes

    def read_targets(self, data) -> torch.Tensor:
        return self.config_of_active.read_labels(data)

    @serialized
    def predict_logits(self, inputs, tokenizer=None, *, show_progress: bool = False) -> torch.Tensor:
        """Class logits (N, C) for texts, (text_a, text_b) pairs, a dict of columns or a Dataset."""
        core = self.core(tokenizer)
        core.source.show_progress = show_progress
        return core.logits(inputs, zero_shot=self.dect_layer.disable_adapters)

    @serialized
    def predict_many(
        self, inputs, adapters: Sequence[str] | None = None, tokenizer=None, *, proba: bool = False, **kwargs
    ) -> dict[str, list[str] | np.ndarray]:
        """Answers of several DecT adapters of this model for the same inputs: {adapter: class names} (or
        probabilities with `proba=True`). Adapters of one `pass_key` (one template) share one model pass over the
        inputs (the others' label words are scored from the cached hidden states); each further key costs one pass.

        `adapters` defaults to every DecT adapter; the active adapter is restored afterwards. Further keyword
        arguments go to `predict` / `predict_proba` (e.g. `reject=True`).
        """
        names = list(self.peft_config) if adapters is None else list(adapters)
        unknown = [n for n in names if n not in self.peft_config]
        if isinstance(adapters, str) or unknown or not names:
            raise ValueError(
                f"predict_many needs a list of this model's adapter names ({sorted(self.peft_config)}), got "
                f"{adapters!r}."
            )
        previous = self.active_adapters
        out: dict[str, list[str] | np.ndarray] = {}
        try:
            for name in sorted(names, key=self.pass_key):  # one shared pass after another
                self.set_adapter(name)
                answer = self.predict_proba if proba else self.predict
                out[name] = answer(inputs, tokenizer, **kwargs)
        finally:
            self.set_adapter(previous if len(previous) > 1 else previous[0])
        return {name: out[name] for name in names}

    def pass_key(self, adapter_name: str) -> str:
        """Adapters with equal keys share one model pass over a text (see `peft_dect.dect.sources.pass_key`)."""
        return pass_key(self.peft_config[adapter_name], adapter_name)

    def keeping_features(self):
        """Under this context the feature cache drops no row to meet its bound (it is met again on exit), so the
        features one call extracts serve the next calls of a small group (a server's batch for several adapters of
        one `pass_key`) even with a bound smaller than them. Its memory is that of the group's features."""
        return self.sources.cache.held()

    @serialized
    def zero_shot_logits(self, inputs, tokenizer=None, *, calibrate: bool = True, show_progress: bool = False):
        """Zero-shot class log-probabilities (N, C) from the label words alone, calibrated or not."""
        core = self.core(tokenizer)
        core.source.show_progress = show_progress
        return core.zero_shot_logits(inputs, calibrate=calibrate)

    @serialized
    def embed(self, inputs, tokenizer=None, *, show_progress: bool = False) -> torch.Tensor:
        """Hidden states (N, H) at the prediction position (from the feature cache when seen): for `suggest`."""
        core = self.core(tokenizer)
        core.source.show_progress = show_progress
        (feats,) = core.features([inputs], desc="predict")
        return feats.hidden.float().cpu()

    def class_logits(self, features, adapter_name: str | None = None) -> torch.Tensor:
        """Class logits (N, C) of an adapter for extracted features (zero-shot while adapters are disabled)."""
        multi_label = self.peft_config[adapter_name or self.active_name].multi_label
        return class_logits(
            self.state(adapter_name), features, zero_shot=self.dect_layer.disable_adapters, multi_label=multi_label
        )
