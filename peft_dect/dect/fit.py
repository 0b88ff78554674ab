"""Fitting the DecT decoder on cached features: the paper's recipe, and the default auto mode.

Nothing here runs the language model: both modes work on `Features` extracted once, so sweeps are cheap.

Auto mode trains, in one batched loop, a decoder with and without content-free calibration (the paper's
lam = 1/shots during training) and keeps snapshots at several epoch counts. For each it then picks the fusion
weight of the calibrated prior at prediction time from a grid that runs from "decoder only" (0) to "prior only"
(1000). The choice is made by accuracy (ties: lower cross-entropy) on the eval split, or by stratified k-fold
cross-validation on the training set when there is no eval split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..features import Features
from ..prompting import calibrated_probs
from . import decoder


logger = logging.getLogger(__name__)

AUTO_EPOCHS = (30, 100)
AUTO_FUSION = (0.0, None, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 1000.0)  # None stands for 1/shots
AUTO_FOLDS = 4


@dataclass
class FitResult:
    """A fitted decoder (one member) with the settings it predicts with."""

    weights: decoder.DecoderWeights
    lam: float
    calibrate: bool
    epochs: int
    report: dict = field(default_factory=dict)


def shots_of(labels: torch.Tensor, num_classes: int) -> int:
    """Training examples per class (the mean over classes, rounded, for unbalanced data)."""
    return max(1, round(labels.numel() / num_classes))


def probs(label_logits: torch.Tensor, content_free: torch.Tensor | None, calibrate: bool) -> torch.Tensor:
    return calibrated_probs(label_logits, content_free if calibrate else None)


def fit_faithful(
    train: Features, labels: torch.Tensor, content_free: torch.Tensor | None, cfg, num_classes: int
) -> FitResult:
    """The paper's recipe: lam = cfg.lam or 1/shots, cfg.epochs of Adam, calibration as configured."""
    lam = cfg.lam if cfg.lam is not None else 1.0 / shots_of(labels, num_classes)
    calibrate = cfg.calibrate and content_free is not None
    q = probs(train.label_logits, content_free, calibrate)
    weights, _ = decoder.train(
        train.hidden,
        labels,
        q,
        torch.tensor([lam]),
        num_classes=num_classes,
        decoder_dim=cfg.decoder_dim,
        epochs=cfg.epochs,
        lr=cfg.learning_rate,
        seed=cfg.seed,
    )
    return FitResult(weights, lam, calibrate, cfg.epochs, {"mode": "faithful", "lam": lam, "calibrate": calibrate})


def _fusion_grid(shots: int) -> list[float]:
    return sorted({(1.0 / shots) if v is None else v for v in AUTO_FUSION})


def _evaluate(weights, hidden, q, labels, fusion: list[float], held: torch.Tensor | None = None):
    """Correct counts and summed cross-entropy (G, L) of G members under L fusion weights.

    `held` (G, N) restricts each member to its held-out rows (cross-validation).
    """
    with torch.no_grad():
        base = decoder.scores(weights, hidden, torch.zeros_like(q), 0.0)  # (G, N, C) without the prior
        lam = torch.tensor(fusion).view(1, -1, 1, 1)
        s = base.unsqueeze(1) + lam * q.unsqueeze(1)  # (G, L, N, C)
        correct = (s.argmax(-1) == labels).float()
        target = labels.expand(*s.shape[:3])
        ce = F.cross_entropy(s.reshape(-1, s.shape[-1]), target.reshape(-1), reduction="none").view(target.shape)
        if held is not None:
            correct, ce = correct * held.unsqueeze(1), ce * held.unsqueeze(1)
    return correct.sum(-1), ce.sum(-1)


def _folds(labels: torch.Tensor, k: int, seed: int) -> list[torch.Tensor]:
    """Stratified fold id per example."""
    gen = torch.Generator().manual_seed(seed)
    fold = torch.empty_like(labels)
    for c in labels.unique():
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        fold[idx] = torch.arange(idx.numel()) % k
    return [fold == f for f in range(k)]


