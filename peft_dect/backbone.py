"""Masked or causal LM -> Features: prompting, tokenisation with safe truncation, one batched pass per input."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .features import FeatureCache, Features
from .prompting import Template, Verbalizer, label_log_probs
from .prompting.demonstrations import Demonstrations


logger = logging.getLogger(__name__)

MASKED, CAUSAL = "masked", "causal"
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a `peft.PeftModel` (LoRA layers stay injected in it), else `model` itself."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def prepends_virtual_tokens(model: nn.Module) -> bool:
    """Whether `model` is a PeftModel whose active adapter is prompt learning (soft prompts before the input)."""
    from peft import PeftModel

    return isinstance(model, PeftModel) and bool(model.active_peft_config.is_prompt_learning)


def lm_kind(model: nn.Module) -> str:
    """'masked' or 'causal' for a transformers LM with its head (or a PeftModel around one); TypeError otherwise."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model = unwrap_peft(model)
    name = type(model).__name__
    if name in MODEL_FOR_MASKED_LM_MAPPING_NAMES.values() or name.endswith("ForMaskedLM"):
        kind = MASKED
    elif name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() or name.endswith(("ForCausalLM", "LMHeadModel")):
        kind = CAUSAL
    else:
        kind = None
    get_out = getattr(model, "get_output_embeddings", None)
    if kind is None or get_out is None or get_out() is None:
        raise TypeError(
            f"{name} has no language-modelling head. peft-dect needs the LM head to score label words: load the "
            "model with AutoModelForMaskedLM (BERT, RoBERTa, ...) or AutoModelForCausalLM (Llama, SmolLM2, ...)."
        )
    return kind


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(body, head) such that head(body(x).last_hidden_state) are the vocabulary logits, or None if not separable.

    Applying the head to the prediction position only avoids computing vocabulary logits for every token.
    """
    body = getattr(model, "base_model", model)
    out_emb = model.get_output_embeddings()
    if body is model or out_emb is None:
        return None
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if any(getattr(config, name, None) for name in LOGIT_POSTPROCESSING):
        return None  # the model rescales its logits after the head (Gemma 2/3, Cohere, Granite): run it whole
    holders, others = [], []
    for _, child in model.named_children():
        if child is body:
            continue
        if any(sub is out_emb for sub in child.modules()):
            holders.append(child)
        elif any(True for _ in child.parameters()):
            others.append(child)
    if len(holders) != 1 or others:
        return None
    return body, holders[0]


def model_fingerprint(model: nn.Module) -> str:
    """A short id of the weights the features depend on: name, shape and a checksum of a few embedding rows.

    For a PeftModel the active adapters' type and a checksum of their weights are added, so that features of a
    model with a soft prompt or LoRA never mix with those of the bare model (or of another adapter state).
    """
    from peft import PeftModel

    base = unwrap_peft(model)
    emb = base.get_input_embeddings().weight
    checksum = float(emb.detach()[:: max(1, emb.shape[0] // 64)].double().sum())
    name = getattr(getattr(base, "config", None), "_name_or_path", "") or ""
    key = f"{type(base).__name__}|{name}|{tuple(emb.shape)}|{checksum:.8e}"
    if isinstance(model, PeftModel) and not getattr(model.base_model, "disable_adapters", False):
        from peft import get_peft_model_state_dict

        for adapter in model.active_adapters:
            state = get_peft_model_state_dict(model, adapter_name=adapter)
            total = sum(
                float(t.detach().double().sum()) + float(t.detach().double().abs().sum()) for t in state.values()
            )
            key += f"|{model.peft_config[adapter].peft_type}:{adapter}:{total:.10e}"
    return key


def distributed_state():
    """accelerate's `PartialState` when this process is one of several (`accelerate launch`), else None."""
    import torch.distributed as dist

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not launched and not (dist.is_available() and dist.is_initialized()):
        return None
    from accelerate import PartialState

    # Without an accelerator, processes started by `accelerate launch --multi_gpu` / torchrun talk over gloo.
    accelerator = getattr(torch, "accelerator", None)
    has_accelerator = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    return PartialState(cpu=not has_accelerator)


def tokenizer_fingerprint(tokenizer) -> str:
    """A short id of how a tokenizer turns prompts into ids: name, size and the ids of a probe sentence."""
    probe = tokenizer("Tokenizer probe: a gorgeous, moving film.", add_special_tokens=True)["input_ids"]
    return f"{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer)}|{probe}"


