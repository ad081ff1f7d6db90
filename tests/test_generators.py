"""Feature generators: the shared contract over the registry, each formula against values
computed here by hand (numpy), where gradients go, the trainer's handling (placement, frozen
parameters, export) and end-to-end runs on the digits data."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import PerEntry, assert_same_training, digits, one_per_entry, resumed_run
from lttoolbox.batch import Batch
from lttoolbox.engine import Trainer, train
from lttoolbox.errors import ConfigError
from lttoolbox.generators import (FTL, RSG, DeltaEncoder, Hallucinator, frequent_classes,
                                  generation_count)
from lttoolbox.generators.delta_encoder import same_class_pairs
from lttoolbox.generators.rsg import center_distances
from lttoolbox.models import DigitsCNN
from lttoolbox.recipe import resolve
from lttoolbox.registry import GENERATORS


COUNTS = [500, 300, 40, 20, 10]          # frequent_fraction 0.4 -> classes 0 and 1 frequent
SHAPE = (6, 3, 3)
# Small settings of every registered generator (one row each) for the unit tests...
SMALL = PerEntry(GENERATORS, {"rsg": {"contrastive_channels": 8, "generation_start_epoch": 0},
                              "delta_encoder": {"hidden": 8, "latent_dim": 3},
                              "hallucinator": {}, "ftl": {"components": 2}},
                 where="SMALL in tests/test_generators.py")


def build(name, **params):
    cfg = {"name": name, **SMALL[name], "frequent_fraction": 0.4, **params}
    return GENERATORS.build(cfg, num_classes=len(COUNTS), class_counts=COUNTS,
                            feature_shape=SHAPE)


def ready(gen, x, y):
    """Give generators that learn statistics first (FTL) one epoch of them."""
    if isinstance(gen, FTL):
        gen(x, Batch.plain(x, y))
        gen.set_epoch(gen.epoch + 1)
    return gen


def test_every_generator_is_registered():
    assert set(GENERATORS.names()) >= {"rsg", "delta_encoder", "hallucinator", "ftl"}
    SMALL.check()
    ON_DIGITS.check()


# ------------------------------------------------------------------------------ shared contract
BATCHES = {  # labels -> (frequent count, rare count)
    "more frequent": [0, 1, 0, 0, 2, 1, 0, 3, 1, 0],
    "more rare": [0, 2, 3, 4, 2, 3, 4, 1],
    "odd, one rare": [0, 0, 1, 1, 0, 1, 4],
    "only frequent": [0, 1, 1, 0],
    "only rare": [2, 3, 4, 2, 4],
    "one sample": [3],
}


@pytest.mark.parametrize("name", SMALL.names)
@pytest.mark.parametrize("case", sorted(BATCHES))
def test_generated_samples_have_shapes_labels_and_count_of_the_rule(name, case):
    torch.manual_seed(0)
    y = torch.tensor(BATCHES[case])
    x = torch.randn(len(y), *SHAPE)
    gen = ready(build(name), torch.randn(12, *SHAPE), torch.tensor([0, 1] * 3 + [2, 3, 4] * 2))
    h, batch = gen(x, Batch.plain(x, y))
    frequent = int(sum(v in (0, 1) for v in BATCHES[case]))
    rare = len(y) - frequent
    if name == "hallucinator":  # needs no frequent source
        expected = generation_count(frequent, rare, 1.0)
    elif name == "delta_encoder":  # needs a same-class frequent pair
        pairs = len(y[y < 2]) - len(set(y[y < 2].tolist()))
        expected = generation_count(frequent, rare, 1.0) if pairs else 0
    else:
        expected = generation_count(frequent, rare, 1.0) if frequent else 0
    assert gen.last_generated == expected
    assert h.shape == (len(y) + expected, *SHAPE) and torch.equal(h[:len(y)], x)
    assert torch.equal(batch.y_a[:len(y)], y) and not batch.mixed
    new_labels = batch.y_a[len(y):].tolist()
    rare_seq = [v for v in BATCHES[case] if v >= 2]
    assert new_labels == [rare_seq[i % len(rare_seq)] for i in range(expected)]
    assert batch.x is h and torch.isfinite(h).all()
    aux = gen.auxiliary_loss()
    assert aux is None or (aux.dim() == 0 and torch.isfinite(aux))
    assert gen.auxiliary_loss() is None  # handed out once


@pytest.mark.parametrize("name", SMALL.names)
def test_eval_mode_and_outside_the_window_are_the_identity(name):
    x, y = torch.randn(6, *SHAPE), torch.tensor([0, 1, 0, 2, 3, 4])
    gen = ready(build(name, start_epoch=0, end_epoch=3), x, y)
    gen.eval()
    h, batch = gen(x, Batch.plain(x, y))
    assert h is x and batch.y_a is y
    gen.train()
    gen.set_epoch(3)
    h, batch = gen(x, Batch.plain(x, y))
    assert h is x and gen.auxiliary_loss() is None


@pytest.mark.parametrize("name", SMALL.names)
def test_vectors_at_the_features_point(name):
    gen = GENERATORS.build({"name": name, **SMALL[name], "frequent_fraction": 0.4},
                           num_classes=5, class_counts=COUNTS, feature_shape=(7,))
    x, y = torch.randn(6, 7), torch.tensor([0, 1, 0, 2, 3, 4])
    ready(gen, x, y)
    h, batch = gen(x, Batch.plain(x, y))
    assert h.dim() == 2 and h.shape[1] == 7 and h.shape[0] == batch.y_a.shape[0] > 6


@pytest.mark.parametrize("name", SMALL.names)
def test_a_mixed_batch_is_refused(name):
    x, y = torch.randn(4, *SHAPE), torch.tensor([0, 1, 2, 3])
    mixed = Batch.plain(x, y).replace(y_b=y.flip(0))
    with pytest.raises(ConfigError, match="single class"):
        build(name)(x, mixed)


@pytest.mark.parametrize("name", SMALL.names)
@pytest.mark.parametrize("bad", [{"frequent_fraction": 1.0}, {"frequent_fraction": 0},
                                 {"transfer_strength": 0}, {"start_epoch": -1},
                                 {"feature_shape": (4, 0, 2)}])
def test_bad_parameters_are_one_clear_error(name, bad):
    with pytest.raises(ConfigError):
        build(name, **bad)


@pytest.mark.parametrize("name", SMALL.names)
def test_state_round_trips(name):
    x, y = torch.randn(8, *SHAPE), torch.tensor([0, 1, 0, 2, 3, 4, 1, 0])
    a = ready(build(name), x, y)
    a(x, Batch.plain(x, y))
    b = build(name)
    b.load_state_dict(a.state_dict())
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


# ------------------------------------------------------------------------------ shared helpers
def test_frequent_classes_by_count_not_index():
    assert frequent_classes([10, 500, 20, 300, 5], 0.4).tolist() == [1, 3]
    assert frequent_classes([5000] * 5 + [50] * 5, 0.5).tolist() == [0, 1, 2, 3, 4]
    assert frequent_classes([5, 7], 0.2).tolist() == [1]          # at least one
    assert frequent_classes([5, 7, 9], 0.99).tolist() == [1, 2]   # never all


@pytest.mark.parametrize("s_freq, s_rare, beta, expected", [
    (100, 28, 1.0, 3 * 28), (100, 28, 0.01, 28), (3, 8, 1.0, 8), (30, 3, 0.1, 3),
    (10, 5, 2.5, 25), (0, 5, 1.0, 5), (7, 0, 1.0, 0)])
def test_generation_count_is_the_papers_formula(s_freq, s_rare, beta, expected):
    assert generation_count(s_freq, s_rare, beta) == expected


# ------------------------------------------------------------------------------------------ RSG
def identity_transform(rsg):
    with torch.no_grad():
        rsg.transform.weight.zero_()
        rsg.transform.bias.zero_()
        for c in range(rsg.transform.weight.shape[0]):
            rsg.transform.weight[c, c, 1, 1] = 1.0


def test_rsg_center_distances_and_cesc_by_hand():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4, 2, 2))
    centers = rng.normal(size=(3, 5, 4))
    expected = np.array([[((x[i] - centers[i, k][:, None, None]) ** 2).sum() for k in range(5)]
                         for i in range(3)])
    got = center_distances(torch.tensor(x), torch.tensor(centers)).numpy()
    assert np.allclose(got, expected)

    rsg = RSG(num_classes=2, class_counts=[10, 2], feature_shape=(4, 2, 2), num_centers=5,
              contrastive_channels=4, cesc_weight=1.0, generation_start_epoch=1,
              frequent_fraction=0.5)
    with torch.no_grad():
        rsg.centers.copy_(torch.tensor(rng.normal(size=(2, 5, 4))))
    y = np.array([0, 1, 0])
    xt = torch.tensor(x, dtype=torch.float32)
    rsg(xt, Batch.plain(xt, torch.tensor(y)))
    aux = rsg.auxiliary_loss().item()
    a, b, c = (rsg.assign_weight.detach().numpy(), rsg.assign_bias.detach().numpy(),
               rsg.centers.detach().numpy())
    cesc = 0.0
    for i in range(3):
        z = x[i].mean(axis=(1, 2)) @ a[y[i]] + b[y[i]]
        gamma = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        cesc += sum(gamma[k] * ((x[i] - c[y[i], k][:, None, None]) ** 2).sum()
                    for k in range(5))
    cesc /= 3
    # One pair (sample 0 with sample 1; the third sits out), labels differ -> target 0.
    logits = rsg.same_class_logits(xt[:1], xt[1:2]).detach().numpy()[0]
    pair = np.log(np.exp(logits).sum()) - logits[0]
    assert aux == pytest.approx(cesc + pair, rel=1e-4)


def test_rsg_generation_and_mv_loss_by_hand():
    rng = np.random.default_rng(2)
    rsg = RSG(num_classes=3, class_counts=[100, 5, 5], feature_shape=(3, 2, 2), num_centers=2,
              contrastive_channels=4, cesc_weight=0.0, mv_weight=1.0,
              mv_terms=["cosine", "norm"], frequent_fraction=0.34, generation_start_epoch=0)
    identity_transform(rsg)
    with torch.no_grad():
        rsg.centers.copy_(torch.tensor(rng.normal(size=(3, 2, 3))))
    x = rng.normal(size=(5, 3, 2, 2))
    y = np.array([0, 2, 0, 0, 1])               # 3 frequent, 2 rare -> s_new = 1 * 2
    xt = torch.tensor(x, dtype=torch.float32)
    h, batch = rsg(xt, Batch.plain(xt, torch.tensor(y)))
    a, b, c = (rsg.assign_weight.detach().numpy(), rsg.assign_bias.detach().numpy(),
               rsg.centers.detach().numpy())

    def nearest(i):
        return int(np.argmax(x[i].mean(axis=(1, 2)) @ a[y[i]] + b[y[i]]))

    frequent, rare = [0, 2, 3], [1, 4]
    mv, news = 0.0, []
    for j in range(2):
        f, r = frequent[j], rare[j]
        fd = x[f] - c[y[f], nearest(f)][:, None, None]            # T is the identity
        rd = x[r] - c[y[r], nearest(r)][:, None, None]
        news.append(x[r] + fd)
        cos = (fd * rd).sum(0) / (np.linalg.norm(fd, axis=0) * np.linalg.norm(rd, axis=0))
        mv += np.abs(1 - cos).sum() + 0.0  # norm term is 0: T keeps the length
    assert batch.y_a.tolist() == [0, 2, 0, 0, 1, 2, 1]
    assert np.allclose(h[5:].detach().numpy(), np.stack(news), atol=1e-5)
    assert rsg.auxiliary_loss().item() == pytest.approx(mv / 2, rel=1e-4)


def test_rsg_norm_term_runs_over_channels_per_position():
    """A transform that doubles the displacement: each position's term is its channel norm."""
    rsg = RSG(num_classes=2, class_counts=[9, 1], feature_shape=(2, 1, 3), num_centers=1,
              contrastive_channels=4, cesc_weight=0.0, mv_weight=1.0, mv_terms=["norm"],
              frequent_fraction=0.5, generation_start_epoch=0)
    identity_transform(rsg)
    with torch.no_grad():
        rsg.transform.weight.mul_(2.0)
    x = torch.tensor([[[[3.0, 0.0, 1.0]], [[4.0, 1.0, 0.0]]],
                      [[[1.0, 1.0, 1.0]], [[1.0, 1.0, 1.0]]]])
    rsg(x, Batch.plain(x, torch.tensor([0, 1])))
    # |2|v_p| - |v_p|| = |v_p| with v_p the channel vector at position p: 5 + 1 + 1.
    assert rsg.auxiliary_loss().item() == pytest.approx(7.0, rel=1e-5)


