"""DecT for several labels per text: the paper's decoder with independent per-class scores.

    z = W h,   s_k = -|| z / ||z|| - p_k || + r_k + lam * a_k,   P(k | x) = sigmoid(s_k / T)
    a_k = log P(w_k | x) - log P(w_k | content-free input)        (without calibration: minus the row's mean)

The projection, prototypes and radii are the single-label decoder's (`decoder.py`); the softmax over classes gives
way to one sigmoid per class, trained with binary cross-entropy summed over the classes. The label-word prior can no
longer be a distribution over the classes (a text may be about two of them), so it enters as each label word's
calibrated log-ratio against the content-free input: positive when the text makes the word likelier than no text
does, whatever the other words do. Radii start from the examples of each class (a text counts for each of its
classes).

Auto mode trains the decoder's term at a scale, s_k = ML_SCORE_SCALE * (r_k - distance_k) + lam * a_k, and
stores the equivalent unscaled form (lam / scale, T / scale; the probabilities and thresholds are the same), so a
saved adapter's scores keep the equation above. On the sphere the distances span at most about 2, so unscaled
sigmoids stay between about 0.1 and 0.9 and the binary cross-entropy keeps pulling on rows it already gets right;
cosine classifiers scale for the same reason (NormFace, Wang et al. 2017).

Auto mode trains, in one batched loop, a decoder per cross-validation fold (random folds: a row has several
classes, so there is no stratum), with and without calibration, snapshots at `ML_AUTO_EPOCHS`, and scores every
(calibration, epochs, fusion weight) by the best micro-F1 that one shared threshold reaches on the held-out rows
(the folds plus `eval_dataset`). For the chosen candidate it then fits a temperature T on the held-out rows
(binary cross-entropy) and the decision thresholds: the shared one, and a class's own where it has at least
`ML_MIN_POSITIVES` held-out positives.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..features import Features
from ..uncertainty import golden_section_min
from . import decoder
from .fit import AUTO_FOLDS, FitResult, fusion_grid, preference, shots_of, train_members, train_one


logger = logging.getLogger(__name__)

# A class's own threshold is fitted only where its held-out positives are at least this many: an F1-optimal cut
# through fewer positives lands on one of them and moves with every example. The rule's reason carries over to any
# task (it is a count, not a tuned value); the same number of examples auto mode asks of a class before it trusts a
# decoder-heavy choice (`fit.AUTO_MIN_SHOTS`).
ML_MIN_POSITIVES = 8
# Epoch counts auto mode chooses from. One sigmoid per class learns from fewer positives than a softmax over the
# classes (every negative of a class is only one of its C binary targets), so the single-label (30, 60) stop short.
# On NLU++'s training folds 0-4 (auto mode's own held-out micro-F1, no test fold read; benchmarks/multilabel_dev.py)
# this grid and lr 0.01 gave 39.5 at scale 1 and 45.8 at ML_SCORE_SCALE, (100, 300, 1000) 39.5 and 46.1 at 2.4 to
# 2.8 times the decoder time, lr 0.03 36.0. The choice among them is made on held-out data like every other;
# snapshots come from one training loop.
ML_AUTO_EPOCHS = (30, 100, 300)
# The scale of the decoder's term in auto mode's scores (see the module docstring). A reason that carries over (the
# distances' range on the sphere does not depend on the task or the backbone); the value was checked on NLU++'s
# training folds 0-4 (auto mode's own held-out micro-F1, no test fold read; benchmarks/multilabel_dev.py): scale 1
# gave 39.5, 3 gave 41.5, 10 gave 45.8, 20 gave 45.3, 40 gave 43.9. Faithful mode and the Trainer path keep 1.
ML_SCORE_SCALE = 10.0
ECE_BINS = 10


@dataclass
class MultiLabelChoice:
    """What a multi-label fit adds to a `FitResult`: the probability temperature, per-class decision thresholds
    (probabilities, after T) and the held-out figures behind them."""

    temperature: float = 1.0
    thresholds: list[float] | None = None
    heldout: int = 0
    sources: str = ""
    ece_before: float | None = None
    ece_after: float | None = None


def prior_log_odds(label_logits: torch.Tensor, content_free: torch.Tensor | None) -> torch.Tensor:
    """The label-word prior a (N, C) of a multi-label decoder: log P(w_k | x) - log P(w_k | content-free), or,
    without content-free scores, the log-probabilities minus each row's mean."""
    label_logits = label_logits.float()
    if content_free is not None:
        return label_logits - content_free.to(label_logits)
    return label_logits - label_logits.mean(-1, keepdim=True)


