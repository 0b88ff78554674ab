"""The batched runner: a frozen masked or causal LM, once per prompted input, to `Features` (cached).

Prompt rendering and truncation live in `peft_dect.prompting.encoding`, model introspection in
`peft_dect.introspect`; this module runs the model and keeps what one pass gives at the prediction position.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Sequence

import torch
from accelerate.utils import gather
from torch import nn
from tqdm.auto import tqdm

from .continuations import cache_keyword, cache_of, continuation_log_probs
from .features import FeatureCache, Features
from .introspect import (
    CAUSAL,
    MASKED,
    base_model_sizes,
    default_max_length,
    distributed_state,
    embedded_prompt_length,
    hidden_size,
    lm_kind,
    model_fingerprint,
    prepends_virtual_tokens,
    split_head,
    tokenizer_fingerprint,
    unwrap_peft,
)
from .prompting import Template, Verbalizer, label_log_probs
from .prompting.demonstrations import Demonstrations
from .prompting.encoding import PromptEncoder
from .prompting.verbalizer import word_class_scores
from .settings import check_int


# shared prompt prefixes shorter than this run with their rows (a pass over a few tokens saves little)
MIN_SHARED_PREFIX = 16
# rows per LM-head call when label-word scores are derived from cached hidden states (bounds the (rows, vocab) logits)
HEAD_ROWS = 256


class Backbone:
    """Runs a frozen masked or causal LM once per prompted input and keeps what one pass gives (`Features`).

    The prediction position is the mask token for a masked LM and the last prompt token for a causal LM (the
    prompt ends where the label word would follow). Only that position goes through the LM head. With
    `demonstrations` every prompt carries one sampled set of solved training examples (see `PromptEncoder`), and
    `extract` averages the features of the `num_sets` demonstration sets of each input. With `chat` a causal LM's
    prompt is wrapped in its tokenizer's chat template (see `PromptEncoder`).

    Public interface: `tokenize` / `render` (prompting), `collate`, `positions`, `forward` (a tokenised batch),
    `from_embeddings` (a batch given as input embeddings), `label_scores` (vocabulary logits to class scores),
    `run` (token id lists in length-sorted batches) and `extract` (texts, through the feature cache). With a
    `runner` (see `check_runner`), the body runs there instead of PyTorch and the LM head stays this model's.
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
        runner=None,
        chat: bool = False,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.verbalizer = verbalizer
        self.kind = lm_kind(model)
        self.encoder = PromptEncoder(
            tokenizer, template, self.kind, max_length or default_max_length(model, tokenizer), demonstrations, chat
        )
        self.batch_size = batch_size  # validated by the property's setter
        self.show_progress = show_progress
        self.cache = cache if cache is not None else FeatureCache()
        self.passes = 0  # inputs sent through the model, for tests and benchmarks
        # LoRA layers live inside the transformers model, which can then be split into body and head like a bare
        # model; soft prompts are prepended to the body's input embeddings (see `forward`).
        self.head_split = split_head(unwrap_peft(model))
        self.label_ids, self.label_mask = verbalizer.id_matrix()
        # words of several tokens under an exact rule: scored whole (a causal LM continues the prompt's cache)
        self.plan = verbalizer.plan() if verbalizer.scores_sequences else None
        self.continues = self.plan is not None and self.kind == CAUSAL
        self.vocab_size = base_model_sizes(unwrap_peft(model))[1]
        if verbalizer.longest_word >= self.max_length:
            raise ValueError(
                f"A label word is {verbalizer.longest_word} tokens, which does not fit the model's context with a "
                f"prompt (max_length={self.max_length}); choose a shorter word or raise max_length."
            )
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        parts = [
            tokenizer_fingerprint(tokenizer),
            template.text,
            self.kind,
            str(verbalizer.token_ids),
            verbalizer.aggregation,
            str(self.max_length),
        ]
        if self.plan is not None:  # keys of single-token words stay those of earlier versions
            parts += [f"{verbalizer.multi_token}={verbalizer.sequences}"]
        prompt = [tokenizer_fingerprint(tokenizer), template.text, self.kind, str(self.max_length)]
        if chat:  # keys of plain prompts stay those of earlier versions
            chat_key = [f"chat={tokenizer.chat_template}"]
            parts, prompt = parts + chat_key, prompt + chat_key
        if demonstrations is not None:
            demos = [f"demos={demonstrations.fingerprint}", repr(self.encoder.demo_separator)]
            parts, prompt = parts + demos, prompt + demos
        self.prompt_key = "|".join(parts)
        # What a pass gives independently of the label words: the hidden state at the prediction position, cached
        # under a key without them, so another adapter's words are scored from it by the LM head at that position
        # alone (no model pass). Words continued through the prompt's key/value cache need the pass itself.
        self.scores_from_hidden = self.head_split is not None and not self.continues
        self.hidden_key = "hidden|" + "|".join(prompt)
        self.share_prefixes = True  # run a prefix every prompt of a batch shares once (see `shared_prefix`)
        self.runner = runner
        if runner is not None:
            self.check_runner(runner)

    def check_runner(self, runner) -> None:
        """Refuse a runner that cannot stand in for this model's body, naming why.

        A runner (see `runner` in `__init__`) runs a causal LM's body from token ids and gives the final hidden
        state at each prompt's last token (`hidden(rows)`); it has a `name` for these errors, a `fingerprint` for
        the cache keys, and `check_sizes(hidden_size, vocab_size)`, which refuses a model it is not.
        """
        base = unwrap_peft(self.model)
        if self.kind != CAUSAL or self.head_split is None:
            raise ValueError(
                f"The {runner.name} backbone runs causal LMs whose LM head is separable from the body; "
                f"{type(base).__name__} is not one: run it with PyTorch (no {runner.name} backbone)."
            )
        if self.continues:
            raise ValueError(
                "Label words of several tokens are scored whole on the prompt's key/value cache, which the "
                f"{runner.name} backbone does not expose: set multi_token='first', or run the model with PyTorch."
            )
        if embedded_prompt_length(self.model) or prepends_virtual_tokens(self.model):
            raise ValueError(
                f"A soft prompt needs the model in PyTorch: the {runner.name} backbone reads token ids only."
            )
        runner.check_sizes(hidden_size(self.model), self.vocab_size)

    @property
    def key_prefix(self) -> str:
        """The part of every cache key that is not the text: the model's weights now, tokenizer, prompt settings.

        The model fingerprint is recomputed at every call (milliseconds, see `model_fingerprint`), so weights
        updated in place since the last extraction (a soft prompt trained further, a LoRA merged) get new features.
        """
        return f"{self.weights_key()}|{self.prompt_key}"

    def weights_key(self) -> str:
        """The model part of the cache keys: the weights' fingerprint (and the runner's file, with one)."""
        key = model_fingerprint(self.model)
        return key if self.runner is None else f"{self.runner.fingerprint}|{key}"

    @property
    def batch_size(self) -> int:
        """Inputs per model pass."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        check_int("batch_size", value, 1)
        self._batch_size = value

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_length(self) -> int:
        """Token budget of a prompt."""
        return self.encoder.max_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        self.encoder.max_length = value

    @property
    def truncated(self) -> int:
        """Inputs whose text was truncated to fit `max_length` so far."""
        return self.encoder.truncated

    @property
    def demonstrations(self) -> Demonstrations | None:
        return self.encoder.demonstrations

    # ---------------------------------------------------------------- prompts and tokens
    def render(self, text_a: str, text_b: str | None = None, set_index: int = 0) -> str:
        """The prompt of one input (with demonstration set `set_index` when the backbone has demonstrations)."""
        return self.encoder.render(text_a, text_b, set_index)

    def tokenize(
        self, texts_a: Sequence[str], texts_b: Sequence[str | None] | None = None, set_index: int = 0
    ) -> list[list[int]]:
        """Token ids of each prompt, truncated to `max_length` as `PromptEncoder.tokenize` says."""
        return self.encoder.tokenize(texts_a, texts_b, set_index)

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
    def label_scores(self, vocab_logits: torch.Tensor, continuation: torch.Tensor | None = None) -> torch.Tensor:
        """Class scores (N, C) from vocabulary logits (N, V) at the prediction position (and, for words of several
        tokens under a causal LM, the log-probabilities of their continuations, see `peft_dect.continuations`)."""
        if self.plan is None:
            ids, mask = self.label_ids.to(vocab_logits.device), self.label_mask.to(vocab_logits.device)
            return label_log_probs(vocab_logits, ids, mask, self.verbalizer.aggregation)
        log_probs = torch.log_softmax(vocab_logits.float(), dim=-1)
        per_token = self.verbalizer.multi_token == "exact_mean"
        plan = self.plan.to(vocab_logits.device)
        return word_class_scores(log_probs, plan, self.verbalizer.aggregation, continuation, per_token)

    def _continuation(self, run, head, out, hidden: torch.Tensor, attention_mask, positions) -> torch.Tensor | None:
        """Log-probabilities of the label words' continuations after a prompt pass `out` (None if not needed)."""
        if not self.continues:
            return None
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[0], positions.max().item() + 1, device=hidden.device)
        return continuation_log_probs(
            run, head, out, attention_mask, positions, self.plan, hidden.dtype, self.vocab_size
        )

    @property
    def _cache_option(self) -> dict:
        return {"use_cache": True} if self.continues else {}

    def _split_pass(self, inputs: dict, attention_mask, positions: torch.Tensor) -> Features:
        """The body over the batch, the head at `positions` only (and the label words' continuations)."""
        body, head = self.head_split
        out = body(**inputs, attention_mask=attention_mask, **self._cache_option)
        hidden = out[0][torch.arange(positions.shape[0], device=positions.device), positions]
        cont = self._continuation(body, head, out, hidden, attention_mask, positions)
        return Features(hidden.float(), self.label_scores(head(hidden), cont))

    def from_embeddings(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> Features:
        """Features of a batch given as input embeddings (a soft prompt already in front) at `positions`.

        The transformers model itself runs (no PEFT prompt is added); the head runs at the positions only when it
        is separable from the body.
        """
        if self.head_split is not None:
            return self._split_pass({"inputs_embeds": inputs_embeds}, attention_mask, positions)
        rows = torch.arange(inputs_embeds.shape[0], device=inputs_embeds.device)
        base = unwrap_peft(self.model)
        out = base(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, output_hidden_states=True, **self._cache_option
        )
        hidden, vocab_logits = out.hidden_states[-1][rows, positions], out.logits[rows, positions]
        cont = self._continuation(base, None, out, hidden, attention_mask, positions)
        return Features(hidden.float(), self.label_scores(vocab_logits, cont))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Features:
        """Features of a tokenised batch (no gradient needed for the frozen model, but autograd-safe)."""
        pos = self.positions(input_ids, attention_mask)
        virtual = embedded_prompt_length(self.model)
        if self.head_split is not None and virtual:
            # PEFT's own prompt before the input embeddings, as its forward does: the head still runs at one
            # position instead of over the whole sequence
            embeds = self.model.word_embeddings(input_ids)
            prompts = self.model.get_prompt(batch_size=input_ids.shape[0]).to(embeds.dtype)
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            attention_mask = torch.cat((attention_mask.new_ones(input_ids.shape[0], virtual), attention_mask), 1)
            return self.from_embeddings(torch.cat((prompts, embeds), 1), attention_mask, pos + virtual)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        if self.head_split is not None and not prepends_virtual_tokens(self.model):
            return self._split_pass({"input_ids": input_ids}, attention_mask, pos)
        if self.continues and prepends_virtual_tokens(self.model):
            raise ValueError(
                "Label words of several tokens are scored whole by continuing the prompt's key/value cache, "
                f"which a {self.model.active_peft_config.peft_type} adapter's own prefix does not allow here; "
                "set multi_token='first' (or use single-token label words)."
            )
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **self._cache_option
        )
        # Prompt-learning adapters prepend virtual tokens: the outputs are longer than the inputs by that many.
        pos = pos + (out.logits.shape[1] - input_ids.shape[1])
        hidden, vocab_logits = out.hidden_states[-1][rows, pos], out.logits[rows, pos]
        cont = self._continuation(self.model, None, out, hidden, attention_mask, pos)
        return Features(hidden.float(), self.label_scores(vocab_logits, cont))

    def keys(
        self, texts_a: Sequence[str], texts_b: Sequence[str | None] | None = None, set_index: int = 0
    ) -> list[str]:
        """Cache keys: model, tokenizer, template, label words, length budget, texts (and demonstration set)."""
        return self._keys(self.key_prefix, texts_a, texts_b, set_index)

    def label_scores_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """Class scores (N, C) of hidden states (N, H) at the prediction position: the LM head at that position only,
        as the pass computes them (only when `scores_from_hidden`: a separable head, no continuation needed)."""
        if not self.scores_from_hidden:
            raise ValueError("This backbone's label-word scores need a model pass (a head that is not separable, or "
                             "label words continued through the prompt's key/value cache).")  # fmt: skip
        with self.evaluating():
            scores = self._head_scores(hidden)
        return scores.clone()  # out of inference mode, as `_run_batches` leaves its features

    def _head_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        _, head = self.head_split
        dtype = next((p.dtype for p in head.parameters() if p.is_floating_point()), hidden.dtype)
        parts = [torch.zeros(0, self.verbalizer.num_classes)]
        for start in range(0, hidden.shape[0], HEAD_ROWS):
            rows = hidden[start : start + HEAD_ROWS].to(self.device, dtype)
            parts.append(self.label_scores(head(rows)).float().cpu())
        return torch.cat(parts)

    def _keys(
        self, prefix: str, texts_a: Sequence[str], texts_b: Sequence[str | None] | None, set_index: int
    ) -> list[str]:
        texts_b = texts_b if texts_b is not None else [None] * len(texts_a)
        extra = [set_index] if self.demonstrations is not None else []
        return [
            hashlib.sha1(json.dumps([prefix, a, b, *extra]).encode("utf-8", "surrogatepass")).hexdigest()
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
        fingerprint = self.weights_key()  # once per call: the weights are read here
        keys = [k for s in range(sets) for k in self._keys(f"{fingerprint}|{self.prompt_key}", texts_a, texts_b, s)]
        width = hidden_size(self.model)
        todo = self.cache.missing(keys, widths=(width, self.verbalizer.num_classes))
        shared = None
        if self.scores_from_hidden:
            prefix = f"{fingerprint}|{self.hidden_key}"
            shared = [k for s in range(sets) for k in self._keys(prefix, texts_a, texts_b, s)]
            if todo:  # hidden states another adapter's pass left: scored by the LM head alone
                unseen = {todo[i] for i in self.cache.missing([shared[j] for j in todo], widths=(width, 0))}
                known = [j for j in todo if j not in unseen]
                if known:
                    hidden = self.cache.rows([shared[j] for j in known]).hidden
                    scored = Features(hidden, self.label_scores_of(hidden))
                    self.cache.put([keys[j] for j in known], scored, keep=keys)
                todo = [j for j in todo if j in unseen]
        if todo:
            ids: list[list[int]] = []
            for s in range(sets):  # one tokenizer call per demonstration set
                rows = [j % n for j in todo if j // n == s]
                sub_b = [texts_b[i] for i in rows] if texts_b is not None else None
                ids += self.tokenize([texts_a[i] for i in rows], sub_b, s) if rows else []
            new = self._run_distributed(ids, desc)
            new.check_finite(index=[j % n for j in todo], texts=[texts_a[j % n] for j in todo])
            aliases = [shared[i] for i in todo] if shared is not None else None
            self.cache.put([keys[i] for i in todo], new, keep=keys, hidden_keys=aliases)
        feats = self.cache.gather(keys)
        if shared is not None:
            # rows cached before hidden states were kept apart (older cache folders): in memory from now on
            absent = {key: i for i, key in reversed(list(enumerate(shared))) if key not in self.cache}
            if absent:
                self.cache.add_hidden(list(absent), feats.hidden[list(absent.values())])
        if sets == 1:
            return feats
        # the average over demonstration sets, as LM-BFF averages its logits over sampled sets
        return Features(feats.hidden.view(sets, n, -1).mean(0), feats.label_logits.view(sets, n, -1).mean(0))

    def batches(self, ids: list[list[int]], batch_size: int | None = None) -> list[list[int]]:
        """Indices of `ids` grouped into batches of similar length (sorted by length, then cut)."""
        size = self.batch_size if batch_size is None else batch_size
        check_int("batch_size", size, 1)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        return [order[start : start + size] for start in range(0, len(order), size)]

    def _run_distributed(self, ids: list[list[int]], desc: str) -> Features:
        """Features of `ids`; under several processes each runs every N-th batch and the rows are gathered back.

        The batches are those a single process would form, so every input is computed in the same batch, with the
        same padding and shapes, as without accelerate: the features, and the decoder fitted on them, are
        bit-identical to a single-process run. Gathering only concatenates, so no floating-point sum reorders.
        """
        state = distributed_state()
        if state is None or state.num_processes == 1 or not ids:
            return self.run(ids, desc, show=self.show_progress)
        batches, n = self.batches(ids), state.num_processes
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

    def run(self, ids: list[list[int]], desc: str = "features", show: bool | None = None) -> Features:
        """One model pass per token list, in length-sorted batches, without the cache; features in `ids` order."""
        show = self.show_progress if show is None else show
        batches = self.batches(ids)
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
            return Features(torch.zeros(0, hidden_size(self.model)), torch.zeros(0, self.verbalizer.num_classes))
        parts: list[Features] = []
        prefix = None  # (tokens, key/value cache) of the last shared prefix, reused by the next batch with it
        with self.evaluating():
            for chunk in tqdm(batches, desc=desc, disable=not show, unit="batch"):
                if self.runner is not None:  # the body in the runner; the head below, once every batch is done
                    hidden = self.runner.hidden([ids[i] for i in chunk])
                    feats = Features(hidden, hidden.new_zeros(len(chunk), 0))
                else:
                    feats, prefix = self._forward_rows([ids[i] for i in chunk], prefix)
                parts.append(Features(feats.hidden.cpu(), feats.label_logits.cpu()))
                self.passes += len(chunk)
            new = Features.cat(parts)
            if self.runner is not None:
                # PyTorch's head between the runner's batches would leave both thread pools spinning on the same
                # cores (each waits for work a while after its own), halving the runner's speed on a small CPU
                # (measured with llama.cpp)
                new = Features(new.hidden, self._head_scores(new.hidden))
        # Leave inference mode: cached tensors must be usable by autograd later (decoder training).
        return Features(new.hidden.clone(), new.label_logits.clone())

    @property
    def can_share_prefixes(self) -> bool:
        """Whether batches may run a common prompt prefix once: a causal LM run here with a separable head."""
        return bool(
            self.share_prefixes
            and self.kind == CAUSAL
            and self.head_split is not None
            and not self.continues
            and not embedded_prompt_length(self.model)
            and not prepends_virtual_tokens(self.model)
        )

    def shared_prefix(self, rows: list[list[int]], known: Sequence[int] = ()) -> int:
        """Tokens at the start of every row that one pass can compute for all (0: not worth it, or not possible).

        A causal LM's prompts that begin alike (a fixed demonstration set, a long instruction) share their
        key/value cache up to the last token before the rows differ; every row keeps at least one token of its
        own, where the prediction position is read. A single row uses the `known` prefix (the previous batch's)
        if it starts with it.
        """
        if not self.can_share_prefixes or not rows:
            return 0
        first, length = rows[0], min(len(r) for r in rows) - 1
        if len(rows) == 1:
            known = list(known)
            return len(known) if known and len(known) <= length and first[: len(known)] == known else 0
        for row in rows[1:]:
            length = next((i for i in range(length) if row[i] != first[i]), length)
        return length if length >= MIN_SHARED_PREFIX else 0

    def _forward_rows(self, rows: list[list[int]], prefix) -> tuple[Features, tuple | None]:
        """Features of one batch of token id lists; a prefix all rows share runs once (its cache is returned, for
        the next batch that shares it)."""
        length = self.shared_prefix(rows, prefix[0] if prefix is not None else ())
        if not length:
            batch = {k: v.to(self.device) for k, v in self.collate(rows).items()}
            return self.forward(**batch), prefix
        body, head = self.head_split
        tokens = tuple(rows[0][:length])
        if prefix is None or prefix[0] != tokens:
            out = body(input_ids=torch.tensor([tokens], device=self.device), use_cache=True)
            prefix = (tokens, cache_of(out))
        cache = copy.deepcopy(prefix[1])
        cache.batch_repeat_interleave(len(rows))
        batch = {k: v.to(self.device) for k, v in self.collate([r[length:] for r in rows]).items()}
        mask = torch.cat((batch["attention_mask"].new_ones(len(rows), length), batch["attention_mask"]), 1)
        given = {cache_keyword(body): cache}
        out = body(input_ids=batch["input_ids"], attention_mask=mask, use_cache=True, **given)
        positions = self.positions(batch["input_ids"], batch["attention_mask"])
        hidden = out[0][torch.arange(len(rows), device=positions.device), positions]
        return Features(hidden.float(), self.label_scores(head(hidden)).float()), prefix

    @contextlib.contextmanager
    def evaluating(self):
        """Eval mode and inference mode for the duration; each module's own mode is restored afterwards.

        A PeftModel may be in train mode around an eval-mode model, so modes are saved per module.
        """
        modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            for module, mode in modes:
                module.training = mode