def test_rsg_ablations_are_configuration():
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(size=(3, 3, 2, 2)), dtype=torch.float32)
    y = torch.tensor([0, 0, 1])
    kw = dict(num_classes=2, class_counts=[50, 5], feature_shape=(3, 2, 2), num_centers=1,
              contrastive_channels=4, frequent_fraction=0.5, generation_start_epoch=0)
    plain = RSG(**kw, transform=False)
    with torch.no_grad():
        plain.centers.copy_(torch.tensor(rng.normal(size=(2, 1, 3))))
    h, _ = plain(x, Batch.plain(x, y))
    c = plain.centers.detach()[:, 0, :, None, None]
    assert torch.allclose(h[3], x[2] + x[0] - c[0], atol=1e-6)    # direct addition, no T
    to_centers = RSG(**kw, transform=False, displace="centers")
    to_centers.load_state_dict(plain.state_dict())
    h, _ = to_centers(x, Batch.plain(x, y))
    assert torch.allclose(h[3], c[1] + x[0] - c[0], atol=1e-6)    # onto the rare center
    with pytest.raises(ConfigError, match="mv_terms"):
        RSG(**kw, mv_terms=["cosine", "length"])
    with pytest.raises(ConfigError, match="contrastive_kernel"):
        RSG(**kw, contrastive_kernel=2)
    assert RSG(**kw, contrastive_kernel=1).contrastive[0].kernel_size == (1, 1)


