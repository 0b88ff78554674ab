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


def adapters_disabled(model: nn.Module) -> bool:
    """Whether a PeftModel runs as its base model now (inside `with model.disable_adapter():`)."""
    flag = getattr(model.base_model, "disable_adapters", False)
    return bool(getattr(model, "_adapters_disabled", False)) or (isinstance(flag, bool) and flag)


def embedded_prompt_length(model: nn.Module) -> int:
    """Virtual tokens a PeftModel's active adapter prepends as input embeddings (prompt tuning, P-tuning), else 0."""
    if not prepends_virtual_tokens(model) or adapters_disabled(model):
        return 0
    config = model.active_peft_config
    if getattr(config.peft_type, "value", config.peft_type) not in ("PROMPT_TUNING", "P_TUNING"):
        return 0
    return int(config.num_virtual_tokens)


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
    # `disable_adapters` is a flag on PEFT tuners but a method on transformers models (the base of prompt learning)
    if isinstance(model, PeftModel) and not adapters_disabled(model):
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


def _water_fill(counts: dict[str, int], budget: int) -> dict[str, int]:
    """Tokens each field keeps: the largest common cap such that the kept tokens fit the budget."""
    cap = 0
    while cap < max(counts.values()) and sum(min(n, cap + 1) for n in counts.values()) <= budget:
        cap += 1
    return {f: min(n, cap) for f, n in counts.items()}


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
        # LoRA layers live inside the transformers model, which can then be split into body and head like a bare
        # model; soft prompts are prepended to the body's input embeddings (see `forward`).
        self._split = split_head(unwrap_peft(model))
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
        """Token ids of the prompt with its text fields cut (at character boundaries) to fit `max_length`.

        The token budget left by the template is shared out by water-filling: fields shorter than the cap keep
        everything, the longer ones are cut to the same number of tokens. Cutting characters rather than decoding
        token prefixes never splits a character (byte-level BPE would turn half a character into 3-byte U+FFFD).
        """
        fields = self.template.fields
        texts = {"text_a": text_a, "text_b": text_b}

        def prompt_ids(values: dict) -> list[int]:
            return self.tokenizer(self._render_query(values["text_a"], values["text_b"]), add_special_tokens=True)[
                "input_ids"
            ]

        bare = len(prompt_ids({f: ("" if f in fields else v) for f, v in texts.items()}))
        if bare > self.max_length:
            raise ValueError(
                f"The template {self.template.text!r} alone needs more than max_length={self.max_length} tokens "
                f"({bare} with empty text fields); shorten the template or raise max_length."
            )
        counts = {f: len(self.tokenizer.encode(texts[f], add_special_tokens=False)) for f in fields}
        target = _water_fill(counts, self.max_length - bare)
        for _ in range(32):  # in context, tokens can merge across field boundaries: shrink until it fits
            values = {**texts, **{f: self._prefix(texts[f], target[f]) for f in fields}}
            ids = prompt_ids(values)
            excess = len(ids) - self.max_length
            if excess <= 0:
                return ids
            longest = max(fields, key=lambda f: target[f])
            target[longest] = max(0, target[longest] - excess)
        return prompt_ids({f: ("" if f in fields else v) for f, v in texts.items()})

    def _prefix(self, text: str, tokens: int) -> str:
        """The longest prefix of `text` (in characters) that encodes to at most `tokens` tokens."""
        if tokens <= 0:
            return ""
        lo, hi = 0, min(len(text), 64 * (tokens + 1))  # no token spans 64 characters: bounds the search
        while lo < hi:  # binary search: token counts grow (almost always) with the prefix length
            mid = (lo + hi + 1) // 2
            if len(self.tokenizer.encode(text[:mid], add_special_tokens=False)) <= tokens:
                lo = mid
            else:
                hi = mid - 1
        return text[:lo]

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
        virtual = embedded_prompt_length(self.model)
        if self._split is not None and (virtual or not prepends_virtual_tokens(self.model)):
            body, head = self._split
            if virtual:  # PEFT's own prompt before the input embeddings, as its forward does: the head still runs
                embeds = self.model.word_embeddings(input_ids)  # at one position instead of over the whole sequence
                prompts = self.model.get_prompt(batch_size=input_ids.shape[0]).to(embeds.dtype)
                if attention_mask is None:
                    attention_mask = torch.ones_like(input_ids)
                attention_mask = torch.cat((attention_mask.new_ones(input_ids.shape[0], virtual), attention_mask), 1)
                out = body(inputs_embeds=torch.cat((prompts, embeds), 1), attention_mask=attention_mask)
                pos = pos + virtual
            else:
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
            new.check_finite(index=[j % n for j in todo], texts=[texts_a[j % n] for j in todo])
            self.cache.put([keys[i] for i in todo], new)
        feats = self.cache.gather(keys)
        if sets == 1:
            return feats
        # the average over demonstration sets, as LM-BFF averages its logits over sampled sets
        return Features(feats.hidden.view(sets, n, -1).mean(0), feats.label_logits.view(sets, n, -1).mean(0))

    def _batches(self, ids: list[list[int]]) -> list[list[int]]:
        """Indices of `ids` grouped into batches of similar length (sorted by length, then cut)."""
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        return [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]

    def _run_distributed(self, ids: list[list[int]], desc: str) -> Features:
        """Features of `ids`; under several processes each runs every N-th batch and the rows are gathered back.

        The batches are those a single process would form, so every input is computed in the same batch, with the
        same padding and shapes, as without accelerate: the features, and the decoder fitted on them, are
        bit-identical to a single-process run. Gathering only concatenates, so no floating-point sum reorders.
        """
        state = distributed_state()
        if state is None or state.num_processes == 1 or not ids:
            return self._run(ids, desc, show=self.show_progress)
        from accelerate.utils import gather

        batches, n = self._batches(ids), state.num_processes
        mine = batches[state.process_index :: n]
        local = self._run_batches(ids, mine, desc, show=self.show_progress and state.is_local_main_process)
        per = -(-len(batches) // n) * self.batch_size  # rows of the busiest process
        source = torch.empty(len(ids), dtype=torch.long)  # gathered row of each input
        for p in range(n):
            offset = p * per
            for batch in batches[p::n]:
                source[torch.tensor(batch)] = torch.arange(offset, offset + len(batch))
                offset += len(batch)
        padded = []
        for tensor in (local.hidden, local.label_logits):
            block = tensor.new_zeros((per, tensor.shape[1]))
            block[: tensor.shape[0]] = tensor
            padded.append(gather(block.to(state.device)).cpu()[source])
        return Features(*padded)

    def _run(self, ids: list[list[int]], desc: str, show: bool) -> Features:
        """One model pass per token list, in length-sorted batches; features in the order of `ids`."""
        batches = self._batches(ids)
        new = self._run_batches(ids, batches, desc, show)
        if not ids:
            return new
        order = torch.tensor([i for batch in batches for i in batch])
        inverse = torch.empty(len(ids), dtype=torch.long)
        inverse[order] = torch.arange(len(ids))
        return new[inverse]

    def _run_batches(self, ids: list[list[int]], batches: list[list[int]], desc: str, show: bool) -> Features:
        """Features of the given batches of `ids`, rows in the order of the batches' concatenation."""
        if not batches:
            base = unwrap_peft(self.model)
            hidden = getattr(base.config, "hidden_size", None) or base.get_input_embeddings().weight.shape[1]
            return Features(torch.zeros(0, hidden), torch.zeros(0, self.verbalizer.num_classes))
        parts: list[Features] = []
        # Restore each module's own mode afterwards: a PeftModel may be in train mode around an eval-mode model.
        modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        try:
            with torch.inference_mode():
                for chunk in tqdm(batches, desc=desc, disable=not show, unit="batch"):
                    batch = {k: v.to(self.device) for k, v in self.collate([ids[i] for i in chunk]).items()}
                    feats = self.forward(**batch)
                    parts.append(Features(feats.hidden.cpu(), feats.label_logits.cpu()))
                    self.passes += len(chunk)
        finally:
            for module, mode in modes:
                module.training = mode
        new = Features.cat(parts)
        # Leave inference mode: cached tensors must be usable by autograd later (decoder training).
        return Features(new.hidden.clone(), new.label_logits.clone())
