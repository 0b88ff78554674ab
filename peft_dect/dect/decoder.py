"""The DecT decoder, as in the paper: a projection, fixed random class prototypes and learned radii.

    z = W h,   score_k = -|| z / ||z|| - p_k || + r_k + lam * q_k

`h` is the hidden state at the prediction position, `p_k` fixed Xavier-initialised prototypes, `r_k` radii
initialised to the mean distance of a class's normalised projected examples to their mean, and `q` the (calibrated)
label-word probabilities. Everything here is batched over G independent decoders ("members") that share the
training features, so a whole hyperparameter grid or cross-validation trains in one loop.

Scale. Measured on the sphere, where the score measures distances, the initial radii are on the distances' scale (at
most 2) whatever the norm of the backbone's hidden states, and the whole fit is invariant to multiplying every `h` by
a constant: z / ||z|| does not change and the gradient wrt W does not either, so Adam takes the same steps. The
reference code (thunlp/DecT) measures them before normalisation, where they follow ||h|| (4.4-6.0 on SmolLM2-135M,
whose ||h|| is about 45) and their differences, not the distances, decide the class; ``radius_init="reference"``
reproduces it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


RADIUS_INITS = ("normalized", "reference")
"""Where the initial radii are measured: on the normalised projections the score uses, or before normalisation as
the reference implementation does (its results, on a scale that follows the backbone's hidden-state norm)."""


@dataclass
class DecoderWeights:
    """Trained decoder tensors of G members: W (G, d, H), radii (G, C); prototypes (C, d) are shared."""

    W: torch.Tensor
    radii: torch.Tensor
    prototypes: torch.Tensor

    def member(self, g: int) -> DecoderWeights:
        return DecoderWeights(self.W[g : g + 1].clone(), self.radii[g : g + 1].clone(), self.prototypes)


def init_weights(hidden_size: int, decoder_dim: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded initial W (d, H), as `nn.Linear` initialises it, and Xavier-uniform prototypes (C, d)."""
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(hidden_size)  # kaiming_uniform_(a=sqrt(5)) of nn.Linear
    W = (torch.rand(decoder_dim, hidden_size, generator=gen) * 2 - 1) * bound
    xavier = math.sqrt(6.0 / (num_classes + decoder_dim))
    prototypes = (torch.rand(num_classes, decoder_dim, generator=gen) * 2 - 1) * xavier
    return W, prototypes


def project(W: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """z = W h for every member: W (G, d, H), hidden (N, H) -> (G, N, d), as one matrix product."""
    G, d, H = W.shape
    return (W.reshape(G * d, H) @ hidden.T).view(G, d, -1).transpose(1, 2)


def distances(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """|| normalize(z) - p_k || for z (G, N, d) and prototypes (C, d) -> (G, N, C).

    Expanded as ||zn||^2 + ||p_k||^2 - 2 zn . p_k with ||zn|| = 1, one matrix product: memory O(G N C), not the
    O(G N C d) of the differences, so many classes and auto mode's members fit.
    """
    zn = F.normalize(z, dim=-1)
    squared = 1.0 + prototypes.pow(2).sum(-1) - 2.0 * (zn @ prototypes.T)
    return squared.clamp_min(1e-12).sqrt()


def scores(weights: DecoderWeights, hidden: torch.Tensor, q: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Class scores (G, N, C) of every member for hidden (N, H) and probabilities q (N, C) or (G, N, C)."""
    z = project(weights.W, hidden)
    lam = torch.as_tensor(lam, dtype=z.dtype, device=z.device).reshape(-1, 1, 1)
    return -distances(z, weights.prototypes) + weights.radii.unsqueeze(1) + lam * q


def init_radii(
    W: torch.Tensor,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    num_classes: int,
    normalized: bool = False,
) -> torch.Tensor:
    """Per member and class, the mean distance of the projected examples to their projected class mean (G, C).

    r_k = mean_{i: y_i = k} || z_i - mean_{j: y_j = k} z_j ||, with z = W h, or z = normalize(W h) when `normalized`
    (the space of the score, so r_k is scale-invariant). The default measures before normalisation, as the reference
    code does. `weight` (G, N) is 1 for the examples a member trains on. Multi-hot `labels` (N, C) count an
    example in the mean and radius of each of its classes.
    """
    z = project(W, hidden)
    if normalized:
        z = F.normalize(z, dim=-1)
    onehot = labels.to(z.dtype) if labels.dim() == 2 else F.one_hot(labels, num_classes).to(z.dtype)  # (N, C)
    w = weight.unsqueeze(-1) * onehot  # (G, N, C)
    count = w.sum(1).clamp_min(1.0)  # (G, C)
    mean = torch.einsum("gnc,gnd->gcd", w, z) / count.unsqueeze(-1)
    dist = (z.unsqueeze(2) - mean.unsqueeze(1)).norm(dim=-1)  # (G, N, C)
    return (dist * w).sum(1) / count


def loss_per_example(s: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Loss (G, N) of scores s (G, N, C): cross-entropy over the classes for class indices (N,), the sum over classes
    of the binary cross-entropy of sigmoid(s) for multi-hot targets (N, C)."""
    G, N, C = s.shape
    if labels.dim() == 2:
        target = labels.to(s.dtype).unsqueeze(0).expand(G, -1, -1)
        return F.binary_cross_entropy_with_logits(s, target, reduction="none").sum(-1)
    return F.cross_entropy(s.reshape(-1, C), labels.repeat(G), reduction="none").view(G, -1)


def train(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    q: torch.Tensor,
    lam: torch.Tensor,
    *,
    num_classes: int,
    decoder_dim: int,
    epochs: int,
    lr: float,
    seed: int,
    weight: torch.Tensor | None = None,
    checkpoints: tuple[int, ...] = (),
    radius_init: str = "reference",
    scale: float = 1.0,
    progress: bool = False,
) -> tuple[DecoderWeights, dict[int, DecoderWeights]]:
    """Full-batch Adam on the cross-entropy of the scores, for G members at once; for multi-hot labels (N, C), on
    the binary cross-entropy of every class's sigmoid(score_k) (multi-label: `peft_dect.dect.multilabel`).

    hidden (N, H), labels (N,) or (N, C), q (G, N, C) or (N, C), lam (G,), weight (G, N) marks each member's
    training rows (all ones by default), `radius_init` one of RADIUS_INITS (here, as in `init_radii`, the reference
    code's by default, so these functions reproduce it; `DecTConfig` defaults to "normalized"). `scale` multiplies
    the decoder's term in the loss, scale * (r_k - distance) + lam * q_k (a cosine classifier's scale; 1 is the
    paper's). `progress` shows a bar over the epochs (long with many classes and members). Returns the final
    weights and snapshots at the given epoch `checkpoints`.
    """
    if radius_init not in RADIUS_INITS:
        raise ValueError(f"radius_init must be one of {RADIUS_INITS}, got {radius_init!r}.")
    G = lam.shape[0]
    hidden = hidden.float()
    if weight is None:
        weight = torch.ones(G, hidden.shape[0])
    W0, prototypes = init_weights(hidden.shape[1], decoder_dim, num_classes, seed)
    W = W0.unsqueeze(0).repeat(G, 1, 1).requires_grad_(True)
    with torch.no_grad():
        normalized = radius_init == "normalized"
        radii = init_radii(W, hidden, labels, weight, num_classes, normalized).requires_grad_(True)
    opt = torch.optim.Adam([W, radii], lr=lr, fused=W.device.type in ("cpu", "cuda"))
    denom = weight.sum(1).clamp_min(1.0)
    snapshots: dict[int, DecoderWeights] = {}
    if 0 in checkpoints:
        snapshots[0] = DecoderWeights(W.detach().clone(), radii.detach().clone(), prototypes)
    with torch.enable_grad():
        for epoch in tqdm(range(1, epochs + 1), desc="decoder", unit="epoch", disable=not progress, leave=False):
            opt.zero_grad(set_to_none=True)
            s = scale * scores(DecoderWeights(W, radii, prototypes), hidden, q, lam / scale)
            nll = loss_per_example(s, labels)
            loss = ((nll * weight).sum(1) / denom).sum()
            loss.backward()
            opt.step()
            if epoch in checkpoints:
                snapshots[epoch] = DecoderWeights(W.detach().clone(), radii.detach().clone(), prototypes)
    return DecoderWeights(W.detach(), radii.detach(), prototypes), snapshots
