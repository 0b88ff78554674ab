"""Prompts -> DecT features through a served model: label-word scores from top log-probabilities, hidden states
from embeddings. The remote counterpart of `peft_dect.backbone.Backbone` (same `extract` contract)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ..features import Features
from ..prompting import Template, normalize_label_words
from ..prompting.verbalizer import AGGREGATIONS, EXACT_RULES, MULTI_TOKEN_RULES
from .client import OpenAIEndpoint


logger = logging.getLogger(__name__)

MISSING_RULES = ("exact", "floor", "error")


class RemoteBackbone:
    """Features of prompted inputs from an `OpenAIEndpoint`: one log-probability query and one embedding per prompt.

    The prompt is the template rendered for a causal LM (it ends where the label word would follow). A class's score
    is the mean (or max) of its label words' next-token log-probabilities, each word looked up by its text in the
    server's top candidates (the endpoint's `label_logprobs`, 1,000 by default, so that one request usually scores
    every class): with a leading space when the template has one before `{mask}`. A label
    word missing from the candidates is, with `missing="exact"` (default), scored by one more request that forces its
    (first) token with `logit_bias` and reads its log-probability; the value is checked to lie below the top
    candidates' (a server that ignores the bias, or reports biased values, gives an error). The token id comes from
    `label_token_ids` ({label word: id of the token that continues the prompt, i.e. of " great" after "it was"}),
    else `tokenizer` (the served model's, e.g. from `transformers`), else the server's tokenize route. Label words
    should be single tokens: a word of several tokens never matches a candidate's text, so it is always scored
    through that request, by its first token with `multi_token="first"`. The server gives next-token
    log-probabilities only, so the exact rules (`"exact"`, the default, and `"exact_mean"`) refuse a word found to be
    several tokens, naming the option, and `"error"` checks every word's token count up front.
    `missing="floor"` gives it the lowest candidate's log-probability instead (an upper bound of its own, no extra
    request, with a warning); `missing="error"` raises. Every such case is counted in `missing_counts`.
    The hidden state is the prompt's embedding (the last token's vector); without embeddings it has width 0.
    """

    def __init__(
        self,
        endpoint: OpenAIEndpoint,
        template: Template | str,
        label_words: dict,
        *,
        aggregation: str = "mean",
        missing: str = "exact",
        label_token_ids: dict[str, int] | None = None,
        tokenizer=None,
        multi_token: str = "exact",
    ) -> None:
        self.endpoint = endpoint
        self.template = template if isinstance(template, Template) else Template(template)
        self.template.check_causal()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
        if missing not in MISSING_RULES:
            raise ValueError(f"missing must be one of {MISSING_RULES}, got {missing!r}.")
        self.label_words = normalize_label_words(label_words)
        space = " " if self.template.space_before_mask else ""
        self.word_texts = [[space + w for w in words] for words in self.label_words.values()]
        self.aggregation = aggregation
        self.missing = missing
        self.missing_counts: dict[str, int] = {}
        self.token_ids = dict(label_token_ids or {})
        self.tokenizer = tokenizer
        if multi_token not in MULTI_TOKEN_RULES:
            raise ValueError(f"multi_token must be one of {MULTI_TOKEN_RULES}, got {multi_token!r}.")
        self.multi_token = multi_token
        self._checked_words = multi_token != "error"

    @classmethod
    def for_config(cls, endpoint: OpenAIEndpoint, config, **options) -> RemoteBackbone:
        """The backbone of a method's prompt settings (template, label words, aggregation, multi-token rule)."""
        return cls(
            endpoint,
            config.active_template,
            config.label_words,
            aggregation=config.label_word_aggregation,
            multi_token=config.multi_token,
            **options,
        )

    @property
    def show_progress(self) -> bool:
        """Whether long work shows progress bars: the endpoint's setting (its request loop has the bar)."""
        return self.endpoint.show_progress

    def render(self, text_a: str, text_b: str | None = None) -> str:
        return self.template.render(text_a, text_b)

    def token_id(self, word: str) -> int:
        """The id of the (first) token of a label word as it follows the prompt."""
        if word not in self.token_ids and word.strip() in self.token_ids:
            return self.token_ids[word.strip()]
        if word not in self.token_ids:
            if self.tokenizer is not None:
                ids = list(self.tokenizer.encode(word, add_special_tokens=False))
            else:
                ids = self.endpoint.tokenize(word)
            if not ids:
                raise ValueError(f"Label word {word!r} tokenizes to nothing on the served model.")
            if len(ids) > 1 and self.multi_token == "error":
                raise ValueError(
                    f"Label word {word!r} is {len(ids)} tokens on the served model, and multi_token='error' refuses "
                    "such words: choose a single-token word, or multi_token='first' to score its first token."
                )
            if len(ids) > 1 and self.multi_token in EXACT_RULES:
                raise ValueError(
                    f"Label word {word!r} is {len(ids)} tokens on the served model, and the black-box backend reads "
                    f"next-token log-probabilities only, so multi_token={self.multi_token!r} cannot score it whole: "
                    "choose a single-token word, or set multi_token='first' to score its first token."
                )
            if len(ids) > 1:
                logger.warning(
                    "Label word %r is %d tokens on the served model; it is scored by its first.", word, len(ids)
                )
            self.token_ids[word] = int(ids[0])
        return self.token_ids[word]

    def label_scores(self, tops: Sequence[dict[str, float]], prompts: Sequence[str] | None = None) -> torch.Tensor:
        """(N, C) class log-scores from each prompt's {token: log-probability} candidates (see the class docstring)."""
        values = [[[top.get(word) for word in words] for words in self.word_texts] for top in tops]
        holes = [
            (n, c, w)
            for n, row in enumerate(values)
            for c, ws in enumerate(row)
            for w, v in enumerate(ws)
            if v is None
        ]
        if holes and self.missing == "error":
            n, c, w = holes[0]
            where = f" after {prompts[n][-60:]!r}" if prompts is not None else ""
            raise ValueError(
                f"Label word {self.word_texts[c][w]!r} is not among the server's top {len(tops[n])} next tokens"
                f"{where}. "
                "Raise top_logprobs, or use missing_label_words='exact' (one more request per such word) or 'floor'."
            )
        if holes and self.missing == "exact":
            if prompts is None:
                raise ValueError("Exact scores of missing label words need the prompts.")
            pairs = [(prompts[n], self.token_id(self.word_texts[c][w])) for n, c, w in holes]
            for (n, c, w), value in zip(holes, self.endpoint.forced_logprobs(pairs)):
                if value > min(tops[n].values()) + 1e-3:  # outside the top candidates, it must score below them
                    raise ValueError(
                        f"The server scored label word {self.word_texts[c][w]!r}, forced with logit_bias, at "
                        f"{value:.3f}, above its own top candidates: it ignores logit_bias or reports biased "
                        "log-probabilities (vLLM: use the default --logprobs-mode raw_logprobs). Raise top_logprobs "
                        "or use missing_label_words='floor'."
                    )
                values[n][c][w] = value
        elif holes:
            for n, c, w in holes:
                values[n][c][w] = min(tops[n].values())
        missed: dict[str, int] = {}
        for _, c, w in holes:
            word = self.word_texts[c][w]
            missed[word] = missed.get(word, 0) + 1
        for word, count in missed.items():
            self.missing_counts[word] = self.missing_counts.get(word, 0) + count
        if missed and self.missing == "floor":
            logger.warning(
                "Label word(s) missing from the top %d next tokens, scored at the lowest candidate's log-probability: "
                "%s. Raise top_logprobs, or use missing_label_words='exact'.",
                self.endpoint.top_logprobs,
                ", ".join(f"{w!r} in {c} of {len(tops)} prompts" for w, c in missed.items()),
            )
        elif missed:
            logger.info("Scored %d label word(s) outside the top candidates with one request each.", len(holes))
        if not values:
            return torch.zeros(0, len(self.word_texts))
        rows = [[max(ws) if self.aggregation == "max" else sum(ws) / len(ws) for ws in row] for row in values]
        return torch.tensor(rows, dtype=torch.float32)

    def extract(
        self, texts_a: Sequence[str], texts_b: Sequence[str | None] | None = None, *, desc: str = "features"
    ) -> Features:
        """Features of every input; answers already in the endpoint's cache are not requested again."""
        if not self._checked_words:  # multi_token="error": every word's token count, once
            for words in self.word_texts:
                for word in words:
                    self.token_id(word)
            self._checked_words = True
        texts_b = texts_b if texts_b is not None else [None] * len(texts_a)
        prompts = [self.render(a, b) for a, b in zip(texts_a, texts_b)]
        words = [word for words in self.word_texts for word in words]
        tops = self.endpoint.next_token_logprobs(prompts, desc=f"{desc} (log-probs)", keep=words)
        label_logits = self.label_scores(tops, prompts)
        if self.endpoint.embeddings:
            vectors = self.endpoint.embed(prompts, desc=f"{desc} (embeddings)")
            widths = {len(v) for v in vectors}
            if len(widths) > 1:
                raise ValueError(f"The server returned embeddings of different widths {sorted(widths)}.")
            hidden = torch.tensor(vectors, dtype=torch.float32).reshape(len(prompts), -1)
        else:
            hidden = torch.zeros(len(prompts), 0)
        features = Features(hidden, label_logits)
        features.check_finite(texts=list(texts_a))
        return features
