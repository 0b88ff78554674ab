"""Label words: from plain words per class to token ids at the prediction position, and back to class scores.

The rule that maps a word to a token (documented in the README, section "Label words"):

1. If the template has a space before `{mask}`, the word is encoded with a leading space (`" great"`), which gives
   the space-prefixed token of BPE (`Ġgreat`) and SentencePiece (`▁great`) vocabularies; WordPiece vocabularies
   (BERT) ignore the space. A lone leading space token (SentencePiece's bare `▁`) is dropped. Without a space the
   word is encoded as written.
2. For a causal LM the prompt ends before the space, so the model itself predicts the space-prefixed token.
3. A word that becomes several tokens is scored, by default (`multi_token="exact"`), by its exact log-probability
   as a continuation of the prompt for a causal LM, `log P(w_1 .. w_m | prompt)` (`"exact_mean"`: divided by `m`),
   computed by `peft_dect.continuations` from the prompt's key/value cache. A masked LM has one mask, where no
   continuation can be scored: there a word of several pieces scores the mean of its pieces' log-probabilities at
   the mask (OpenPrompt's "mean" rule) under both exact rules. Two classes may then share a first token; two words
   of different classes with identical token sequences are an error. `multi_token="first"` scores the first token
   (with a warning; two classes sharing it are an error) and `"error"` refuses such words.
4. A word that the tokenizer maps to its unknown token is an error.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .template import UNICODE_HINT, is_valid_unicode


logger = logging.getLogger(__name__)

AGGREGATIONS = ("mean", "max")
MULTI_TOKEN_RULES = ("exact", "exact_mean", "first", "error")
EXACT_RULES = ("exact", "exact_mean")


def label_name_words(name: str) -> str:
    """A class name as a label word: `card_arrival` -> `card arrival` (snake case and dashes become spaces)."""
    return " ".join(str(name).replace("_", " ").replace("-", " ").split())


def label_words_from_names(names) -> dict[str, list[str]]:
    """Label words derived from class names: a list of names, or a dataset (or its features) with a `label`
    ClassLabel column, e.g. ``label_words_from_names(dataset)`` for BANKING77's `card_arrival` -> `card arrival`."""
    features = getattr(names, "features", names)
    if hasattr(features, "get") and not isinstance(names, (list, tuple)):
        label = features.get("label")
        if getattr(label, "names", None) is None:
            raise ValueError(
                "Class names need a ClassLabel column `label` (dataset.features['label'].names); this data has "
                f"{type(label).__name__ if label is not None else 'no label column'}. Pass the list of class names."
            )
        names = label.names
    return names_to_label_words(names)


def names_to_label_words(names: Sequence[str]) -> dict[str, list[str]]:
    """{name: [derived word]} for a list of class names; duplicates and empty names are errors."""
    out: dict[str, list[str]] = {}
    for name in names:
        if not isinstance(name, str) or not label_name_words(name):
            raise ValueError(f"Class names must be non-empty strings, got {name!r} in {list(names)[:10]}.")
        if name in out:
            raise ValueError(f"Class name {name!r} is given twice; each class must be named once.")
        out[name] = [label_name_words(name)]
    return out