def best_cut(scores: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """(threshold, F1) of the cut through `scores` (any shape) that maximises the F1 of predicting `scores >=
    threshold` against the 0/1 `targets`: every cut at once, from one sort."""
    s, order = scores.reshape(-1).float().sort(descending=True)
    t = targets.reshape(-1)[order].float()
    positives = float(t.sum())
    if positives == 0 or s.numel() == 0:
        return math.inf, 0.0
    tp = t.cumsum(0)
    k = torch.arange(1, s.numel() + 1, dtype=torch.float32)
    f1 = 2 * tp / (k + positives)
    # a cut can only fall between distinct scores: among tied scores keep the last index of each run
    last_of_run = torch.ones_like(s, dtype=torch.bool)
    last_of_run[:-1] = s[:-1] != s[1:]
    f1 = torch.where(last_of_run, f1, torch.zeros_like(f1))
    i = int(f1.argmax())
    threshold = float(s[i]) if i + 1 == s.numel() else float((s[i] + s[i + 1]) / 2)
    return threshold, float(f1[i])


def random_folds(n: int, k: int, seed: int) -> list[torch.Tensor]:
    """Boolean masks of k seeded random folds of n rows."""
    gen = torch.Generator().manual_seed(seed)
    fold = torch.randperm(n, generator=gen) % k
    return [fold == f for f in range(k)]


def fit_binary_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """T minimising the binary cross-entropy of sigmoid(logits / T) against 0/1 targets (golden-section search over
    log(1/T) in [log 1e-4, log 1e3], in float64; the loss is convex in 1/T)."""
    logits, targets = logits.double().reshape(-1), targets.double().reshape(-1)

    def loss(log_beta: float) -> float:
        return float(F.binary_cross_entropy_with_logits(logits * math.exp(log_beta), targets))

    return float(math.exp(-golden_section_min(loss, math.log(1e-4), math.log(1e3))))


def binary_ece(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error of independent per-class probabilities: over equal-width bins of all (row, class)
    cells, |share of positives - mean probability| weighted by the bin's share of cells."""
    p, y = probs.float().reshape(-1), targets.float().reshape(-1)
    which = (p * bins).long().clamp(max=bins - 1)
    ece = 0.0
    for b in range(bins):
        cells = which == b
        if cells.any():
            ece += float(cells.float().mean()) * abs(float(y[cells].mean()) - float(p[cells].mean()))
    return ece


def choose_thresholds(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> list[float]:
    """Per-class probability thresholds (after T) from held-out fused scores (M, C): the shared F1-optimal cut, and a
    class's own micro-F1-optimal cut where it has at least `ML_MIN_POSITIVES` held-out positives."""
    shared, _ = best_cut(logits, targets)
    cuts = []
    for c in range(logits.shape[1]):
        own = shared
        if float(targets[:, c].sum()) >= ML_MIN_POSITIVES:
            own, _ = best_cut(logits[:, c], targets[:, c])
        cuts.append(own)
    return [to_probability(cut, temperature) for cut in cuts]


def to_probability(cut: float, temperature: float) -> float:
    """The probability sigmoid(cut / T) of a cut on the fused scores (1.0 for a cut above every score)."""
    if math.isinf(cut):
        return 1.0 if cut > 0 else 0.0
    return float(torch.sigmoid(torch.tensor(cut / temperature, dtype=torch.float64)))


def fit_multilabel(
    train: Features,
    labels: torch.Tensor,
    content_free: torch.Tensor | None,
    cfg,
    eval_features: Features | None = None,
    eval_labels: torch.Tensor | None = None,
    progress: bool = False,
) -> tuple[FitResult, MultiLabelChoice]:
    """Fit a multi-label decoder on multi-hot `labels` (N, C): the configured mode, thresholds and temperature;
    `progress` shows the decoder's training."""
    num_classes = labels.shape[1]
    shots = shots_of(labels, num_classes)
    if cfg.mode == "faithful" or (labels.shape[0] < 2 * AUTO_FOLDS and eval_features is None):
        if cfg.mode == "auto":
            logger.warning(
                "Auto mode needs an eval set or %d training rows; fitting with the paper's recipe.", 2 * AUTO_FOLDS
            )
        lam = cfg.lam if cfg.lam is not None else 1.0 / shots
        calibrate = cfg.calibrate and content_free is not None
        prior = prior_log_odds(train.label_logits, content_free if calibrate else None)
        weights = train_one(train, labels, prior, 1.0 / shots, cfg, num_classes, cfg.epochs, progress=progress)
        report = {"mode": "faithful", "lam": lam, "calibrate": calibrate, "epochs": cfg.epochs, "multi_label": True}
        return FitResult(weights, lam, calibrate, cfg.epochs, report), MultiLabelChoice(thresholds=None)
    calib_options = [True, False] if content_free is not None else [False]
    priors = {c: prior_log_odds(train.label_logits, content_free if c else None) for c in calib_options}
    eval_priors = {}
    if eval_features is not None:
        eval_priors = {c: prior_log_odds(eval_features.label_logits, content_free if c else None) for c in priors}
    folds = random_folds(labels.shape[0], AUTO_FOLDS, cfg.seed) if labels.shape[0] >= 2 * AUTO_FOLDS else []
    everything = torch.ones(labels.shape[0], dtype=torch.bool)
    splits = [(~held, held) for held in folds] + ([(everything, None)] if eval_features is not None else [])
    members = [(c, rows, held) for c in calib_options for rows, held in splits]
    scale = ML_SCORE_SCALE
    snaps = train_members(train, labels, priors, members, cfg, num_classes, ML_AUTO_EPOCHS, scale, progress)
    fusion = fusion_grid(shots)
    held_parts = [labels[held] for _, held in splits if held is not None] + ([eval_labels] if eval_priors else [])
    held_targets = torch.cat(held_parts)  # in the order the members' held-out rows are scored below
    table: dict[tuple[bool, int, float], float] = {}
    fused: dict[tuple[bool, int, float], torch.Tensor] = {}
    with torch.no_grad():
        for epochs, weights in snaps.items():
            for calibrate in calib_options:
                bases, prior_rows = [], []
                for g, (c, _, held) in enumerate(members):
                    if c != calibrate:
                        continue
                    member = weights.member(g)
                    hidden = train.hidden[held] if held is not None else eval_features.hidden
                    prior = priors[c][held] if held is not None else eval_priors[c]
                    bases.append(scale * decoder.scores(member, hidden.float(), torch.zeros_like(prior), 0.0)[0])
                    prior_rows.append(prior)
                base, prior = torch.cat(bases), torch.cat(prior_rows)
                for lam in fusion:
                    logits = base + lam * prior
                    _, f1 = best_cut(logits, held_targets)
                    table[(calibrate, epochs, lam)] = f1
                    fused[(calibrate, epochs, lam)] = logits
    best = max(table, key=lambda key: preference(key, table[key]))
    calibrate, epochs, lam = best
    heldout_logits = fused[best]
    temperature = fit_binary_temperature(heldout_logits, held_targets) if cfg.calibrate_probabilities else 1.0
    sources = ([f"{len(folds)}-fold cross-validation"] if folds else []) + (["eval_dataset"] if eval_priors else [])
    choice = MultiLabelChoice(
        temperature=temperature / scale,  # of the stored, unscaled scores
        thresholds=choose_thresholds(heldout_logits, held_targets, temperature),
        heldout=int(held_targets.shape[0]),
        sources=" and ".join(sources),
        ece_before=binary_ece(torch.sigmoid(heldout_logits), held_targets),
        ece_after=binary_ece(torch.sigmoid(heldout_logits / temperature), held_targets),
    )
    report = {
        "mode": "auto",
        "multi_label": True,
        "selected_on": choice.sources,
        "selected_by": "micro_f1",
        "calibrate": calibrate,
        "epochs": epochs,
        "lam": lam / scale,
        "score_scale": scale,
        "heldout_micro_f1": table[best],
        "grid_micro_f1": {f"calibrate={c},epochs={e},scaled_lam={lm:g}": v for (c, e, lm), v in sorted(table.items())},
        "own_thresholds": sum(float(labels_c) >= ML_MIN_POSITIVES for labels_c in held_targets.sum(0)),
    }
    logger.info(
        "DecT multi-label auto mode chose calibrate=%s epochs=%d lam=%g (held-out micro-F1 %.3f on %s).",
        calibrate,
        epochs,
        lam / scale,
        table[best],
        choice.sources,
    )
    on_all = [g for g, (c, _, held) in enumerate(members) if held is None and c == calibrate]
    if on_all:
        weights = snaps[epochs].member(on_all[0])
    else:
        weights = train_one(train, labels, priors[calibrate], 1.0 / shots, cfg, num_classes, epochs, scale, progress)
    return FitResult(weights, lam / scale, calibrate, epochs, report), choice
