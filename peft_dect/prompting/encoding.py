"""Prompted inputs as token ids: rendering with the template (and demonstrations), template-aware truncation.

An over-long prompt loses demonstration text first (from the end far from the query), then characters from the end
of its longest text fields (cut to equal token counts), never template or mask tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .demonstrations import Demonstrations
from .template import Template


logger = logging.getLogger(__name__)

MASKED, CAUSAL = "masked", "causal"


def water_fill(counts: dict[str, int], budget: int) -> dict[str, int]:
    """Tokens each field keeps: the largest common cap such that the kept tokens fit the budget."""
    cap = 0
    while cap < max(counts.values()) and sum(min(n, cap + 1) for n in counts.values()) <= budget:
        cap += 1
    return {f: min(n, cap) for f, n in counts.items()}


def check_chat(tokenizer, kind: str) -> None:
    """A chat prompt needs a causal LM whose tokenizer has a chat template; else an error naming the tokenizer."""
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if kind != CAUSAL:
        raise ValueError(
            f"A chat template wraps a causal LM's prompt; {name!r} belongs to a masked LM: set chat_template=False."
        )
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"The tokenizer {name!r} has no chat template (tokenizer.chat_template is None): set "
            "chat_template=False, or give the tokenizer of the chat model."
        )


class PromptEncoder:
    """Renders inputs with a template for a masked or causal LM and tokenises them within `max_length` tokens.

    The prediction position is the mask token for a masked LM; a causal prompt ends where the label word would
    follow. With `demonstrations` every prompt carries one sampled set of solved training examples: after the query
    for a masked LM (separated by the tokenizer's separator token), before it for a causal LM (separated by a blank
    line), so that a causal prompt still ends at the query's prediction position. With `chat` (causal LMs whose
    tokenizer has a chat template) the prompt becomes the user's message but for the last line of the template's
    `answer_prefix` (e.g. "It was", "Answer:"), which opens the assistant's answer, where the label word follows.
    """

    def __init__(
        self,
        tokenizer,
        template: Template,
        kind: str,
        max_length: int,
        demonstrations: Demonstrations | None = None,
        chat: bool = False,
    ) -> None:
        if chat:
            check_chat(tokenizer, kind)
        if kind == CAUSAL:
            template.check_causal()
        elif tokenizer.mask_token is None:
            raise ValueError(f"{type(tokenizer).__name__} has no mask token, which a masked LM template needs.")
        self.tokenizer = tokenizer
        self.template = template
        self.kind = kind
        self.max_length = max_length
        self.truncated = 0  # inputs whose text was cut, for tests and reports
        self.demonstrations = demonstrations
        self.chat = chat
        self.demo_separator = " "
        if demonstrations is not None:
            if demonstrations.template.is_pair != template.is_pair:
                raise ValueError("The demonstrations' template and the backbone's template must use the same fields.")
            sep = tokenizer.sep_token if kind == MASKED else None
            self.demo_separator = sep if sep else ("\n\n" if kind == CAUSAL else " ")

    # ---------------------------------------------------------------- rendering
    def render_query(self, text_a: str, text_b: str | None = None) -> str:
        """The prompt of one input without demonstrations."""
        if self.kind == MASKED:
            return self.template.render(text_a, text_b, mask_token=self.tokenizer.mask_token)
        return self.template.render(text_a, text_b)

    def join(self, query: str, demos: str) -> str:
        """A query and its demonstration text, in the order the LM kind needs."""
        if not demos:
            return query
        if self.kind == MASKED:
            return query + self.demo_separator + demos
        return demos + self.demo_separator + query

    def render(self, text_a: str, text_b: str | None = None, set_index: int = 0) -> str:
        """The prompt of one input (with demonstration set `set_index` when there are demonstrations)."""
        query = self.render_query(text_a, text_b)
        if self.demonstrations is not None:
            demos = self.demonstrations.render(text_a, text_b, set_index, separator=self.demo_separator)
            query = self.join(query, demos)
        return self.finish(query)

    def finish(self, prompt: str) -> str:
        """The prompt as the model reads it: wrapped in the tokenizer's chat template when `chat` is set."""
        if not self.chat:
            return prompt
        # the last line of the template's words before the mask ("Answer:" of "...\nYes or no?\nAnswer:"), as the
        # causal rendering ends it, opens the answer; the lines before it stay in the user's message
        lead = self.template.answer_prefix.rstrip(" ").split("\n")[-1]
        head = prompt[: len(prompt) - len(lead)] if lead and prompt.endswith(lead) else prompt
        message = [{"role": "user", "content": head.strip()}]
        opening = self.tokenizer.apply_chat_template(message, tokenize=False, add_generation_prompt=True)
        return opening + lead.strip()

    def ids(self, prompts):
        """Token ids of finished prompt(s): special tokens as the tokenizer adds them, or as the chat template wrote
        them (adding a BOS again would shift the prompt)."""
        return self.tokenizer(prompts, add_special_tokens=not self.chat)["input_ids"]

    # ---------------------------------------------------------------- tokens
    def tokenize(
        self, texts_a: Sequence[str], texts_b: Sequence[str | None] | None = None, set_index: int = 0
    ) -> list[list[int]]:
        """Token ids of each prompt; over-long inputs lose demonstration text first, then text-field tokens, never
        template or mask tokens."""
        texts_b = texts_b if texts_b is not None else [None] * len(texts_a)
        if self.demonstrations is not None:
            self.demonstrations.prepare(texts_a, texts_b)
        prompts = [self.render(a, b, set_index) for a, b in zip(texts_a, texts_b)]
        ids = self.ids(prompts)
        truncated = cut_demos = 0
        for i, row in enumerate(ids):
            if len(row) <= self.max_length:
                continue
            if self.demonstrations is not None:
                ids[i], query_cut = self.truncate_demos(texts_a[i], texts_b[i], set_index)
                cut_demos += 1
                truncated += query_cut
            else:
                ids[i] = self.truncate(texts_a[i], texts_b[i])
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
            self.check_masks(ids)
        return ids

    def check_masks(self, ids: list[list[int]]) -> None:
        """Every masked-LM prompt must hold exactly one mask token (a text containing the mask token breaks this)."""
        mask_id = self.tokenizer.mask_token_id
        for i, row in enumerate(ids):
            if row.count(mask_id) != 1:
                raise ValueError(
                    f"Input {i} has {row.count(mask_id)} mask tokens after prompting (its text contains "
                    f"{self.tokenizer.mask_token!r}?); the prompt must have exactly one."
                )

    def truncate_demos(self, text_a: str, text_b: str | None, set_index: int) -> tuple[list[int], bool]:
        """(ids, whether the query itself was truncated): demonstration tokens go first, from the end far from the
        query; only when no demonstration token fits is the query truncated as without demonstrations."""
        query = self.render_query(text_a, text_b)
        demos = self.demonstrations.render(text_a, text_b, set_index, separator=self.demo_separator)
        for _ in range(8):
            ids = self.ids(self.finish(self.join(query, demos)))
            excess = len(ids) - self.max_length
            if excess <= 0:
                return ids, False
            pieces = self.tokenizer.encode(demos, add_special_tokens=False)
            keep = len(pieces) - excess - 1
            if keep <= 0:
                break
            demos = self.tokenizer.decode(pieces[:keep] if self.kind == MASKED else pieces[-keep:])
        ids = self.ids(self.finish(query))
        if len(ids) <= self.max_length:
            return ids, False
        return self.truncate(text_a, text_b), True

    def truncate(self, text_a: str, text_b: str | None) -> list[int]:
        """Token ids of the prompt with its text fields cut (at character boundaries) to fit `max_length`.

        The token budget left by the template is shared out by water-filling: fields shorter than the cap keep
        everything, the longer ones are cut to the same number of tokens. Cutting characters rather than decoding
        token prefixes never splits a character (byte-level BPE would turn half a character into 3-byte U+FFFD).
        """
        fields = self.template.fields
        texts = {"text_a": text_a, "text_b": text_b}

        def prompt_ids(values: dict) -> list[int]:
            return self.ids(self.finish(self.render_query(values["text_a"], values["text_b"])))

        bare = len(prompt_ids({f: ("" if f in fields else v) for f, v in texts.items()}))
        if bare > self.max_length:
            raise ValueError(
                f"The template {self.template.text!r} alone needs more than max_length={self.max_length} tokens "
                f"({bare} with empty text fields); shorten the template or raise max_length."
            )
        counts = {f: len(self.tokenizer.encode(texts[f], add_special_tokens=False)) for f in fields}
        target = water_fill(counts, self.max_length - bare)
        for _ in range(32):  # in context, tokens can merge across field boundaries: shrink until it fits
            values = {**texts, **{f: self.prefix(texts[f], target[f]) for f in fields}}
            ids = prompt_ids(values)
            excess = len(ids) - self.max_length
            if excess <= 0:
                return ids
            longest = max(fields, key=lambda f: target[f])
            target[longest] = max(0, target[longest] - excess)
        return prompt_ids({f: ("" if f in fields else v) for f, v in texts.items()})

    def prefix(self, text: str, tokens: int) -> str:
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
