"""A template ensemble as one feature source: each input's features averaged over several templates' backbones.

An adapter that averages over its templates (`DecTConfig.templates_averaged`, set or chosen by fit) reads every input
through one `Backbone` per template (the configured `template` and each of `templates`, each with its own label-word
tokens and demonstrations) and averages the hidden states at their prediction positions and the label-word scores,
as `Backbone.extract` averages demonstration sets; one DecT decoder is then fitted on the means. Each input costs one
model pass per template, at training and at prediction time; every pass goes through the shared feature cache.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..backbone import Backbone
from ..features import Features


class TemplateMean:
    """The features of several backbones (one per template), averaged per input.

    Args:
        backbones: one `Backbone` per template, first the configured template's (its template and label-word tokens
            are this source's `template` and `verbalizer`: the content-free input and the recorded token ids).
    """

    def __init__(self, backbones: Sequence[Backbone]) -> None:
        if not backbones:
            raise ValueError("TemplateMean needs at least one backbone.")
        self.backbones = list(backbones)
        self.template = self.backbones[0].template
        self.verbalizer = self.backbones[0].verbalizer

    def extract(
        self, texts_a: Sequence[str], texts_b: Sequence[str | None] | None = None, *, desc: str = "features"
    ) -> Features:
        """Every template's features of the inputs (each through the cache), averaged."""
        feats = [bb.extract(texts_a, texts_b, desc=desc) for bb in self.backbones]
        n = len(feats)
        return Features(sum(f.hidden for f in feats) / n, sum(f.label_logits for f in feats) / n)

    def tokenize(self, texts_a: Sequence[str], texts_b: Sequence[str | None] | None = None) -> list[list[int]]:
        """The token ids of each input's prompts, all templates' one after another (what an input costs in tokens)."""
        per_template = [bb.tokenize(texts_a, texts_b) for bb in self.backbones]
        return [[t for ids in rows for t in ids] for rows in zip(*per_template)]

    @property
    def passes(self) -> int:
        """Inputs sent through the model by all templates' backbones."""
        return sum(bb.passes for bb in self.backbones)

    @property
    def show_progress(self) -> bool:
        return self.backbones[0].show_progress

    @show_progress.setter
    def show_progress(self, value: bool) -> None:
        for bb in self.backbones:
            bb.show_progress = value

    @property
    def batch_size(self) -> int:
        return self.backbones[0].batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        for bb in self.backbones:
            bb.batch_size = value

    @property
    def cache(self):
        return self.backbones[0].cache

    @cache.setter
    def cache(self, value) -> None:
        for bb in self.backbones:
            bb.cache = value

    def collate(self, *args, **kwargs):
        """The Trainer path feeds one tokenised prompt per input: an ensemble of templates has several."""
        raise ValueError(
            "This adapter averages its features over several templates (templates_averaged=True), which the "
            "Trainer path's one tokenised prompt per row cannot carry: train it with fit(), or set "
            "templates_averaged=False and max_passes_per_input=1 and fit again for one template."
        )

    forward = collate
