"""The decoder's equations and its batched training."""

import math

import pytest
import torch
import torch.nn.functional as F

from peft_dect.dect import decoder
from peft_dect.dect.fit import shots_of, stratified_folds


def test_scores_follow_the_paper():
    torch.manual_seed(0)
    W = torch.randn(1, 4, 6)
    P = torch.randn(3, 4)
    r = torch.randn(1, 3)
    h = torch.randn(5, 6)
    q = torch.softmax(torch.randn(5, 3), -1)
    got = decoder.scores(decoder.DecoderWeights(W, r, P), h, q, 0.25)[0]
    z = h @ W[0].T
    z = z / z.norm(dim=-1, keepdim=True)
    want = -torch.cdist(z, P) + r + 0.25 * q
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_init_is_seeded_linear_and_xavier():
    W, P = decoder.init_weights(hidden_size=64, decoder_dim=16, num_classes=3, seed=7)
    W2, P2 = decoder.init_weights(hidden_size=64, decoder_dim=16, num_classes=3, seed=7)
    assert torch.equal(W, W2) and torch.equal(P, P2)
    assert W.abs().max() <= 1 / math.sqrt(64) and P.abs().max() <= math.sqrt(6 / (3 + 16))
    assert not torch.equal(W, decoder.init_weights(64, 16, 3, seed=8)[0])


def test_radii_start_at_mean_distance_to_class_mean():
    W = torch.eye(2).unsqueeze(0)
    h = torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0], [5.0, 7.0]])
    y = torch.tensor([0, 0, 1, 1])
    r = decoder.init_radii(W, h, y, torch.ones(1, 4), 2)
    torch.testing.assert_close(r, torch.tensor([[1.0, 1.0]]))


