"""Knowing what a classifier does not know, from its held-out predictions: temperature scaling, out-of-scope scores
and thresholds, conformal prediction sets and what to label next.

Everything here works on class logits (N, C) of any peft-dect classifier; DecT's auto mode supplies its held-out
logits (cross-validation folds plus `eval_dataset`) at no model pass, any classifier can `calibrate()` on labelled
held-out data. A `Calibration` is what is kept (and saved with a DecT adapter):

- a temperature T, fitted by minimising the held-out negative log-likelihood of softmax(logits / T) (Guo et al.,
  2017): it rescales the probabilities and never moves the argmax;
- the held-out nonconformity scores 1 - p_y of the true class (LAC, Sadinle et al., 2019), for split-conformal sets;
- the held-out unknown scores of in-scope examples (and of explicit out-of-scope examples when there were any), for
  the rejection threshold.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F


UNKNOWN_SCORES = ("max_logit", "energy", "msp", "margin", "entropy")
"""How `unknown_score` is formed from the class logits s (probabilities p = softmax(s / T)): ``max_logit``
-max_k s_k (for DecT: the distance to the nearest prototype against its radius, minus the prior's share),
``energy`` -T logsumexp(s / T), ``msp`` 1 - max_k p_k, ``margin`` -(p_(1) - p_(2)), ``entropy`` H(p)."""
DEFAULT_UNKNOWN_SCORE = "energy"
"""Chosen on BANKING77 dev data with 10 intents held out (`python -m benchmarks.uncertainty --parts ood_dev`): the
best mean AUROC of the five, though all were within 0.01 of each other there."""
SUGGEST_STRATEGIES = ("margin", "entropy", "diverse")
ECE_BINS = 15


def check_alpha(alpha, name: str = "alpha") -> float:
    """`alpha` as a float in (0, 1), else a ValueError naming it."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {alpha!r}.")
    return float(alpha)


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / T), in float32."""
    return torch.softmax(logits.float() / temperature, -1)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T that minimises the held-out cross-entropy of softmax(logits / T), against targets smoothed
    by Laplace's rule (1 / (n + 2) of the mass spread over the other classes): a few held-out rows that happen to
    be all correct then give a confidence below 1, not T -> 0.

    The loss is convex in 1/T, so a golden-section search over log(1/T) in [log 1e-4, log 1e3] finds it (80 steps):
    wide enough for DecT's fused scores, whose prior term may carry a fusion weight of 1000. The loss is computed in
    float64: near its flat minimum float32 rounding would decide the comparisons, and T would wander with it.
    """
    logits, labels = logits.double(), labels.long()
    n, classes = labels.numel(), logits.shape[-1]
    eps = 1.0 / (n + 2) if classes > 1 else 0.0
    targets = torch.full_like(logits, eps / max(1, classes - 1))
    targets.scatter_(1, labels[:, None], 1.0 - eps)

    def loss(log_beta: float) -> float:
        return float(-(targets * torch.log_softmax(logits * math.exp(log_beta), -1)).sum(-1).mean())

    return float(math.exp(-golden_section_min(loss, math.log(1e-4), math.log(1e3))))


def golden_section_min(loss, lo: float, hi: float, steps: int = 80) -> float:
    """The minimiser of a convex (unimodal) `loss` of one variable on [lo, hi], by golden-section search."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(steps):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return (lo + hi) / 2


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-class confidence: sum over equal-width bins of |accuracy - confidence|
    weighted by the bin's share of rows (Naeini et al., 2015; Guo et al., 2017)."""
    confidence, predicted = probs.float().max(-1)
    correct = (predicted == labels).float()
    which = (confidence * bins).long().clamp(max=bins - 1)
    ece = 0.0
    for b in range(bins):
        rows = which == b
        if rows.any():
            ece += float(rows.float().mean()) * abs(float(correct[rows].mean()) - float(confidence[rows].mean()))
    return ece


def unknown_scores(logits: torch.Tensor, temperature: float = 1.0, kind: str = DEFAULT_UNKNOWN_SCORE) -> torch.Tensor:
    """One score per row (higher: more likely outside every class), of the kind named in `UNKNOWN_SCORES`."""
    if kind not in UNKNOWN_SCORES:
        raise ValueError(f"unknown_score must be one of {UNKNOWN_SCORES}, got {kind!r}.")
    logits = logits.float()
    if kind == "max_logit":
        return -logits.max(-1).values
    if kind == "energy":
        return -temperature * torch.logsumexp(logits / temperature, -1)
    p = probabilities(logits, temperature)
    if kind == "msp":
        return 1.0 - p.max(-1).values
    if kind == "margin":
        top = p.topk(min(2, p.shape[-1]), -1).values
        return -(top[:, 0] - (top[:, 1] if top.shape[1] > 1 else 0.0))
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


