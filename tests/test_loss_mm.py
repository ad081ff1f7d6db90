"""MM loss against values computed independently: the hand-computed 2-sample batch, and a numpy
port of the official code's HMMLoss (ihaeyong/Maximum-Margin-LDAM at e7ed20d, losses.py lines
48-126) with its two indexing defects corrected (each sample's own target cosine; the largest
other cosine, not clamped at 0)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lttoolbox.errors import ConfigError
from lttoolbox.losses.mm import MaxMarginLoss
from lttoolbox.registry import LOSSES

Z = [[0.8, 0.3, -0.2], [0.1, 0.4, 0.6]]
Y = [0, 1]


def reference(z, y, s, big_m, gamma, counts=None, ldam_max_m=0.5, weights=None):
    """Per-sample HMM / HMM-LDAM in numpy (float64)."""
    z, y = np.asarray(z, dtype=np.float64), np.asarray(y)
    rows = np.arange(len(y))
    p = z[rows, y]
    other = z.copy()
    other[rows, y] = -np.inf
    q = other.max(axis=1)
    if counts is None:
        m_big = np.full(len(y), big_m)
    else:
        quarter = np.asarray(counts, dtype=np.float64) ** -0.25
        m_big = big_m - (quarter * ldam_max_m / quarter.max())[y]
    ahead, behind = np.maximum(p - q, 0), np.maximum(q - p, 0)
    margin = np.exp(-ahead - gamma * m_big) * (ahead > 0) + np.exp(-behind - m_big) * (behind > 0)
    out = z.copy()
    out[rows, y] -= margin
    out = s * out
    out -= out.max(axis=1, keepdims=True)
    nll = -(out[rows, y] - np.log(np.exp(out).sum(axis=1)))
    if weights is None:
        return nll.mean()
    w = np.asarray(weights)[y]
    return (w * nll).sum() / w.sum()


def test_the_hand_computed_batch():
    """Sample A: d+ = 0.5, m = e^-1.5, loss 0.061252; sample B: d- = 0.2, m = e^-0.7, loss
    6.973505; mean 3.517378 (the official code's first-label column gives 2.875075)."""
    loss = MaxMarginLoss(max_m=0.5, gamma=2.0, s=10.0, num_classes=3)
    per = loss(torch.tensor(Z), torch.tensor(Y), reduction="none")
    assert per.tolist() == pytest.approx([0.061252, 6.973505], abs=2e-6)
    assert float(per.mean()) == pytest.approx(3.517378, abs=2e-6)
    assert loss.sample_margins(torch.tensor(Z), torch.tensor(Y)).tolist() == pytest.approx(
        [np.exp(-1.5), np.exp(-0.7)], rel=1e-6)


def test_negative_cosines_are_not_clamped_at_zero():
    """Every other cosine below 0: q is the largest of them (-0.1), not 0."""
    z, y = [[0.2, -0.1, -0.5]], [0]
    loss = MaxMarginLoss(max_m=0.5, gamma=1.0, s=5.0, num_classes=3)
    margin = float(loss.sample_margins(torch.tensor(z), torch.tensor(y))[0])
    assert margin == pytest.approx(np.exp(-0.3 - 0.5), rel=1e-6)  # d+ = 0.2 - (-0.1)


@pytest.mark.parametrize("variant, counts", [("hmm", None), ("hmm_ldam", [500, 120, 30, 7])])
@pytest.mark.parametrize("s, big_m, gamma", [(19.0, 1.29, 1.528), (30.0, 0.5, 10.0)])
def test_matches_the_corrected_official_formula(variant, counts, s, big_m, gamma):
    rng = np.random.default_rng(1)
    z = np.tanh(rng.normal(0, 0.6, size=(32, 4)))   # cosines in (-1, 1)
    y = rng.integers(0, 4, size=32)
    loss = MaxMarginLoss(max_m=big_m, gamma=gamma, s=s, variant=variant,
                         class_counts=counts or [1] * 4)
    got = float(loss(torch.tensor(z), torch.tensor(y)))
    assert got == pytest.approx(reference(z, y, s, big_m, gamma, counts), rel=1e-6)


def test_drw_weights_switch_on_at_their_epoch():
    counts = [100, 20, 4]
    beta = 0.9999
    w = (1 - beta) / (1 - beta ** np.asarray(counts, dtype=np.float64))
    w = w / w.sum() * 3
    loss = MaxMarginLoss(max_m=1.29, gamma=1.528, s=19.0, class_counts=counts,
                         weights={"name": "effective_number", "beta": beta}, weights_start_epoch=2)
    z, y = np.array(Z + [[0.0, 0.2, 0.9]]), np.array([0, 1, 2])
    assert float(loss(torch.tensor(z), torch.tensor(y))) == pytest.approx(
        reference(z, y, 19.0, 1.29, 1.528), rel=1e-6)
    loss.set_epoch(2)
    assert float(loss(torch.tensor(z), torch.tensor(y))) == pytest.approx(
        reference(z, y, 19.0, 1.29, 1.528, weights=w), rel=1e-6)


def test_no_gradient_flows_through_the_margin():
    """d loss / d z equals the gradient of CE(s (z - m e_y)) with m held constant."""
    z = torch.tensor(Z, requires_grad=True)
    loss = MaxMarginLoss(max_m=0.5, gamma=2.0, s=10.0, num_classes=3)
    loss(z, torch.tensor(Y)).backward()
    m = torch.tensor([np.exp(-1.5), np.exp(-0.7)], dtype=torch.float32)
    z2 = torch.tensor(Z, requires_grad=True)
    shifted = z2 - torch.nn.functional.one_hot(torch.tensor(Y), 3) * m[:, None]
    torch.nn.functional.cross_entropy(10.0 * shifted, torch.tensor(Y)).backward()
    assert torch.allclose(z.grad, z2.grad, atol=1e-6)


@pytest.mark.parametrize("cfg, key", [
    ({"variant": "soft"}, "loss.variant"), ({"gamma": -1}, "loss.gamma"), ({"s": 0}, "loss.s"),
    ({"max_m": -0.1}, "loss.max_m"), ({"variant": "hmm_ldam", "max_m": 0.3}, "loss.max_m"),
    ({"ldam_max_m": 2.5}, "loss.ldam_max_m")])
def test_bad_parameters_name_their_key(cfg, key):
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        LOSSES.build({"name": "mm", **cfg}, class_counts=[5, 3, 1])