def test_batched_members_train_like_separate_runs():
    torch.manual_seed(0)
    h, y = torch.randn(12, 10), torch.arange(12) % 3
    q = torch.softmax(torch.randn(12, 3), -1)
    lam = torch.tensor([0.1, 2.0])
    weight = torch.ones(2, 12)
    weight[1, :4] = 0
    both, _ = decoder.train(h, y, q, lam, num_classes=3, decoder_dim=5, epochs=20, lr=0.01, seed=0, weight=weight)
    for g in range(2):
        keep = weight[g].bool()
        alone, _ = decoder.train(
            h[keep], y[keep], q[keep], lam[g : g + 1], num_classes=3, decoder_dim=5, epochs=20, lr=0.01, seed=0
        )
        torch.testing.assert_close(both.W[g], alone.W[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(both.radii[g], alone.radii[0], atol=1e-5, rtol=1e-4)


def test_training_is_deterministic_and_checkpoints_are_snapshots():
    torch.manual_seed(0)
    h, y = torch.randn(8, 6), torch.arange(8) % 2
    q = torch.full((8, 2), 0.5)
    a, snaps = decoder.train(
        h, y, q, torch.tensor([0.1]), num_classes=2, decoder_dim=4, epochs=10, lr=0.01, seed=3, checkpoints=(5, 10)
    )
    b, _ = decoder.train(h, y, q, torch.tensor([0.1]), num_classes=2, decoder_dim=4, epochs=10, lr=0.01, seed=3)
    assert torch.equal(a.W, b.W) and torch.equal(a.radii, b.radii)
    assert torch.equal(snaps[10].W, a.W) and not torch.equal(snaps[5].W, a.W)


def test_training_reduces_the_loss_on_separable_data():
    torch.manual_seed(0)
    y = torch.arange(20) % 2
    h = torch.randn(20, 8) + 3 * y.unsqueeze(1).float()
    q = torch.full((20, 2), 0.5)
    w, _ = decoder.train(h, y, q, torch.tensor([0.0]), num_classes=2, decoder_dim=4, epochs=60, lr=0.05, seed=0)
    acc = (decoder.scores(w, h, q, 0.0)[0].argmax(-1) == y).float().mean()
    assert acc == 1.0


@pytest.mark.parametrize("counts, shots", [([16, 16], 16), ([4, 4, 4], 4), ([3, 6], 4)])
def test_shots(counts, shots):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    assert shots_of(labels, len(counts)) == shots


def test_folds_are_stratified_and_cover_everything():
    labels = torch.tensor([0] * 8 + [1] * 8)
    folds = stratified_folds(labels, 4, seed=0)
    assert torch.stack(folds).sum(0).eq(1).all()
    for f in folds:
        assert f[:8].sum() == 2 and f[8:].sum() == 2


def test_normalized_radii_are_measured_on_the_sphere():
    W = torch.eye(2).unsqueeze(0)
    h = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-5.0, 0.0], [-50.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    r = decoder.init_radii(W, h, y, torch.ones(1, 4), 2, normalized=True)
    # class 0: unit vectors (1, 0) and (0, 1), mean (0.5, 0.5), both at sqrt(0.5); class 1: one point, twice
    torch.testing.assert_close(r, torch.tensor([[math.sqrt(0.5), 0.0]]))
    torch.testing.assert_close(decoder.init_radii(W, 100 * h, y, torch.ones(1, 4), 2, normalized=True), r)


def test_training_is_invariant_to_the_hidden_state_scale():
    torch.manual_seed(0)
    h, y = torch.randn(12, 10), torch.arange(12) % 3
    q = torch.softmax(torch.randn(12, 3), -1)
    kwargs = dict(num_classes=3, decoder_dim=5, epochs=30, lr=0.01, seed=0, radius_init="normalized")
    base, _ = decoder.train(h, y, q, torch.tensor([0.1]), **kwargs)
    for scale in (10.0, 100.0):
        scaled, _ = decoder.train(scale * h, y, q, torch.tensor([0.1]), **kwargs)
        torch.testing.assert_close(scaled.radii, base.radii, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(
            decoder.scores(scaled, scale * h, q, 0.1), decoder.scores(base, h, q, 0.1), atol=1e-4, rtol=1e-4
        )
    reference, _ = decoder.train(100 * h, y, q, torch.tensor([0.1]), **{**kwargs, "radius_init": "reference"})
    assert reference.radii.min() > 2  # before normalisation the radii follow ||h||, far beyond any distance


def test_unknown_radius_init_names_the_options():
    h, y = torch.randn(4, 3), torch.arange(4) % 2
    with pytest.raises(ValueError, match=r"radius_init must be one of \('normalized', 'reference'\)"):
        decoder.train(
            h,
            y,
            torch.full((4, 2), 0.5),
            torch.tensor([0.1]),
            num_classes=2,
            decoder_dim=2,
            epochs=1,
            lr=0.01,
            seed=0,
            radius_init="paper",
        )


def test_training_with_normalized_radii_fits_separable_data():
    torch.manual_seed(0)
    y = torch.arange(20) % 2
    h = torch.randn(20, 8) + 3 * y.unsqueeze(1).float()
    q = torch.full((20, 2), 0.5)
    kwargs = dict(num_classes=2, decoder_dim=4, lr=0.05, seed=0, radius_init="normalized")
    start, _ = decoder.train(h, y, q, torch.tensor([0.0]), epochs=0, **kwargs)
    w, _ = decoder.train(h, y, q, torch.tensor([0.0]), epochs=100, **kwargs)
    assert (decoder.scores(start, h, q, 0.0)[0].argmax(-1) == y).float().mean() < 0.5
    assert (decoder.scores(w, h, q, 0.0)[0].argmax(-1) == y).float().mean() == 1.0


def test_distances_never_build_the_examples_by_classes_by_dim_tensor():
    """Many classes fit: the largest tensor `distances` makes is (members, examples, classes), not that times d."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    Largest.numel = max(Largest.numel, t.numel())
            return out

    z, prototypes = torch.randn(2, 300, 64), torch.randn(150, 64)
    expected = (F.normalize(z, dim=-1).unsqueeze(-2) - prototypes).norm(dim=-1)
    with Largest():
        got = decoder.distances(z, prototypes)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert Largest.numel <= 2 * 300 * 150


def test_training_shows_a_progress_bar_only_when_asked(capsys):
    """Long decoder training (many classes, auto mode's members) can show its epochs; by default it is silent."""
    h, y = torch.randn(12, 6), torch.arange(3).repeat(4)
    q = torch.full((12, 3), 1 / 3)
    common = dict(num_classes=3, decoder_dim=4, epochs=5, lr=0.01, seed=0)
    quiet, _ = decoder.train(h, y, q, torch.tensor([0.25]), **common)
    assert "decoder" not in capsys.readouterr().err
    shown, _ = decoder.train(h, y, q, torch.tensor([0.25]), progress=True, **common)
    assert "decoder" in capsys.readouterr().err
    torch.testing.assert_close(shown.W, quiet.W)