def conformal_quantile(scores: list[float], level: float) -> float:
    """The ceil((n + 1) level)-th smallest of n held-out scores (infinity when that exceeds n): a new exchangeable
    score is at most this with probability >= `level` (split conformal prediction, Vovk et al. 2005)."""
    n = len(scores)
    k = math.ceil((n + 1) * level - 1e-9)
    if k > n or n == 0:
        return math.inf
    return sorted(scores)[k - 1]


def text_key(text_a: str, text_b: str | None = None) -> str:
    """A short stable hash of an input, to recognise training texts in a pool without saving the texts."""
    raw = text_a if text_b is None else f"{text_a}\x00{text_b}"
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]


@dataclass
class Calibration:
    """What a classifier learnt about its own uncertainty on held-out data (saved with a DecT adapter).

    Args:
        temperature: T of softmax(logits / T) (1.0: probabilities as the logits give them).
        conformal_scores: held-out nonconformity scores 1 - p_y (with T), for `predict_set`.
        unknown_scores: held-out unknown scores of in-scope examples, for `predict(reject=True)`.
        oos_unknown_scores: unknown scores of explicit out-of-scope examples (with `out_of_scope_label`).
        unknown_score: which score (`UNKNOWN_SCORES`).
        ece_before, ece_after: held-out expected calibration error with T = 1 and with T.
        heldout: held-out rows behind the temperature and ECE, and where they came from (`sources`); the conformal
            and rejection scores are those of the eval rows when there were any (split conformal).
        training_texts: hashes (`text_key`) of the fit's training inputs, left out by `suggest`.
    """

    temperature: float = 1.0
    conformal_scores: list[float] = field(default_factory=list)
    unknown_scores: list[float] = field(default_factory=list)
    oos_unknown_scores: list[float] = field(default_factory=list)
    unknown_score: str = DEFAULT_UNKNOWN_SCORE
    ece_before: float | None = None
    ece_after: float | None = None
    heldout: int = 0
    sources: str = ""
    training_texts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict) -> Calibration:
        """A Calibration from its saved dict, checked (a hand-edited config gets a clear error)."""
        if not isinstance(value, dict):
            raise TypeError(f"A saved calibration must be a dict, got {type(value).__name__}.")
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"The saved calibration has unknown fields {unknown}: written by a newer peft-dect?")
        cal = cls(**value)
        t = cal.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"The saved calibration's temperature must be a positive number, got {t!r}.")
        if cal.unknown_score not in UNKNOWN_SCORES:
            raise ValueError(f"The saved calibration's unknown_score must be one of {UNKNOWN_SCORES}.")
        for name in ("conformal_scores", "unknown_scores", "oos_unknown_scores"):
            scores = getattr(cal, name)
            finite = isinstance(scores, list) and all(isinstance(s, int | float) and math.isfinite(s) for s in scores)
            if not finite:
                raise ValueError(f"The saved calibration's {name} must be a list of finite numbers.")
        return cal

    @property
    def has_heldout(self) -> bool:
        return bool(self.conformal_scores)

    def require_heldout(self, what: str) -> None:
        if not self.has_heldout:
            raise ValueError(
                f"{what} needs held-out predictions, and this fit had none: fit in auto mode with eval_dataset or at "
                "least 2 examples per class, or call calibrate(labelled_held_out_data) first."
            )

    def reject_threshold(self, rate: float) -> float:
        """The unknown score above which an input is rejected.

        Without out-of-scope examples: the conformal (1 - rate) quantile of the in-scope held-out scores, so that at
        most a fraction `rate` of in-scope inputs is rejected (in expectation, for exchangeable inputs). With them
        (`out_of_scope_label`), they decide the trade-off: the threshold that maximises held-out balanced accuracy,
        (in-scope kept + out-of-scope rejected) / 2, and `rate` is not used.
        """
        check_alpha(rate, "reject_rate")
        self.require_heldout("Rejection")
        if not self.oos_unknown_scores:
            return conformal_quantile(self.unknown_scores, 1.0 - rate)
        inside, outside = torch.tensor(self.unknown_scores), torch.tensor(self.oos_unknown_scores)
        candidates = torch.cat([inside, outside, torch.tensor([math.inf])]).unique()
        kept = (inside.unsqueeze(0) <= candidates.unsqueeze(1)).float().mean(1)
        caught = (outside.unsqueeze(0) > candidates.unsqueeze(1)).float().mean(1)
        return float(candidates[int(((kept + caught) / 2).argmax())])

    def set_threshold(self, alpha: float) -> float:
        """The largest nonconformity 1 - p a class may have to enter a prediction set at miscoverage `alpha`."""
        check_alpha(alpha)
        self.require_heldout("A prediction set")
        return conformal_quantile(self.conformal_scores, 1.0 - alpha)