def grads(module):
    return {n: p.grad for n, p in module.named_parameters()}


def attached(gen, model, x, y, point):
    logits, batch = model.forward_hooked(Batch.plain(x, y), {point: gen})
    return logits, batch


@pytest.mark.parametrize("generating", [False, True])
def test_rsg_gradients_reach_exactly_the_papers_parts(generating):
    torch.manual_seed(0)
    model = DigitsCNN(num_classes=4)
    rsg = RSG(num_classes=4, class_counts=[90, 60, 5, 3], feature_shape=(64, 4, 4),
              point="layer2", num_centers=3, contrastive_channels=8, frequent_fraction=0.5,
              generation_start_epoch=0 if generating else 5)
    x, y = torch.randn(10, 1, 8, 8), torch.tensor([0, 1, 0, 1, 0, 2, 3, 1, 0, 2])
    logits, batch = attached(rsg, model, x, y, "layer2")
    aux = rsg.auxiliary_loss()
    aux.backward(retain_graph=True)
    # RSG's own losses never reach the network.
    assert all(p.grad is None for p in model.parameters())
    got = {n for n, g in grads(rsg).items() if g is not None and g.abs().sum() > 0}
    centers = {"assign_weight", "assign_bias", "centers"}
    contrastive = {n for n in got if n.startswith("contrastive")}
    if not generating:
        assert centers <= got and contrastive and not any(n.startswith("transform") for n in got)
        assert rsg.frozen_parameters() == []
        return
    assert centers <= got and {"transform.weight", "transform.bias"} <= got
    assert {id(p) for p in rsg.frozen_parameters()} == {
        id(p) for n, p in rsg.named_parameters() if n.startswith("contrastive")}
    # The generated samples' classification loss trains T and the layers after the point, not
    # the layers before it (RSG reads the maps detached).
    model.zero_grad(set_to_none=True)
    rsg.zero_grad(set_to_none=True)
    F.cross_entropy(logits[10:], batch.y_a[10:]).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0
               for n, p in model.named_parameters() if n.startswith(("stem", "layer1")))
    assert model.head.weight.grad.abs().sum() > 0
    assert rsg.transform.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------ delta-encoder