def default_max_length(model: nn.Module, tokenizer) -> int:
    """Longest prompt in tokens: the tokenizer's and the position embeddings' limit, less any soft-prompt tokens."""
    base = unwrap_peft(model)
    limits = [getattr(tokenizer, "model_max_length", None), getattr(base.config, "max_position_embeddings", None)]
    limits = [int(x) for x in limits if x is not None and 0 < x < 1_000_000]
    if getattr(base.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limits = [x - 2 if x == base.config.max_position_embeddings else x for x in limits]
    limit = min(limits) if limits else 512
    if prepends_virtual_tokens(model):
        limit -= int(model.active_peft_config.num_virtual_tokens)
    return limit


class Backbone:
    """Runs a frozen masked or causal LM once per prompted input and keeps what DecT needs (`Features`).

    The prediction position is the mask token for a masked LM and the last prompt token for a causal LM (the
    prompt ends where the label word would follow). Only that position goes through the LM head.

    With `demonstrations` every prompt carries one sampled set of solved training examples: after the query for a
    masked LM (as LM-BFF does, separated by the tokenizer's separator token), before it for a causal LM (separated
    by a blank line), so that a causal prompt still ends at the query's prediction position. `extract` averages the
    features of the `num_sets` demonstration sets of each input; over-long prompts lose demonstration text first.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        template: Template,
        verbalizer: Verbalizer,
        *,
        max_length: int | None = None,
        batch_size: int = 16,
        show_progress: bool = True,
        cache: FeatureCache | None = None,
        demonstrations: Demonstrations | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.verbalizer = verbalizer
        self.kind = lm_kind(model)
        if self.kind == CAUSAL:
            template.check_causal()
        elif tokenizer.mask_token is None:
            raise ValueError(f"{type(tokenizer).__name__} has no mask token, which a masked LM template needs.")
        self.max_length = max_length or default_max_length(model, tokenizer)
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.cache = cache if cache is not None else FeatureCache()
        self.passes = 0  # inputs sent through the model, for tests and benchmarks
        self.truncated = 0
        # A soft prompt is prepended inside PeftModel.forward, so such models run whole; LoRA layers live inside the
        # transformers model, which can then be split into body and head like a bare model.
        self._split = None if prepends_virtual_tokens(model) else split_head(unwrap_peft(model))
        self._word_ids, self._word_mask = verbalizer.id_matrix()
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        parts = [
            model_fingerprint(model),
            tokenizer_fingerprint(tokenizer),
            template.text,
            self.kind,
            str(verbalizer.token_ids),
            verbalizer.aggregation,
            str(self.max_length),
        ]
        self.demonstrations = demonstrations
        if demonstrations is not None:
            if demonstrations.template.is_pair != template.is_pair:
                raise ValueError("The demonstrations' template and the backbone's template must use the same fields.")
            sep = tokenizer.sep_token if self.kind == MASKED else None
            self.demo_separator = sep if sep else ("\n\n" if self.kind == CAUSAL else " ")
            parts += [f"demos={demonstrations.fingerprint}", repr(self.demo_separator)]
        self._key_prefix = "|".join(parts)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---------------------------------------------------------------- prompts and tokens
    def _render_query(self, text_a: str, text_b: str | None = None) -> str:
        if self.kind == MASKED:
            return self.template.render(text_a, text_b, mask_token=self.tokenizer.mask_token)
        return self.template.render(text_a, text_b)

    def _join(self, query: str, demos: str) -> str:
        if not demos:
            return query
        if self.kind == MASKED:
            return query + self.demo_separator + demos
        return demos + self.demo_separator + query

    def render(self, text_a: str, text_b: str | None = None, set_index: int = 0) -> str:
        """The prompt of one input (with demonstration set `set_index` when the backbone has demonstrations)."""
        query = self._render_query(text_a, text_b)
        if self.demonstrations is None:
            return query
        demos = self.demonstrations.render(text_a, text_b, set_index, separator=self.demo_separator)
        return self._join(query, demos)

    def tokenize(
        self, texts_a: Sequence[str], texts_b: Sequence[str | None] | None = None, set_index: int = 0
    ) -> list[list[int]]:
        """Token ids of each prompt; over-long inputs lose demonstration text first, then text-field tokens, never
        template or mask tokens."""
        texts_b = texts_b if texts_b is not None else [None] * len(texts_a)
        if self.demonstrations is not None:
            self.demonstrations.prepare(texts_a, texts_b)
        prompts = [self.render(a, b, set_index) for a, b in zip(texts_a, texts_b)]
        ids = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
        truncated = cut_demos = 0
        for i, row in enumerate(ids):
            if len(row) > self.max_length:
                if self.demonstrations is not None:
                    ids[i], query_cut = self._truncate_demos(texts_a[i], texts_b[i], set_index)
                    cut_demos += 1
                    truncated += query_cut
                else:
                    ids[i] = self._truncate(texts_a[i], texts_b[i])
                    truncated += 1
        if cut_demos:
            logger.warning(
                "Cut the demonstrations of %d input(s) to fit max_length=%d tokens; the query and its mask were kept.",
                cut_demos,
                self.max_length,
            )
        if truncated:
            self.truncated += truncated
            logger.warning(
                "Truncated the text of %d input(s) to fit max_length=%d tokens; the template and mask were kept.",
                truncated,
                self.max_length,
            )
        if self.kind == MASKED:
            mask_id = self.tokenizer.mask_token_id
            for i, row in enumerate(ids):
                if row.count(mask_id) != 1:
                    raise ValueError(
                        f"Input {i} has {row.count(mask_id)} mask tokens after prompting (its text contains "
                        f"{self.tokenizer.mask_token!r}?); the prompt must have exactly one."
                    )
        return ids

    def _truncate_demos(self, text_a: str, text_b: str | None, set_index: int) -> tuple[list[int], bool]:
        """(ids, whether the query itself was truncated): demonstration tokens go first, from the end far from the
        query; only when no demonstration token fits is the query truncated as without demonstrations."""
        query = self._render_query(text_a, text_b)
        demos = self.demonstrations.render(text_a, text_b, set_index, separator=self.demo_separator)
        for _ in range(8):
            ids = self.tokenizer(self._join(query, demos), add_special_tokens=True)["input_ids"]
            excess = len(ids) - self.max_length
            if excess <= 0:
                return ids, False
            pieces = self.tokenizer.encode(demos, add_special_tokens=False)
            keep = len(pieces) - excess - 1
            if keep <= 0:
                break
            demos = self.tokenizer.decode(pieces[:keep] if self.kind == MASKED else pieces[-keep:])
        ids = self.tokenizer(query, add_special_tokens=True)["input_ids"]
        if len(ids) <= self.max_length:
            return ids, False
        return self._truncate(text_a, text_b), True

    def _truncate(self, text_a: str, text_b: str | None) -> list[int]:
        texts = {"text_a": text_a, "text_b": text_b}
        for _ in range(8):
            prompt = self._render_query(texts["text_a"], texts["text_b"])
            ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
            excess = len(ids) - self.max_length
            if excess <= 0:
                return ids
            pieces = {f: self.tokenizer.encode(texts[f], add_special_tokens=False) for f in self.template.fields}
            longest = max(pieces, key=lambda f: len(pieces[f]))
            if not pieces[longest]:
                break
            keep = max(0, len(pieces[longest]) - excess - 1)
            texts[longest] = self.tokenizer.decode(pieces[longest][:keep])
        raise ValueError(
            f"The template {self.template.text!r} alone needs more than max_length={self.max_length} tokens; "
            "shorten the template or raise max_length."
        )

    def collate(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """Right-pad token id lists into `input_ids` and `attention_mask` tensors."""
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            attention_mask[i, : len(r)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Index of the prediction position in each row (works with left or right padding)."""
        if self.kind == MASKED:
            is_mask = input_ids == self.tokenizer.mask_token_id
            if not bool((is_mask.sum(-1) == 1).all()):
                raise ValueError("Every input must contain exactly one mask token; prompt inputs with the template.")
            return is_mask.long().argmax(-1)
        if attention_mask is None:
            return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
        idx = torch.arange(input_ids.shape[1], device=input_ids.device)
        return (attention_mask.long() * (idx + 1)).argmax(-1)

    # ---------------------------------------------------------------- the forward pass
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Features:
        """Features of a tokenised batch (no gradient needed for the frozen model, but autograd-safe)."""
        pos = self.positions(input_ids, attention_mask)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        if self._split is not None:
            body, head = self._split
            out = body(input_ids=input_ids, attention_mask=attention_mask)
            hidden = out[0][rows, pos]
            vocab_logits = head(hidden)
        else:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            # Prompt-learning adapters prepend virtual tokens: the outputs are longer than the inputs by that many.
            pos = pos + (out.logits.shape[1] - input_ids.shape[1])
            hidden = out.hidden_states[-1][rows, pos]
            vocab_logits = out.logits[rows, pos]
        ids, mask = self._word_ids.to(hidden.device), self._word_mask.to(hidden.device)
        return Features(hidden.float(), label_log_probs(vocab_logits, ids, mask, self.verbalizer.aggregation))

    def keys(
        self, texts_a: Sequence[str], texts_b: Sequence[str | None] | None = None, set_index: int = 0
    ) -> list[str]:
        """Cache keys: model, tokenizer, template, label words, length budget, texts (and demonstration set)."""
        texts_b = texts_b if texts_b is not None else [None] * len(texts_a)
        extra = [set_index] if self.demonstrations is not None else []
        return [
            hashlib.sha1(json.dumps([self._key_prefix, a, b, *extra]).encode("utf-8", "surrogatepass")).hexdigest()
            for a, b in zip(texts_a, texts_b)
        ]

    def extract(
        self, texts_a: Sequence[str], texts_b: Sequence[str | None] | None = None, *, desc: str = "features"
    ) -> Features:
        """Features for every input, from the cache where possible; new inputs run once, in length-sorted batches.

        Under `accelerate launch` the new inputs are split across the processes and the features gathered back in
        input order, so every process ends with the same features as a single process would compute.
        """
        sets = self.demonstrations.num_sets if self.demonstrations is not None else 1
        n = len(texts_a)
        keys = [k for s in range(sets) for k in self.keys(texts_a, texts_b, s)]
        todo = self.cache.missing(keys)
        if todo:
            ids: list[list[int]] = []
            for s in range(sets):  # one tokenizer call per demonstration set
                rows = [j % n for j in todo if j // n == s]
                sub_b = [texts_b[i] for i in rows] if texts_b is not None else None
                ids += self.tokenize([texts_a[i] for i in rows], sub_b, s) if rows else []
            new = self._run_distributed(ids, desc)
            new.check_finite(index=[j % n for j in todo])
            self.cache.put([keys[i] for i in todo], new)
        feats = self.cache.gather(keys)
        if sets == 1:
            return feats
        # the average over demonstration sets, as LM-BFF averages its logits over sampled sets
        return Features(feats.hidden.view(sets, n, -1).mean(0), feats.label_logits.view(sets, n, -1).mean(0))

    def _run_distributed(self, ids: list[list[int]], desc: str) -> Features:
        state = distributed_state()
        if state is None or state.num_processes == 1:
            return self._run(ids, desc, show=self.show_progress)
        from accelerate.utils import gather

        per = -(-len(ids) // state.num_processes)
        lo, hi = min(len(ids), state.process_index * per), min(len(ids), (state.process_index + 1) * per)
        local = self._run(ids[lo:hi], desc, show=self.show_progress and state.is_local_main_process)
        # Shards are contiguous and only the last non-empty one can be short, so after padding every shard to
        # `per` rows the first len(ids) gathered rows are the inputs in order.
        padded = []
        for tensor in (local.hidden, local.label_logits):
            block = tensor.new_zeros((per, tensor.shape[1]))
            block[: tensor.shape[0]] = tensor
            padded.append(gather(block.to(state.device)).cpu()[: len(ids)])
        return Features(*padded)

    def _run(self, ids: list[list[int]], desc: str, show: bool) -> Features:
        """One model pass per token list, in length-sorted batches; features in the order of `ids`."""
        if not ids:
            base = unwrap_peft(self.model)
            hidden = getattr(base.config, "hidden_size", None) or base.get_input_embeddings().weight.shape[1]
            return Features(torch.zeros(0, hidden), torch.zeros(0, self.verbalizer.num_classes))
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        parts: list[Features] = []
        # Restore each module's own mode afterwards: a PeftModel may be in train mode around an eval-mode model.
        modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in tqdm(range(0, len(order), self.batch_size), desc=desc, disable=not show, unit="batch"):
                    chunk = order[start : start + self.batch_size]
                    batch = {k: v.to(self.device) for k, v in self.collate([ids[i] for i in chunk]).items()}
                    feats = self.forward(**batch)
                    parts.append(Features(feats.hidden.cpu(), feats.label_logits.cpu()))
                    self.passes += len(chunk)
        finally:
            for module, mode in modes:
                module.training = mode
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        new = Features.cat(parts)[inverse]
        # Leave inference mode: cached tensors must be usable by autograd later (decoder training).
        return Features(new.hidden.clone(), new.label_logits.clone())
