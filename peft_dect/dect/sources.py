"""Where a DecT model's adapters get their features: the tokenizer, the feature cache, soft prompts, demonstrations.

`AdapterSources` builds (and keeps) one `Backbone` per adapter from the adapter's template and label words, the
base model's tokenizer, the prompt-tuned model whose soft prompt it reads through (if any) and the demonstration
pool (if any); all backbones share one feature cache, so a second adapter on the same texts and template reruns
no model pass.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from torch import nn
from transformers import AutoTokenizer

from ..backbone import Backbone
from ..features import FeatureCache
from ..prompting import Template, Verbalizer
from ..prompting.demonstrations import Demonstrations
from ..saving import POOL_FILE, read_json_object
from .checks import check_label_token_ids
from .template_mean import TemplateMean


def prompt_key(config) -> str:
    """The prompt settings a backbone is built from: a change of any (in place, on the config) builds a new one."""
    fields = ("prompt_templates", "label_words", "label_word_aggregation", "multi_token", "max_length")
    return json.dumps([*(getattr(config, f) for f in fields), config.uses_chat_template], default=repr)


def pass_key(config, adapter_name: str) -> str:
    """What decides the model pass an adapter runs over a text: adapters of one base model with equal keys (one
    template and max_length, no prompt of their own) share it, the others' label words being scored from its hidden
    states (`predict_many`, and the server's batches across adapters). A soft prompt or a demonstration pool is an
    adapter's own, so such an adapter shares with none. Label words of several tokens continued through the prompt's
    key/value cache need the pass itself: such an adapter shares only with adapters of the same words, which the key
    cannot tell (it then runs a pass of its own; its answers are the same)."""
    own = adapter_name if config.demonstrations is not None or config.soft_prompt else None
    chat = [True] if config.uses_chat_template else []  # keys of plain prompts stay those of earlier versions
    template = config.prompt_templates if config.templates_averaged else config.active_template
    return json.dumps([template, config.max_length, own, *chat])


def load_recorded_tokenizer(config):
    """The tokenizer an adapter was fitted with, loaded from where it records it came from (None: not recorded).

    Offline (HF_HUB_OFFLINE) only local files are used. A recorded tokenizer that cannot be loaded is an error
    that says to pass one.
    """
    source = config.recorded.tokenizer
    if not isinstance(source, dict) or not source.get("name_or_path"):
        return None
    options = {"local_files_only": os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")}
    if source.get("gguf_file"):
        options["gguf_file"] = source["gguf_file"]
    try:
        return AutoTokenizer.from_pretrained(source["name_or_path"], **options)
    except Exception as err:  # not found, offline, no such file: any of these means "pass it"
        raise ValueError(
            f"DecT needs the base model's tokenizer, and this adapter records {source['name_or_path']!r}, which "
            f"could not be loaded ({type(err).__name__}): pass tokenizer=... to predict/fit once."
        ) from None


def tokenizer_record(tokenizer) -> dict | None:
    """Where a tokenizer loads from (its name_or_path, and its GGUF file), for `load_recorded_tokenizer`."""
    source = str(getattr(tokenizer, "name_or_path", "") or "")
    if not source or not (os.path.isdir(source) or not os.path.isabs(source)):
        return None
    gguf = (getattr(tokenizer, "init_kwargs", None) or {}).get("gguf_file")
    return {"name_or_path": os.path.abspath(source) if os.path.isdir(source) else source, "gguf_file": gguf}


class AdapterSources:
    """The per-adapter feature extractors of one frozen base model, their shared cache and their inputs.

    Args:
        model: the base model (with the DecT layer injected).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.tokenizer = None
        self.cache = FeatureCache()
        self.backbones: dict[str, Backbone] = {}
        self.backbone_keys: dict[str, str] = {}  # adapter -> the prompt settings its backbone was built from
        self.soft_prompts: dict[str, tuple[nn.Module, str]] = {}  # adapter -> (prompt-tuned PeftModel, its adapter)
        self.demo_pools: dict[str, dict] = {}  # adapter -> its demonstrations' training examples
        self.demo_encoder = None  # sentence encoder of demo_filter='similar' (texts -> embeddings); None: MiniLM
        self.runner = None  # what runs the model's body instead of PyTorch (a LlamaCppRunner), or None

    def forget(self, adapter_name: str) -> None:
        for per_adapter in (self.backbones, self.soft_prompts, self.demo_pools):
            per_adapter.pop(adapter_name, None)

    def drop_backbone(self, adapter_name: str) -> None:
        """Build adapter `adapter_name`'s feature extractor anew on next use (its demonstrations changed)."""
        self.backbones.pop(adapter_name, None)

    def set_tokenizer(self, tokenizer) -> bool:
        """Use `tokenizer` from now on; True when it replaced another one (features of the old one no longer apply)."""
        if tokenizer is None or tokenizer is self.tokenizer:
            return False
        replaced = self.tokenizer is not None
        self.tokenizer = tokenizer
        self.backbones.clear()
        return replaced

    def stale(self, name: str, config) -> bool:
        """Whether adapter `name`'s backbone was built from other prompt settings than its config holds now."""
        return name in self.backbones and self.backbone_keys.get(name) != prompt_key(config)

    def backbone(self, name: str, config, *, record_ids: bool) -> Backbone | TemplateMean:
        """The feature extractor of adapter `name`; its label words' token ids are recorded in the config
        (`record_ids`) or checked against the recorded ones."""
        if self.tokenizer is None:
            raise ValueError(
                "DecT needs the base model's tokenizer: pass tokenizer=... to fit/predict/prepare_dataset once "
                "(or call model.set_tokenizer(tokenizer))."
            )
        model = self.model
        if name in self.soft_prompts:
            model, prompt_adapter = self.soft_prompts[name]
            if model.active_adapter != prompt_adapter:
                model.set_adapter(prompt_adapter)
        key = prompt_key(config)
        if name in self.backbones and self.backbone_keys.get(name) != key:  # the config was edited in place
            config.check_prompt_settings()
            key = prompt_key(config)
            del self.backbones[name]
        if name not in self.backbones:
            # one backbone per template read; the first's label-word token ids are the ones recorded and checked
            templates = config.prompt_templates
            built = [
                self.build(name, config, model, t, record_ids if i == 0 else None) for i, t in enumerate(templates)
            ]
            self.backbones[name] = built[0] if len(built) == 1 else TemplateMean(built)
            self.backbone_keys[name] = key
        return self.backbones[name]

    def build(self, name: str, config, model, template_text: str, record_ids: bool | None) -> Backbone:
        """A backbone of adapter `name` for one of its templates (its own label-word tokens and demonstrations);
        its label words' token ids are recorded in the config (`record_ids` True), checked (False) or neither
        (None: another template's are)."""
        template = Template(template_text)
        verbalizer = Verbalizer.from_words(
            config.label_words,
            self.tokenizer,
            space_before=template.space_before_mask,
            aggregation=config.label_word_aggregation,
            multi_token=config.multi_token,
        )
        if record_ids is not None:
            check_label_token_ids(config, verbalizer, record=record_ids)
        demos = self.demonstrations(name, config, template, verbalizer)
        return Backbone(
            model, self.tokenizer, template, verbalizer, max_length=config.max_length, cache=self.cache,
            demonstrations=demos, runner=self.runner, chat=config.uses_chat_template,
        )  # fmt: skip

    def demonstrations(self, name: str, config, template: Template, verbalizer: Verbalizer) -> Demonstrations | None:
        """The demonstration sampler of an adapter that uses demonstrations (its pool must be known)."""
        if config.demonstrations is None:
            return None
        pool = self.demo_pools.get(name)
        if pool is None:
            raise ValueError(
                "This adapter uses demonstrations but has no demonstration pool yet: call fit() (or "
                "set_demonstrations(train_dataset) for in-context learning without training) first."
            )
        options = config.demonstrations.sampler_options(config.seed)
        return Demonstrations(
            pool["text_a"], pool.get("text_b"), pool["label"], template, verbalizer, encoder=self.demo_encoder,
            **options,
        )  # fmt: skip

    def set_pool(self, name: str, config, data) -> bool:
        """Make `data` the demonstration pool of adapter `name`; True if that changed it."""
        texts_a, texts_b = config.read_texts(data)
        pool = {"text_a": texts_a, "text_b": texts_b, "label": config.read_labels(data).tolist()}
        if pool == self.demo_pools.get(name):
            return False
        Demonstrations(texts_a, texts_b, pool["label"], config.template, config.label_words)  # every class present
        self.demo_pools[name] = pool
        self.backbones.pop(name, None)
        return True

    def set_soft_prompt(self, name: str, prompt_model, prompt_adapter: str | None) -> None:
        """Read adapter `name`'s features through `prompt_model`'s adapter `prompt_adapter` (None: the bare model)."""
        if prompt_model is None:
            self.soft_prompts.pop(name, None)
        else:
            self.soft_prompts[name] = (prompt_model, prompt_adapter)
        self.backbones.pop(name, None)

    def set_runner(self, runner) -> None:
        """Run the body with `runner` (None: PyTorch) from now on; every adapter's backbone is rebuilt."""
        if self.runner is not None and self.runner is not runner:
            self.runner.close()
        self.runner = runner
        self.backbones.clear()

    def use_cache_dir(self, cache_dir, max_bytes: int | None = None) -> None:
        """Persist features in `cache_dir` (features in memory stay available); `None`: a fresh in-memory cache.
        `max_bytes` bounds the memory the cache's rows take (least recently used rows go first)."""
        if cache_dir is not None and self.cache.directory == Path(cache_dir):
            self.cache.limit(max_bytes)
            return
        previous = self.cache
        self.cache = FeatureCache(cache_dir, max_bytes=max_bytes)
        if cache_dir is not None:
            self.cache.absorb(previous)
        for bb in self.backbones.values():
            bb.cache = self.cache

    @contextlib.contextmanager
    def transient_cache(self):
        """For the duration, every backbone uses a fresh in-memory cache that is dropped afterwards: features of
        the inputs predicted meanwhile (a streamed batch) are neither read from nor added to the shared cache."""
        shared = self.cache
        self.cache = FeatureCache()
        for bb in self.backbones.values():
            bb.cache = self.cache
        try:
            yield
        finally:
            self.cache = shared
            for bb in self.backbones.values():  # also those built meanwhile
                bb.cache = shared

    def write_pool(self, folder: str, name: str) -> None:
        """Save adapter `name`'s demonstration pool beside its config."""
        if name in self.demo_pools:
            with open(os.path.join(folder, POOL_FILE), "w", encoding="utf-8") as fh:
                json.dump(self.demo_pools[name], fh)

    def read_pool(self, folder: str, name: str) -> None:
        """Load the pool `write_pool` saved, when there is one (format 1.0 kept it in the config)."""
        path = os.path.join(folder, POOL_FILE)
        if os.path.isfile(path):
            pool = read_json_object(path, "demonstration pool")
            if not {"text_a", "label"} <= set(pool):
                raise ValueError(f"{path} lacks the 'text_a' or 'label' column; save the adapter again.")
            self.demo_pools[name] = pool
            self.backbones.pop(name, None)