def official_reconstruction(rec: np.ndarray, target: np.ndarray) -> float:
    """EliSchwartz/DeltaEncoder deltaencoder.py lines 183-193 at 8691821, in numpy: per sample
    (its elements flattened) d = |x - x_hat|, w = d^2 / (sum d^2 + 1e-7), loss sum w d; then
    the mean over samples."""
    d = np.abs(target.astype(np.float64) - rec).reshape(len(rec), -1)
    w = d ** 2 / (np.sum(d ** 2, axis=1, keepdims=True) + 1e-7)
    return float(np.mean(np.sum(w * d, axis=1)))


def test_delta_encoder_reconstruction_is_the_official_weighted_l1_with_its_gradient():
    from lttoolbox.generators.delta_encoder import weighted_l1

    rng = np.random.default_rng(7)
    target = rng.normal(size=(4, 3, 2, 2))
    rec = torch.tensor(rng.normal(size=(4, 3, 2, 2)), dtype=torch.float64, requires_grad=True)
    loss = weighted_l1(rec, torch.from_numpy(target))
    assert loss.item() == pytest.approx(official_reconstruction(rec.detach().numpy(), target),
                                        rel=1e-12)
    # by hand: errors (1, 3) give (1 * 1 + 9 * 3) / (1 + 9) = 2.8, more than their mean 2
    assert weighted_l1(torch.tensor([[1.0, -3.0]]), torch.zeros(1, 2)).item() == \
        pytest.approx(2.8, rel=1e-6)
    # the weights are not detached (TensorFlow differentiates through them): per sample the
    # loss is sum d^3 / (sum d^2 + eps), whose derivative in d_j is
    # (3 d_j^2 S2 - 2 d_j S3) / S2^2 with S2 = sum d^2 + eps, S3 = sum d^3
    loss.backward()
    d = np.abs(target - rec.detach().numpy()).reshape(4, -1)
    s2 = np.sum(d ** 2, axis=1, keepdims=True) + 1e-7
    s3 = np.sum(d ** 3, axis=1, keepdims=True)
    grad_d = (3 * d ** 2 * s2 - 2 * d * s3) / s2 ** 2 / 4
    sign = np.sign(rec.detach().numpy() - target).reshape(4, -1)
    np.testing.assert_allclose(rec.grad.numpy().reshape(4, -1), grad_d * sign, rtol=1e-9)


def test_delta_encoder_plain_l1_and_a_bad_reconstruction_name():
    torch.manual_seed(0)
    y = torch.tensor([0, 0, 1, 1, 2])
    gen = DeltaEncoder(num_classes=3, class_counts=[90, 60, 3], feature_shape=(3, 2, 2),
                       hidden=6, latent_dim=2, dropout=0.0, reconstruction="l1",
                       frequent_fraction=0.67)
    x = torch.randn(5, 3, 2, 2)
    gen(x, Batch.plain(x, y))
    a, b = same_class_pairs(torch.tensor([0, 1, 2, 3]), y)
    rec = gen.decode(x[b], gen.encode(x[a], x[b])).detach().numpy()
    assert gen.auxiliary_loss().item() == pytest.approx(np.abs(rec - x[a].numpy()).mean(),
                                                        rel=1e-5)
    with pytest.raises(ConfigError, match="reconstruction must be one of weighted_l1, l1"):
        DeltaEncoder(num_classes=3, class_counts=[90, 60, 3], feature_shape=(3, 2, 2),
                     reconstruction="l2")


