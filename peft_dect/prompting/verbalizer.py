"""Label words: from plain words per class to token ids at the prediction position, and back to class scores.

The rule that maps a word to a token (documented in the README, section "Label words"):

1. If the template has a space before `{mask}`, the word is encoded with a leading space (`" great"`), which gives
   the space-prefixed token of BPE (`Ġgreat`) and SentencePiece (`▁great`) vocabularies; WordPiece vocabularies
   (BERT) ignore the space. A lone leading space token (SentencePiece's bare `▁`) is dropped. Without a space the
   word is encoded as written.
2. For a causal LM the prompt ends before the space, so the model itself predicts the space-prefixed token.
3. A word that becomes several tokens is scored by its first token (the probability of the word's first piece at
   the prediction position) and a warning names it; `multi_token="error"` refuses such words instead. Two classes
   whose words share that first token are an error, since they could not be told apart.
4. A word that the tokenizer maps to its unknown token is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .template import UNICODE_HINT, is_valid_unicode


logger = logging.getLogger(__name__)

AGGREGATIONS = ("mean", "max")
MULTI_TOKEN_RULES = ("first", "error")


def normalize_label_words(label_words: Mapping[str, Sequence[str] | str]) -> dict[str, list[str]]:
    """Check and copy a ``{class: [words]}`` mapping (a single word may be given as a string)."""
    if not isinstance(label_words, Mapping) or not label_words:
        raise ValueError(
            "label_words must be a non-empty mapping from class name to its words, "
            "e.g. {'negative': ['bad'], 'positive': ['great']}."
        )
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for cls, words in label_words.items():
        if isinstance(words, str):
            words = [words]
        words = list(words)
        if not words:
            raise ValueError(f"Class {cls!r} has no label words; give at least one, e.g. {{{cls!r}: ['word']}}.")
        for w in words:
            if not isinstance(w, str) or not w.strip():
                raise ValueError(f"Class {cls!r} has an empty or non-string label word {w!r}.")
            if not is_valid_unicode(w):
                raise ValueError(
                    f"Label word {w!r} of class {cls!r} is not valid Unicode: it contains {UNICODE_HINT}."
                )
            key = w.strip()
            if key in owner:
                where = "twice" if owner[key] == cls else f"for both {owner[key]!r} and {cls!r}"
                raise ValueError(f"Label word {key!r} is given {where}; each word must name one class once.")
            owner[key] = cls
        out[str(cls)] = [w.strip() for w in words]
    if len(out) < 2:
        raise ValueError("A classifier needs at least two classes in label_words.")
    return out


def word_token_ids(tokenizer, word: str, space_before: bool) -> list[int]:
    """Token ids of `word` as it appears at the prediction position (rule 1 of the module docstring)."""
    ids = tokenizer.encode((" " + word) if space_before else word, add_special_tokens=False)
    if len(ids) > 1 and not tokenizer.decode(ids[:1]).strip():
        ids = ids[1:]
    return list(ids)


@dataclass(frozen=True)
class Verbalizer:
    """Label words resolved to token ids, one list per class, in class order."""

    classes: tuple[str, ...]
    words: tuple[tuple[str, ...], ...]
    token_ids: tuple[tuple[int, ...], ...]
    aggregation: str = "mean"

    @classmethod
    def from_words(
        cls,
        label_words: Mapping[str, Sequence[str] | str],
        tokenizer,
        *,
        space_before: bool,
        aggregation: str = "mean",
        multi_token: str = "first",
    ) -> Verbalizer:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"label_word_aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
        if multi_token not in MULTI_TOKEN_RULES:
            raise ValueError(f"multi_token must be one of {MULTI_TOKEN_RULES}, got {multi_token!r}.")
        label_words = normalize_label_words(label_words)
        unk = getattr(tokenizer, "unk_token_id", None)
        token_ids: list[tuple[int, ...]] = []
        first_owner: dict[int, tuple[str, str]] = {}
        for name, words in label_words.items():
            ids_for_class = []
            for word in words:
                ids = word_token_ids(tokenizer, word, space_before)
                if not ids or (unk is not None and unk in ids):
                    raise ValueError(
                        f"Label word {word!r} (class {name!r}) is not in the tokenizer's vocabulary "
                        "(it encodes to the unknown token); choose another word."
                    )
                if len(ids) > 1:
                    pieces = tokenizer.convert_ids_to_tokens(ids)
                    if multi_token == "error":
                        raise ValueError(
                            f"Label word {word!r} (class {name!r}) splits into {len(ids)} tokens {pieces}; choose a "
                            "single-token word or set multi_token='first' to score its first token."
                        )
                    logger.warning(
                        "Label word %r (class %r) splits into tokens %s; it is scored by its first token %r.",
                        word,
                        name,
                        pieces,
                        pieces[0],
                    )
                tid = ids[0]
                if tid in first_owner and first_owner[tid][0] == name:
                    logger.warning(
                        "Label words %r and %r of class %r share the first token %r; it is counted once.",
                        first_owner[tid][1],
                        word,
                        name,
                        tokenizer.convert_ids_to_tokens([tid])[0],
                    )
                    continue
                if tid in first_owner:
                    other_cls, other_word = first_owner[tid]
                    raise ValueError(
                        f"Label words {other_word!r} ({other_cls!r}) and {word!r} ({name!r}) map to the same token "
                        f"{tokenizer.convert_ids_to_tokens([tid])}; they cannot be told apart. Choose other words."
                    )
                first_owner[tid] = (name, word)
                ids_for_class.append(tid)
            token_ids.append(tuple(ids_for_class))
        return cls(
            classes=tuple(label_words),
            words=tuple(tuple(w) for w in label_words.values()),
            token_ids=tuple(token_ids),
            aggregation=aggregation,
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def id_matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, W) token ids padded with 0 and the (C, W) boolean mask of real entries."""
        width = max(len(ids) for ids in self.token_ids)
        ids = torch.zeros(self.num_classes, width, dtype=torch.long)
        mask = torch.zeros(self.num_classes, width, dtype=torch.bool)
        for c, row in enumerate(self.token_ids):
            ids[c, : len(row)] = torch.tensor(row)
            mask[c, : len(row)] = True
        return ids, mask


def label_log_probs(
    vocab_logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, aggregation: str
) -> torch.Tensor:
    """Class scores from vocabulary logits (N, V): log-probabilities of each class's words, aggregated over words.

    `mean` averages log-probabilities (a geometric mean of probabilities); `max` takes the best word.
    """
    log_probs = torch.log_softmax(vocab_logits.float(), dim=-1)
    word_scores = log_probs[:, ids]  # (N, C, W)
    if aggregation == "max":
        return word_scores.masked_fill(~mask, float("-inf")).amax(dim=-1)
    return (word_scores * mask).sum(-1) / mask.sum(-1)
