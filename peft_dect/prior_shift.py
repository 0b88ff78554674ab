"""Class-prior shift at prediction time: the priors of the unlabelled inputs re-estimated by EM (Saerens et al.,
"Adjusting the outputs of a classifier to new a priori probabilities", Neural Computation 2002).

A classifier fitted on balanced k-shot data predicts as if every class were equally frequent. When the inputs to
classify come from a skewed distribution (a support queue where one intent dominates), EM alternates between the
posteriors re-weighted by the current priors and the priors as the mean of those posteriors, and converges to the
maximum-likelihood priors of the unlabelled inputs. It assumes that only the class frequencies changed, not what
each class looks like (p(x | y) is the training one), and that the classifier's probabilities are calibrated; it
needs a batch of inputs (tens per class, not one text at a time).
"""

from __future__ import annotations

import torch

from .settings import check_int


def adapt_prior(
    logits: torch.Tensor,
    train_prior: torch.Tensor | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-posteriors (N, C) under the estimated priors, the priors (C,)) of class logits (N, C) that were fitted
    under `train_prior` (uniform when None), by at most `max_iter` EM steps until the priors move less than `tol`."""
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"Prior shift needs class logits of shape (inputs, classes), got {tuple(logits.shape)}.")
    check_int("max_iter", max_iter, 1)
    classes = logits.shape[1]
    log_p = torch.log_softmax(logits.double(), -1)
    log_train = (
        torch.full((classes,), -torch.log(torch.tensor(float(classes), dtype=torch.float64)))
        if train_prior is None
        else torch.log(torch.as_tensor(train_prior, dtype=torch.float64).clamp_min(1e-12))
    )
    if log_train.shape != (classes,):
        raise ValueError(f"train_prior must have one value per class ({classes}), got {tuple(log_train.shape)}.")
    prior = log_train.exp()
    adjusted = log_p
    for _ in range(max_iter):
        adjusted = torch.log_softmax(log_p + torch.log(prior.clamp_min(1e-12)) - log_train, -1)
        new = adjusted.exp().mean(0)
        done = float((new - prior).abs().max()) < tol
        prior = new
        if done:
            break
    return adjusted.to(logits.dtype), prior.to(logits.dtype)