def test_delta_encoder_pairs_reconstruction_and_detached_synthesis():
    y = torch.tensor([1, 0, 2, 1, 0, 0, 3])
    a, b = same_class_pairs(torch.tensor([0, 1, 3, 4, 5]), y)
    assert sorted(zip(a.tolist(), b.tolist())) == [(0, 3), (1, 4), (4, 5)]
    assert all(y[i] == y[j] for i, j in zip(a.tolist(), b.tolist()))
    torch.manual_seed(0)
    gen = DeltaEncoder(num_classes=4, class_counts=[90, 60, 5, 3], feature_shape=(3, 2, 2),
                       hidden=6, latent_dim=2, dropout=0.0, reconstruction_weight=2.0,
                       frequent_fraction=0.5)
    x = torch.randn(7, 3, 2, 2)
    h, batch = gen(x, Batch.plain(x, y))
    aux = gen.auxiliary_loss()
    rec = gen.decode(x[b], gen.encode(x[a], x[b])).detach().numpy()
    assert aux.item() == pytest.approx(2.0 * official_reconstruction(rec, x[a].numpy()), rel=1e-5)
    # 5 frequent, 2 rare: max(floor(5 / 2), 1) * 2 = 4 new samples, seeds 2, 6, 2, 6;
    # pair i mod 3 (the same-class pairs in sorted order).
    assert batch.y_a[7:].tolist() == [2, 3, 2, 3]
    seeds, pair = torch.tensor([2, 6, 2, 6]), torch.arange(4) % 3
    expected = gen.decode(x[seeds], gen.encode(x[a[pair]], x[b[pair]]))
    assert torch.allclose(h[7:], expected, atol=1e-6)
    assert not h[7:].requires_grad  # trained by reconstruction only, as the paper
    aux.backward()
    assert all(p.grad is not None for p in gen.parameters())


# ------------------------------------------------------------------------------- hallucinator
def test_hallucinator_starts_as_identity_and_learns_through_classification():
    torch.manual_seed(0)
    model = DigitsCNN(num_classes=3)
    gen = Hallucinator(num_classes=3, class_counts=[90, 10, 5], feature_shape=(64, 8, 8),
                       point="layer1", frequent_fraction=0.34)
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 0, 1, 0, 2, 0])
    logits, batch = attached(gen, model, x, y, "layer1")
    # 4 frequent, 2 rare: 2 * 2 new samples, copies of samples 2 and 4 at the start.
    assert batch.y_a[6:].tolist() == [1, 2, 1, 2]
    plain = model(x)
    assert torch.allclose(logits[6:], plain[[2, 4, 2, 4]], atol=1e-5)
    assert gen.auxiliary_loss() is None
    F.cross_entropy(logits[6:], batch.y_a[6:]).backward()
    assert gen.mlp[-1].weight.grad.abs().sum() > 0
    assert model.stem[0].weight.grad is None or model.stem[0].weight.grad.abs().sum() == 0


# ------------------------------------------------------------------------------------------ FTL
def test_ftl_centers_directions_and_transfer_by_hand():
    rng = np.random.default_rng(4)
    gen = FTL(num_classes=3, class_counts=[80, 60, 4], feature_shape=(3, 2, 1), components=2,
              frequent_fraction=0.67)
    batches = [(rng.normal(size=(6, 3, 2, 1)), np.array([0, 1, 0, 2, 1, 0])),
               (rng.normal(size=(4, 3, 2, 1)) + 1.0, np.array([1, 1, 0, 2]))]
    for x, y in batches:
        xt = torch.tensor(x, dtype=torch.float32)
        h, _ = gen(xt, Batch.plain(xt, torch.tensor(y)))
        assert h is xt  # no statistics yet: nothing generated in the first epoch
    gen.set_epoch(1)
    x = np.concatenate([b[0] for b in batches]).astype(np.float32).astype(np.float64)
    y = np.concatenate([b[1] for b in batches])
    means = np.stack([x[y == c].mean(axis=0) for c in range(3)])
    assert np.allclose(gen.centers.numpy(), means, atol=1e-5)
    residual = np.concatenate([x[y == c] - means[c] for c in (0, 1)])   # frequent classes
    vectors = residual.transpose(0, 2, 3, 1).reshape(-1, 3)            # positions as rows
    values, basis = np.linalg.eigh(vectors.T @ vectors)
    top = basis[:, ::-1][:, :2]
    assert np.allclose(np.abs(top.T @ gen.basis.numpy().astype(np.float64)), np.eye(2),
                       atol=1e-4)
    xn = rng.normal(size=(3, 3, 2, 1)).astype(np.float32)
    yn = np.array([1, 2, 0])
    xt = torch.tensor(xn)
    h, batch = gen(xt, Batch.plain(xt, torch.tensor(yn)))
    # 2 frequent, 1 rare: new samples from frequent samples 0 and 2 onto class 2's center.
    projector = top @ top.T
    expected = [means[2] + np.einsum("cd,dhw->chw", projector, xn[f] - means[yn[f]])
                for f in (0, 2)]
    assert batch.y_a[3:].tolist() == [2, 2]
    assert np.allclose(h[3:].numpy(), np.stack(expected), atol=1e-4)