def fit_calibration(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: bool = True,
    unknown_score: str = DEFAULT_UNKNOWN_SCORE,
    oos_logits: torch.Tensor | None = None,
    sources: str = "",
    training_texts: Iterable[str] = (),
    split_rows: torch.Tensor | None = None,
) -> Calibration:
    """A Calibration from held-out class logits (N, C) and their labels (and logits of out-of-scope rows).

    The temperature is fitted on every row. `split_rows` (a boolean mask) marks rows scored by the very classifier
    that predicts (DecT: the eval split); when there are any, only they give the conformal and rejection scores, so
    that those are split-conformal (exchangeable with new inputs); otherwise every row does (cross-conformal).
    """
    logits, labels = logits.float(), labels.long()
    if labels.numel() == 0:
        return Calibration(unknown_score=unknown_score, training_texts=list(training_texts))
    t = fit_temperature(logits, labels) if temperature else 1.0
    ece = (
        expected_calibration_error(probabilities(logits), labels),
        expected_calibration_error(probabilities(logits, t), labels),
    )
    heldout = int(labels.numel())
    if split_rows is not None and bool(split_rows.any()):
        logits, labels = logits[split_rows], labels[split_rows]
        sources = (sources + ": " if sources else "") + "prediction sets and rejection from the eval rows"
    p = probabilities(logits, t)
    oos = [] if oos_logits is None or len(oos_logits) == 0 else unknown_scores(oos_logits, t, unknown_score).tolist()
    return Calibration(
        temperature=t,
        conformal_scores=(1.0 - p.gather(1, labels[:, None])[:, 0]).tolist(),
        unknown_scores=unknown_scores(logits, t, unknown_score).tolist(),
        oos_unknown_scores=oos,
        unknown_score=unknown_score,
        ece_before=ece[0],
        ece_after=ece[1],
        heldout=heldout,
        sources=sources,
        training_texts=list(training_texts),
    )


def prediction_sets(probs: torch.Tensor, threshold: float) -> list[list[int]]:
    """Per row, the classes with 1 - p <= threshold, most probable first (LAC). A set may be empty: no class is
    probable enough for an input unlike the held-out data; adding the top class there would only raise coverage
    above 1 - alpha and the sets' size."""
    out = []
    for row in probs.float():
        order = row.argsort(descending=True)
        out.append([int(c) for c in order if 1.0 - float(row[c]) <= threshold])
    return out


def suggest(
    probs: torch.Tensor, k: int, strategy: str = "margin", embeddings: torch.Tensor | None = None
) -> list[int]:
    """Indices of the `k` rows whose labels would help most: smallest top-2 margin, largest entropy, or (`diverse`)
    a greedy k-centre cover, in the normalised embedding space, of the 10 k most uncertain rows by margin."""
    if strategy not in SUGGEST_STRATEGIES:
        raise ValueError(f"strategy must be one of {SUGGEST_STRATEGIES}, got {strategy!r}.")
    n = probs.shape[0]
    top = probs.float().topk(min(2, probs.shape[1]), -1).values
    margin = top[:, 0] - (top[:, 1] if top.shape[1] > 1 else 0.0)
    if strategy == "margin":
        return margin.argsort()[:k].tolist()
    if strategy == "entropy":
        entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
        return entropy.argsort(descending=True)[:k].tolist()
    pool = margin.argsort()[: min(n, 10 * k)]
    points = F.normalize((probs if embeddings is None else embeddings).float()[pool], dim=-1)
    chosen = [0]  # the most uncertain row starts the cover
    nearest = (points - points[0]).norm(dim=-1)
    while len(chosen) < min(k, len(pool)):
        nxt = int(nearest.argmax())
        chosen.append(nxt)
        nearest = torch.minimum(nearest, (points - points[nxt]).norm(dim=-1))
    return pool[torch.tensor(chosen)].tolist()