def fit_auto(
    train: Features,
    labels: torch.Tensor,
    content_free: torch.Tensor | None,
    cfg,
    num_classes: int,
    eval_features: Features | None = None,
    eval_labels: torch.Tensor | None = None,
) -> FitResult:
    """Choose calibration, epochs and fusion weight on held-out data, then return the decoder that uses them."""
    shots = shots_of(labels, num_classes)
    fusion = _fusion_grid(shots)
    calib_options = [True, False] if content_free is not None else [False]
    q_by_cal = {c: probs(train.label_logits, content_free, c) for c in calib_options}
    train_lam = 1.0 / shots
    counts = torch.bincount(labels, minlength=num_classes)
    k = min(AUTO_FOLDS, int(counts.min()))
    if eval_features is None and k < 2:
        logger.info("Auto mode needs an eval set or at least 2 examples per class; using the paper's recipe.")
        return fit_faithful(train, labels, content_free, cfg, num_classes)

    # members: calibration option x fold (a single "fold" that trains on everything when an eval set is given)
    masks = [torch.ones_like(labels, dtype=torch.bool)] if eval_features is not None else _folds(labels, k, cfg.seed)
    members = [(c, m) for c in calib_options for m in masks]
    q = torch.stack([q_by_cal[c] for c, _ in members])
    weight = torch.stack([(~m if eval_features is None else m).float() for _, m in members])
    _, snaps = decoder.train(
        train.hidden,
        labels,
        q,
        torch.full((len(members),), train_lam),
        num_classes=num_classes,
        decoder_dim=cfg.decoder_dim,
        epochs=max(AUTO_EPOCHS),
        lr=cfg.learning_rate,
        seed=cfg.seed,
        weight=weight,
        checkpoints=AUTO_EPOCHS,
    )

    # held-out score of every (calibration, epochs, fusion) cell, summed over folds
    table: dict[tuple[bool, int, float], list[float]] = {}
    for epochs, weights in snaps.items():
        if eval_features is not None:
            q_eval = torch.stack([probs(eval_features.label_logits, content_free, c) for c, _ in members])
            correct, ce = _evaluate(weights, eval_features.hidden, q_eval, eval_labels, fusion)
            n_eval = eval_labels.numel()
        else:
            held = torch.stack([m for _, m in members]).float()  # (G, N): each member's held-out fold
            correct, ce = _evaluate(weights, train.hidden, q, labels, fusion, held)
            n_eval = labels.numel()
        for g, (c, _) in enumerate(members):
            for j, lam in enumerate(fusion):
                cell = table.setdefault((c, epochs, lam), [0.0, 0.0])
                cell[0] += float(correct[g, j])
                cell[1] += float(ce[g, j])
    best = max(table, key=lambda key: (table[key][0], -table[key][1]))
    calibrate, epochs, lam = best
    report = {
        "mode": "auto",
        "selected_on": "eval_dataset" if eval_features is not None else f"{k}-fold cross-validation",
        "calibrate": calibrate,
        "epochs": epochs,
        "lam": lam,
        "heldout_accuracy": table[best][0] / n_eval,
        "grid": {f"calibrate={c},epochs={e},lam={lm:g}": v[0] / n_eval for (c, e, lm), v in sorted(table.items())},
    }
    logger.info(
        "DecT auto mode chose calibrate=%s epochs=%d lam=%g (held-out accuracy %.3f).",
        calibrate,
        epochs,
        lam,
        report["heldout_accuracy"],
    )

    if eval_features is not None:
        g = next(i for i, (c, _) in enumerate(members) if c == calibrate)
        return FitResult(snaps[epochs].member(g), lam, calibrate, epochs, report)
    weights, _ = decoder.train(
        train.hidden,
        labels,
        q_by_cal[calibrate],
        torch.tensor([train_lam]),
        num_classes=num_classes,
        decoder_dim=cfg.decoder_dim,
        epochs=epochs,
        lr=cfg.learning_rate,
        seed=cfg.seed,
    )
    return FitResult(weights, lam, calibrate, epochs, report)