# ------------------------------------------------------------------------------------- trainer
DIGITS = digits(train={"seed": 0})
# ... and on the digits CNN for the trainer's tests.
ON_DIGITS = PerEntry(GENERATORS, {"rsg": {"contrastive_channels": 16, "generation_start_epoch": 1},
                                  "delta_encoder": {"hidden": 32}, "hallucinator": {}, "ftl": {}},
                     where="ON_DIGITS in tests/test_generators.py")


def test_each_loss_term_is_logged_and_they_add_up_to_the_loss(tmp_path):
    """RSG's centre term is on another scale than the criterion's loss and would hide it in
    ``loss``: every epoch also logs each term's mean, named as in the recipe."""
    recipe = resolve({**DIGITS, "generator": {"name": "rsg", **ON_DIGITS["rsg"]}})
    history = train(recipe, tmp_path / "rsg", quiet=True)["history"]
    for row in history:
        assert list(row["loss_terms"]) == ["ce", "rsg"]
        assert row["loss_terms"]["ce"] > 0 and row["loss_terms"]["rsg"] > 0
        assert row["loss"] == pytest.approx(sum(row["loss_terms"].values()), rel=1e-5)
    logged = [json.loads(line) for line in
              (tmp_path / "rsg" / "log.jsonl").read_text().splitlines()]
    assert [r["loss_terms"] for r in logged] == [r["loss_terms"] for r in history]
    with open(tmp_path / "rsg" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(float(r["loss_ce"]), float(r["loss_rsg"])) for r in rows] == \
        [(r["loss_terms"]["ce"], r["loss_terms"]["rsg"]) for r in history]
    plain = train(resolve(DIGITS), tmp_path / "ce", quiet=True)["history"]
    assert all("loss_terms" not in row for row in plain)  # one term: ``loss`` says it all
    header = (tmp_path / "ce" / "metrics.csv").read_text().splitlines()[0]
    assert "loss_ce" not in header


def test_a_phase_without_the_generator_leaves_its_term_columns_empty(tmp_path):
    recipe = resolve({**DIGITS, "generator": {"name": "rsg", **ON_DIGITS["rsg"]},
                      "phases": [{"name": "joint"},
                                 {"name": "crt", "generator": None,
                                  "train": {"epochs": 1, "freeze": ["backbone"],
                                            "reset_head": True}}]})
    history = train(recipe, tmp_path / "run", quiet=True)["history"]
    with open(tmp_path / "run" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["phase"] for r in rows] == ["joint", "joint", "crt"]
    assert [r["loss_rsg"] != "" for r in rows] == [True, True, False]
    assert "loss_terms" not in history[-1]


@pytest.mark.long
@pytest.mark.parametrize("name", ON_DIGITS.names)
def test_end_to_end_and_the_export_has_no_generator(tmp_path, name):
    recipe = resolve({**DIGITS, "generator": {"name": name, **ON_DIGITS[name]}})
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    gen = trainer.phases[0].generator
    assert gen.point == "layer1"  # two points before 'features' on the digits CNN
    results = trainer.run()
    assert np.isfinite(results["top1"]) and len(results["history"]) == 2
    exported = torch.load(tmp_path / "run" / "model-main.pt")
    assert set(exported) == set(trainer.model.state_dict())
    assert not any(m is gen for m in trainer.model.modules())
    assert sum(v.numel() for v in exported.values()) == sum(
        v.numel() for v in trainer.model.state_dict().values())
    # Attached in eval mode, the generator changes nothing.
    trainer.model.eval()
    gen.eval()
    x = next(trainer.data_path.eval_batches("test", 16))
    labels = torch.as_tensor(trainer.data_path.eval_labels("test")[:16])
    with torch.no_grad():
        plain = trainer.model(x)
        hooked, _ = trainer.model.forward_hooked(Batch.plain(x, labels),
                                                 {gen.point: gen})
    assert torch.equal(plain, hooked)


def test_rsg_contrastive_module_is_frozen_once_it_generates(tmp_path):
    recipe = resolve({**DIGITS, "train": {**DIGITS["train"], "epochs": 1},
                      "generator": {"name": "rsg", "contrastive_channels": 16,
                                    "generation_start_epoch": 0}})
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    gen = trainer.phases[0].generator
    before = {n: p.detach().clone() for n, p in gen.named_parameters()}
    trainer.run()
    after = dict(gen.named_parameters())
    for name, value in before.items():
        moved = not torch.equal(value, after[name])
        assert moved == (not name.startswith("contrastive")), name