def normalize_label_words(label_words: Mapping[str, Sequence[str] | str] | Sequence[str]) -> dict[str, list[str]]:
    """Check and copy a ``{class: [words]}`` mapping (a single word may be given as a string); a list of class
    names becomes ``{name: [name as words]}`` (`label_name_words`)."""
    if isinstance(label_words, str):
        raise ValueError(
            f"label_words={label_words!r}: give a mapping of class -> words, or a list of class names; for the names "
            "of a ClassLabel column use peft_dect.prompting.label_words_from_names(dataset)."
        )
    if isinstance(label_words, (list, tuple)) and label_words:
        label_words = names_to_label_words(label_words)
    if not isinstance(label_words, Mapping) or not label_words:
        raise ValueError(
            "label_words must be a non-empty mapping from class name to its words, "
            "e.g. {'negative': ['bad'], 'positive': ['great']}, or a list of class names."
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
class WordPlan:
    """Every label word as tensors for scoring words of several tokens (see `Verbalizer.plan`).

    Words are numbered in class order. `first` (W,) is each word's first token, `length` (W,) its token count;
    `class_words` (C, K) / `class_mask` index each class's words. A causal LM continues the prompt through the
    prefix tree of the words: every distinct proper prefix of a word (`card` for `card arrival` and `card
    linking`) is one continuation step, fed once. `cont_input` (T,) is the last token of each step's prefix,
    `cont_offset` (T,) its depth (0 right after the prompt) and `cont_allowed` (T, T) whether step i may attend to
    step k (k is i's prefix or i itself). Each word's tokens after the first are then scored at a step: `step_node`
    (S,), `step_target` (S,) and `step_word` (S,), sorted by step. `pieces` / `piece_word` list every token of every
    word (a masked LM's rule).
    """

    first: torch.Tensor
    length: torch.Tensor
    class_words: torch.Tensor
    class_mask: torch.Tensor
    cont_input: torch.Tensor
    cont_offset: torch.Tensor
    cont_allowed: torch.Tensor
    step_node: torch.Tensor
    step_target: torch.Tensor
    step_word: torch.Tensor
    pieces: torch.Tensor
    piece_word: torch.Tensor

    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[Sequence[int]]]) -> WordPlan:
        words = [tuple(seq) for per_class in sequences for seq in per_class]
        width = max(len(per_class) for per_class in sequences)
        class_words = torch.zeros(len(sequences), width, dtype=torch.long)
        class_mask = torch.zeros(len(sequences), width, dtype=torch.bool)
        start = 0
        for c, per_class in enumerate(sequences):
            class_words[c, : len(per_class)] = torch.arange(start, start + len(per_class))
            class_mask[c, : len(per_class)] = True
            start += len(per_class)
        nodes: dict[tuple[int, ...], int] = {}  # proper prefix -> step, parents before children
        for seq in words:
            for j in range(1, len(seq)):
                nodes.setdefault(seq[:j], len(nodes))
        allowed = torch.zeros(len(nodes), len(nodes), dtype=torch.bool)
        for prefix, i in nodes.items():
            for j in range(1, len(prefix) + 1):
                allowed[i, nodes[prefix[:j]]] = True
        steps = sorted((nodes[seq[:j]], seq[j], w) for w, seq in enumerate(words) for j in range(1, len(seq)))
        pieces = [(w, t) for w, seq in enumerate(words) for t in seq]

        def column(rows: list, i: int) -> torch.Tensor:
            return torch.tensor([r[i] for r in rows], dtype=torch.long)

        return cls(
            first=torch.tensor([seq[0] for seq in words], dtype=torch.long),
            length=torch.tensor([len(seq) for seq in words], dtype=torch.long),
            class_words=class_words,
            class_mask=class_mask,
            cont_input=torch.tensor([p[-1] for p in nodes], dtype=torch.long),
            cont_offset=torch.tensor([len(p) - 1 for p in nodes], dtype=torch.long),
            cont_allowed=allowed,
            step_node=column(steps, 0),
            step_target=column(steps, 1),
            step_word=column(steps, 2),
            pieces=column(pieces, 1),
            piece_word=column(pieces, 0),
        )

    @property
    def num_words(self) -> int:
        return int(self.first.numel())

    @property
    def longest(self) -> int:
        return int(self.length.max())

    def to(self, device) -> WordPlan:
        return WordPlan(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


def check_word_text(word: str, cls: str, tokenizer) -> None:
    """Refuse a label word that contains the template's mask placeholder or the tokenizer's mask token."""
    mask = getattr(tokenizer, "mask_token", None)
    found = "{mask}" if "{mask}" in word else mask if mask and mask in word else None
    if found:
        raise ValueError(
            f"Label word {word!r} of class {cls!r} contains the mask token {found!r}; "
            "a label word is what the model predicts at the mask, so it cannot contain one. Choose another word."
        )


@dataclass(frozen=True)
class Verbalizer:
    """Label words resolved to token ids, one list per class, in class order.

    `token_ids` are the tokens scored at the prediction position (each word's first token); `sequences` every
    word's whole token sequence, which the exact rules (`multi_token="exact"` / `"exact_mean"`) score.
    """

    classes: tuple[str, ...]
    words: tuple[tuple[str, ...], ...]
    token_ids: tuple[tuple[int, ...], ...]
    aggregation: str = "mean"
    sequences: tuple[tuple[tuple[int, ...], ...], ...] = ()
    multi_token: str = "first"

    @classmethod
    def from_words(
        cls,
        label_words: Mapping[str, Sequence[str] | str],
        tokenizer,
        *,
        space_before: bool,
        aggregation: str = "mean",
        multi_token: str = "exact",
    ) -> Verbalizer:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"label_word_aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
        if multi_token not in MULTI_TOKEN_RULES:
            raise ValueError(f"multi_token must be one of {MULTI_TOKEN_RULES}, got {multi_token!r}.")
        label_words = normalize_label_words(label_words)
        sequences = [
            [word_ids(tokenizer, w, c, space_before, multi_token) for w in ws] for c, ws in label_words.items()
        ]
        if multi_token in EXACT_RULES:
            kept = exact_sequences(tokenizer, label_words, sequences)
            token_ids = tuple(tuple(dict.fromkeys(seq[0] for seq in per_class)) for per_class in kept)
        else:
            kept, token_ids = first_tokens(tokenizer, label_words, sequences)
        return cls(
            classes=tuple(label_words),
            words=tuple(tuple(w) for w in label_words.values()),
            token_ids=token_ids,
            aggregation=aggregation,
            sequences=tuple(tuple(tuple(seq) for seq in per_class) for per_class in kept),
            multi_token=multi_token,
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def scores_sequences(self) -> bool:
        """Whether some word has several tokens and an exact rule scores all of them (else first tokens only)."""
        return self.multi_token in EXACT_RULES and any(len(s) > 1 for per in self.sequences for s in per)

    @property
    def longest_word(self) -> int:
        """Tokens of the longest label word."""
        return max((len(s) for per in self.sequences for s in per), default=1)

    def plan(self) -> WordPlan:
        """The words as tensors for `word_class_scores`."""
        return WordPlan.from_sequences(self.sequences)

    def id_matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, W) token ids padded with 0 and the (C, W) boolean mask of real entries."""
        width = max(len(ids) for ids in self.token_ids)
        ids = torch.zeros(self.num_classes, width, dtype=torch.long)
        mask = torch.zeros(self.num_classes, width, dtype=torch.bool)
        for c, row in enumerate(self.token_ids):
            ids[c, : len(row)] = torch.tensor(row)
            mask[c, : len(row)] = True
        return ids, mask


def word_ids(tokenizer, word: str, cls: str, space_before: bool, multi_token: str) -> list[int]:
    """Token ids of one label word, checked: in the vocabulary, no mask token, several tokens only if allowed."""
    check_word_text(word, cls, tokenizer)
    ids = word_token_ids(tokenizer, word, space_before)
    unk = getattr(tokenizer, "unk_token_id", None)
    if not ids or (unk is not None and unk in ids):
        raise ValueError(
            f"Label word {word!r} (class {cls!r}) is not in the tokenizer's vocabulary "
            "(it encodes to the unknown token); choose another word."
        )
    if len(ids) > 1 and multi_token in ("first", "error"):
        pieces = tokenizer.convert_ids_to_tokens(ids)
        if multi_token == "error":
            raise ValueError(
                f"Label word {word!r} (class {cls!r}) splits into {len(ids)} tokens {pieces}; choose a "
                "single-token word, set multi_token='first' to score its first token, or multi_token='exact' to "
                "score the whole word."
            )
        logger.warning(
            "Label word %r (class %r) splits into tokens %s; it is scored by its first token %r.",
            word,
            cls,
            pieces,
            pieces[0],
        )
    return ids


def first_tokens(tokenizer, label_words: dict[str, list[str]], sequences: list[list[list[int]]]):
    """The `"first"` rule: each word's first token; two classes sharing one are an error, one class's repeats count
    once. Returns the kept sequences (cut to their first token) and the token ids per class."""
    first_owner: dict[int, tuple[str, str]] = {}
    token_ids = []
    for (name, words), seqs in zip(label_words.items(), sequences):
        ids_for_class = []
        for word, ids in zip(words, seqs):
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
                    f"{tokenizer.convert_ids_to_tokens([tid])}; they cannot be told apart. Choose other words, or "
                    "multi_token='exact' to score whole words."
                )
            first_owner[tid] = (name, word)
            ids_for_class.append(tid)
        token_ids.append(tuple(ids_for_class))
    return [[(t,) for t in ids] for ids in token_ids], tuple(token_ids)


def exact_sequences(tokenizer, label_words: dict[str, list[str]], sequences: list[list[list[int]]]):
    """The exact rules: whole token sequences; two classes with an identical sequence are an error, one class's
    repeats count once."""
    owner: dict[tuple[int, ...], tuple[str, str]] = {}
    kept = []
    for (name, words), seqs in zip(label_words.items(), sequences):
        per_class = []
        for word, ids in zip(words, seqs):
            key = tuple(ids)
            if key in owner and owner[key][0] == name:
                first = owner[key][1]
                logger.warning(
                    "Label words %r and %r of class %r are the same tokens; counted once.", first, word, name
                )
                continue
            if key in owner:
                other_cls, other_word = owner[key]
                raise ValueError(
                    f"Label words {other_word!r} ({other_cls!r}) and {word!r} ({name!r}) are the same token sequence "
                    f"{tokenizer.convert_ids_to_tokens(list(key))}; they cannot be told apart. Choose other words."
                )
            owner[key] = (name, word)
            per_class.append(key)
        kept.append(per_class)
    return kept


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


def word_class_scores(
    log_probs: torch.Tensor,
    plan: WordPlan,
    aggregation: str,
    continuation: torch.Tensor | None = None,
    per_token: bool = False,
) -> torch.Tensor:
    """Class scores (N, C) from log-probabilities (N, V) at the prediction position and, for a causal LM, the
    log-probabilities (N, S) of the plan's continuation steps (`continuations.continuation_log_probs`).

    With `continuation` a word scores `log P(w_1 .. w_m | prompt)` (divided by m when `per_token`); without it
    (a masked LM) the mean of its pieces' log-probabilities at the mask. Words then combine per class by
    `aggregation` as in `label_log_probs`.
    """
    n = log_probs.shape[0]
    if continuation is not None:
        words = log_probs[:, plan.first].index_add(1, plan.step_word, continuation.to(log_probs.dtype))
        if per_token:
            words = words / plan.length.to(words.dtype)
    else:
        sums = log_probs.new_zeros(n, plan.num_words).index_add(1, plan.piece_word, log_probs[:, plan.pieces])
        words = sums / plan.length.to(sums.dtype)
    per_class = words[:, plan.class_words]  # (N, C, K)
    if aggregation == "max":
        return per_class.masked_fill(~plan.class_mask, float("-inf")).amax(dim=-1)
    return (per_class * plan.class_mask).sum(-1) / plan.class_mask.sum(-1)
