"""VS loss against values computed independently: by hand for a 3-class example, and by a few
lines of numpy written from the official code's formula (orparask/VS-Loss at 7ade9c9,
class_imbalance/losses.py lines 36-53: the logits divided by (n_max / n_c)^gamma, plus
tau * log(n_c / N), then cross-entropy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lttoolbox.errors import ConfigError
from lttoolbox.losses.vs import VSLoss
from lttoolbox.registry import LOSSES

COUNTS = [1000, 100, 10]
Z = [2.0, 1.0, 0.5]


def reference(logits, target, counts, gamma, tau, weights=None):
    """The official code's computation, in numpy (float64)."""
    counts = np.asarray(counts, dtype=np.float64)
    temp = (1.0 / counts) ** gamma
    temp = temp / temp.min()                      # (n_max / n_c)^gamma
    iota = tau * np.log(counts / counts.sum())
    out = np.asarray(logits, dtype=np.float64) / temp + iota
    out = out - out.max(axis=1, keepdims=True)
    nll = -(out - np.log(np.exp(out).sum(axis=1, keepdims=True)))[np.arange(len(target)), target]
    if weights is None:
        return nll.mean()
    w = np.asarray(weights)[target]
    return (w * nll).sum() / w.sum()               # torch's weighted mean


@pytest.mark.parametrize("gamma, tau, y, expected", [
    # adjusted logits [1.874768, -2.257377, -5.452383]; logsumexp 1.891329
    (0.2, 1.2, 2, 7.343718),
    (0.2, 1.2, 0, 0.016568),
    (0.0, 1.2, 2, 7.050018),   # gamma 0: the logit-adjusted loss
    (0.2, 0.0, 2, 2.151246),   # tau 0: class-dependent temperatures
    (0.0, 0.0, 2, 1.964369),   # plain cross-entropy
])
def test_worked_example_by_hand(gamma, tau, y, expected):
    loss = VSLoss(gamma=gamma, tau=tau, class_counts=COUNTS)
    value = float(loss(torch.tensor([Z]), torch.tensor([y])))
    assert value == pytest.approx(expected, abs=2e-6)


@pytest.mark.parametrize("gamma, tau", [(0.2, 1.2), (0.3, 1.0), (0.5, 0.0), (0.0, 2.0)])
def test_matches_the_official_formula_on_random_batches(gamma, tau):
    rng = np.random.default_rng(0)
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    z = rng.normal(0, 3, size=(64, 10))
    y = rng.integers(0, 10, size=64)
    loss = VSLoss(gamma=gamma, tau=tau, class_counts=counts)
    got = float(loss(torch.tensor(z), torch.tensor(y)))
    assert got == pytest.approx(reference(z, y, counts, gamma, tau), rel=1e-6)


def test_deferred_weights_follow_torchs_weighted_mean():
    """With DRW (as the official code's --train_rule DRW) the weights apply from their epoch."""
    counts = [100, 20, 4]
    beta = 0.9999
    w = (1 - beta) / (1 - beta ** np.asarray(counts, dtype=np.float64))
    w = w / w.sum() * len(counts)
    z = np.array([[1.0, 0.2, -0.5], [0.1, 0.3, 0.9], [2.0, -1.0, 0.0]])
    y = np.array([0, 2, 1])
    loss = VSLoss(gamma=0.2, tau=1.2, class_counts=counts,
                  weights={"name": "effective_number", "beta": beta}, weights_start_epoch=1)
    before = float(loss(torch.tensor(z), torch.tensor(y)))
    loss.set_epoch(1)
    after = float(loss(torch.tensor(z), torch.tensor(y)))
    assert before == pytest.approx(reference(z, y, counts, 0.2, 1.2), rel=1e-6)
    assert after == pytest.approx(reference(z, y, counts, 0.2, 1.2, w), rel=1e-6)


def test_the_rare_class_is_scaled_down_in_training_only():
    """Delta < 1 for rarer classes: to reach the same training logit a rare class needs a larger
    raw logit, which is what the plain logits show at test time."""
    loss = VSLoss(gamma=0.2, tau=0.0, class_counts=COUNTS)
    scales = loss.scales.tolist()
    assert scales[0] == 1.0 and scales[0] > scales[1] > scales[2]
    assert scales == pytest.approx([(n / 1000) ** 0.2 for n in COUNTS], rel=1e-6)


@pytest.mark.parametrize("cfg, key", [({"gamma": -0.1}, "loss.gamma"), ({"tau": -1}, "loss.tau"),
                                      ({"tau": True}, "loss.tau")])
def test_bad_parameters_name_their_key(cfg, key):
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        LOSSES.build({"name": "vs", **cfg}, class_counts=COUNTS)


def test_class_counts_are_required():
    with pytest.raises(ConfigError, match="class_counts is required"):
        VSLoss()