@pytest.mark.long
@pytest.mark.parametrize("generator", [{"name": "ftl"}, {"name": "rsg", "contrastive_channels": 8,
                                                         "generation_start_epoch": 1}])
def test_resume_is_exact(tmp_path, generator):
    """FTL's statistics and RSG's state (and the frozen module) survive an interruption."""
    recipe = resolve({**DIGITS, "train": {**DIGITS["train"], "epochs": 3},
                      "generator": generator})
    full = train(recipe, tmp_path / "full", quiet=True)
    assert_same_training(resumed_run(recipe, tmp_path / "cut", stop_after=2), full)


def test_mixing_before_the_generator_is_refused_after_it_accepted(tmp_path):
    gen = {"name": "hallucinator", "point": "layer1"}
    with pytest.raises(ConfigError, match=r"augment\[0\].*single class"):
        Trainer(resolve({**DIGITS, "generator": gen, "augment": [{"name": "mixup"}]}),
                tmp_path / "a", quiet=True)
    assert not (tmp_path / "a").exists()
    # Mixing in other epochs, or after the generator's point, combines.
    Trainer(resolve({**DIGITS, "generator": {**gen, "start_epoch": 1},
                     "augment": [{"name": "mixup", "end_epoch": 1}]}), tmp_path / "b", quiet=True)
    results = train(resolve({**DIGITS, "generator": gen,
                             "augment": [{"name": "manifold_mixup", "point": "features"}]}),
                    tmp_path / "c", quiet=True)
    assert np.isfinite(results["top1"])


def test_an_unknown_point_is_named_with_the_models_points(tmp_path):
    with pytest.raises(ConfigError, match="generator.point.*layer7.*stem, layer1"):
        Trainer(resolve({**DIGITS, "generator": {"name": "rsg", "point": "layer7"}}),
                tmp_path / "run", quiet=True)


@pytest.mark.parametrize("name", SMALL.names)
def test_alpha_and_beta_follow_the_data_profile_unless_given(name):
    kw = dict(num_classes=5, class_counts=COUNTS, feature_shape=SHAPE)
    cfg = {"name": name, **SMALL[name]}
    exp = GENERATORS.build(cfg, **kw, imbalance_type="exp")
    step = GENERATORS.build(cfg, **kw, imbalance_type="step")
    given = GENERATORS.build({**cfg, "frequent_fraction": 0.3, "transfer_strength": 2.0}, **kw,
                             imbalance_type="step")
    assert (exp.frequent_fraction, exp.transfer_strength) == (0.2, 1.0)
    assert (step.frequent_fraction, step.transfer_strength) == (0.5, 0.01)
    assert (given.frequent_fraction, given.transfer_strength) == (0.3, 2.0)
    assert exp.is_frequent.tolist() == [True, False, False, False, False]
    assert step.is_frequent.tolist() == [True, True, False, False, False]


def test_the_trainer_passes_the_data_profile(tmp_path):
    recipe = resolve({**DIGITS, "data": {"name": "digits_lt", "imbalance_type": "step",
                                         "imbalance_ratio": 10},
                      "generator": {"name": "ftl"}})
    gen = Trainer(recipe, tmp_path / "run", quiet=True).phases[0].generator
    assert (gen.frequent_fraction, gen.transfer_strength) == (0.5, 0.01)
    assert gen.is_frequent.sum() == 5


# -------------------------------------------------------------------------------------- recipes
# Every registered generator on the two base recipes: recipe -> generator.
GENERATOR_OF = {f"{base}_{gen}": gen for base in ("ce", "ldam_drw") for gen in GENERATORS.names()}
RECIPES = list(GENERATOR_OF)
ROWS = {"ce_rsg": "erm_rsg", "ldam_drw_rsg": "ldam_drw_rsg", "ce_delta_encoder": "delta_encoder",
        "ce_hallucinator": "hallucinator", "ce_ftl": "ftl"}


@pytest.mark.parametrize("dataset", ["cifar10_lt", "cifar100_lt"])
@pytest.mark.parametrize("name", RECIPES)
def test_generator_recipes_build_on_the_protocol(dataset, name):
    from conftest import ROOT
    from lttoolbox.recipe import load_recipe
    from lttoolbox.registry import MODELS

    recipe = load_recipe(ROOT / "configs" / dataset / f"{name}.yaml")
    base = load_recipe(ROOT / "configs" / dataset / ("ce.yaml" if name.startswith("ce_")
                                                     else "ldam_drw.yaml"))
    assert {k: v for k, v in recipe.items() if k not in ("generator", "meta")} == {
        k: v for k, v in base.items() if k not in ("generator", "meta")}
    classes = 10 if dataset == "cifar10_lt" else 100
    model = MODELS.build(recipe["model"], num_classes=classes)
    shapes = model.point_shapes(torch.zeros(2, 3, 32, 32))
    assert shapes["layer2"] == (32, 16, 16)  # RSG's place in ResNet-32
    n_max = 50000 // classes
    counts = [int(n_max * 0.01 ** (i / (classes - 1))) for i in range(classes)]
    gen = GENERATORS.build(recipe["generator"], num_classes=classes, class_counts=counts,
                           point_names=model.point_names, point_shapes=shapes,
                           imbalance_type="exp", total_epochs=recipe["train"]["epochs"])
    assert gen.point == "layer2" and gen.feature_shape == (32, 16, 16)
    assert (gen.frequent_fraction, gen.transfer_strength) == (0.2, 1.0)
    assert gen.is_frequent.sum() == classes // 5 and gen.is_frequent[:classes // 5].all()
    if isinstance(gen, RSG):
        assert (gen.num_centers, gen.generation_start_epoch, gen.cesc_weight,
                gen.mv_weight) == (15, 160, 0.1, 0.01)
        assert gen.contrastive[0].out_channels == 256 and gen.contrastive[0].kernel_size == (3, 3)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_recipes_cite_the_rsg_numbers_in_meta_not_in_the_header(name):
    """The RSG paper's numbers for a generator recipe (benchmarks/reference_numbers.yaml, source
    ``rsg``) are cited through the recipe's meta: ``meta.paper`` names that paper (its arXiv id,
    as the source gives it), and at the recipe's own setting ``meta.reference`` is the number."""
    import re
    import yaml
    from conftest import ROOT
    from lttoolbox.recipe import load_recipe

    refs = yaml.safe_load((ROOT / "benchmarks/reference_numbers.yaml").read_text())
    arxiv = re.search(r"arXiv:\d{4}\.\d{4,5}", refs["sources"]["rsg"]["paper"]).group(0)
    mine = [e for e in refs["entries"] if e["method"] == ROWS[name] and e["source"] == "rsg"]
    assert mine
    for dataset in ("cifar10_lt", "cifar100_lt"):
        recipe = load_recipe(ROOT / "configs" / dataset / f"{name}.yaml")
        meta, data = recipe["meta"], recipe["data"]
        assert arxiv in meta.get("paper", ""), (dataset, meta)
        here = [e for e in mine if (e["dataset"], e["imbalance_type"], e["imbalance_ratio"]) ==
                (data["name"], data["imbalance_type"], data["imbalance_ratio"])]
        if here:
            assert meta.get("reference") == {"source": "rsg", "table": here[0]["table"],
                                             "top1_error": here[0]["top1_error"]}, dataset
        else:
            assert (meta.get("reference") or {}).get("source") != "rsg", dataset


# README's quick set runs the CE recipe of each generator; .ci/run runs every recipe.
@pytest.mark.parametrize("name", one_per_entry(GENERATOR_OF,
                                               prefer=lambda name: name.startswith("ce_")))
def test_generator_recipes_run_on_digits(tmp_path, name):
    from conftest import ROOT, on_digits
    from lttoolbox.recipe import load_recipe

    recipe = on_digits(load_recipe(ROOT / "configs" / "cifar10_lt" / f"{name}.yaml"))
    if recipe["generator"]["name"] == "rsg":
        recipe["generator"]["contrastive_channels"] = 16  # the protocol's 256 is slow on CPU
    trainer = Trainer(resolve(recipe), tmp_path / "run", quiet=True)
    results = trainer.run()
    assert np.isfinite(results["top1"]) and len(results["history"]) == 2
    assert trainer.phases[0].generator.point == "layer2"


@pytest.mark.parametrize("kernel, shape", [(3, (16, 16)), (3, (1, 1)), (5, (4, 7)), (1, (3, 3)),
                                           (3, (2, 5))])
def test_pooled_conv_is_the_convolution_then_the_average(kernel, shape):
    from torch import nn
    from lttoolbox.generators.rsg import pooled_conv

    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, kernel, padding=kernel // 2).double()
    r = torch.randn(3, 6, *shape, dtype=torch.float64)
    expected = conv(r).mean(dim=(2, 3))
    assert torch.allclose(pooled_conv(conv, r).double(), expected, atol=1e-5)


def test_the_step_cost_benchmark_times_every_generator(tmp_path):
    """benchmarks/throughput.py --generator builds each generator from the one context object
    the registry hands it, with the model's point shapes in it (they were missing there once)."""
    import runpy

    from conftest import ROOT
    from lttoolbox.engine.trainer import Trainer

    script = runpy.run_path(str(ROOT / "benchmarks" / "throughput.py"))
    recipe = resolve(DIGITS)
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    figures = script["time_components"](trainer, recipe, 1, 1, "generator")
    assert set(figures) == {"plain", *script["GENERATORS_TIMED"]}
    assert all(v > 0 for v in figures.values())
