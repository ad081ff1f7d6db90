"""Multi-label losses and the class-aware multi-label sampler.

Every expected value is computed here: the worked example's numbers were obtained from numpy and
from the official ResampleLoss run on CPU (DistributionBalancedLoss at commit 14460d0), and the
references below are a few lines of numpy written from the formulas, never the code under test.
The sampler is compared with the official algorithm (RandomCycleIter and
class_aware_sample_generator, sampler.py:228-291) written out again here.
"""
from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from lttoolbox.batch import Batch
from lttoolbox.errors import ConfigError, DataError
from lttoolbox.losses.bce import BCELoss
from lttoolbox.losses.multilabel import (CB_MODES, DistributionBalancedLoss,
                                         MultiLabelClassBalancedLoss, MultiLabelFocalLoss)
from lttoolbox.samplers.class_aware_ml import ClassAwareMLSampler

# ------------------------------------------------------------------------------ worked example
# 3 classes, N = 10, n = [8, 3, 1]; two images (fact sheet of the DB loss, section 7).
N_TOY, COUNTS_TOY = 10, [8, 3, 1]
Y_TOY = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
Z_TOY = torch.tensor([[1.0, -0.5, -2.0], [0.2, 0.3, -1.0]])
TOY = dict(class_counts=COUNTS_TOY, num_train=N_TOY)


def test_worked_example_db_weights():
    db = DistributionBalancedLoss(**TOY)
    expected = [[0.532238, 1.086248, 1.100000], [0.212795, 0.477541, 1.089013]]
    np.testing.assert_allclose(db.weights(Y_TOY).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("bug,focal,expected", [
    (True, True, 0.430085), (True, False, 0.500136),     # the official code's bias
    (False, True, 0.466114), (False, False, 0.517251),   # the bias without "/ lambda"
])
def test_worked_example_db_loss(bug, focal, expected):
    db = DistributionBalancedLoss(reproduce_bias_bug=bug, focal=focal, **TOY)
    assert float(db(Z_TOY, Y_TOY)) == pytest.approx(expected, abs=1e-6)


def test_worked_example_bias_and_elements():
    bugged = DistributionBalancedLoss(reproduce_bias_bug=True, **TOY)
    np.testing.assert_allclose(bugged.bias.numpy(), [0.013863, -0.008473, -0.021972], atol=1e-6)
    fixed = DistributionBalancedLoss(**TOY)
    np.testing.assert_allclose(fixed.bias.numpy(), [0.069315, -0.042365, -0.109861], atol=1e-6)
    focal = bugged.elements(Z_TOY, Y_TOY)
    np.testing.assert_allclose(focal.numpy(), [[0.02335424, 0.8296488, 2.96e-14],
                                               [0.06436578, 0.09745127, 1.565689]],
                               rtol=1e-5, atol=1e-12)
    plain = DistributionBalancedLoss(reproduce_bias_bug=True, focal=False, **TOY)
    np.testing.assert_allclose(plain.elements(Z_TOY, Y_TOY).numpy(),
                               [[0.1647554, 1.063827, 8.948637e-06],
                                [0.0580677, 0.2664533, 1.447703]], rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("mode,weight,expected", [
    ("by_class", [0.175582, 0.369004, 1.0], 0.366555),
    ("average_n", [[0.227370], [0.526316]], 0.287432),
    ("average_w", [[0.272293], [0.684502]], 0.368302),
    ("min_n", [[0.369004], [1.0]], 0.531271),
])
def test_worked_example_cb(mode, weight, expected):
    cb = MultiLabelClassBalancedLoss(mode=mode, **TOY)
    np.testing.assert_allclose(cb.weights(Y_TOY).numpy(), weight, atol=2e-6)
    assert float(cb(Z_TOY, Y_TOY)) == pytest.approx(expected, abs=1e-6)


def test_worked_example_focal():
    # FocalLoss(use_sigmoid=True) with its defaults, mean over the 6 elements
    assert float(MultiLabelFocalLoss()(Z_TOY, Y_TOY)) == pytest.approx(0.0602261, abs=1e-7)


# ------------------------------------------------------------------------ numpy references
def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_elements(z, y, w=1.0, gamma=0.0, scale=1.0, lam=1.0):
    """The official element loss written naively: BCE on the regularised logits, weights,
    focal factor from the unweighted p_t."""
    zz = z * (1 - y) * lam + z * y
    ww = w / lam * (1 - y) + w * y
    p = sigmoid(zz)
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    pt = np.exp(-bce)
    return scale * (1 - pt) ** gamma * ww * bce


def np_db(z, y, n, big_n, alpha, beta, mu, lam, kappa, gamma, bal, reweight=True,
          logit_reg=True, focal=True, bug=False, sampler="class_aware_ml"):
    if sampler == "class_aware_ml":
        r = (1 / n)[None] / (y / n).sum(1, keepdims=True)
    else:
        r = np.ones_like(y)
    w = alpha + sigmoid(beta * (r - mu)) if reweight else 1.0
    if logit_reg:
        nu = -np.log(big_n / n - 1) * kappa / (lam if bug else 1.0)
        z, lam_used = z + nu, lam
    else:
        lam_used = 1.0
    return np_elements(z, y, w, gamma if focal else 0.0, bal if focal else 1.0, lam_used)


def np_cb(y, n, beta, mode):
    cb = (1 - beta) / (1 - beta ** n)
    if mode == "by_class":
        return cb[None]
    pos = y.sum(1, keepdims=True)
    if mode == "average_w":
        return (y * cb).sum(1, keepdims=True) / pos
    if mode == "average_n":
        return (1 - beta) / (1 - beta ** ((y * n).sum(1, keepdims=True) / pos))
    return (1 - beta) / (1 - beta ** np.where(y > 0, n, np.inf).min(1, keepdims=True))


RNG = np.random.default_rng(31)
B, C = 6, 5
COUNTS = np.array([60.0, 25.0, 9.0, 4.0, 2.0])
NUM_TRAIN = 80
Z = RNG.normal(0, 2, (B, C))
Y = (RNG.random((B, C)) < 0.4).astype(np.float64)
Y[np.arange(B), RNG.integers(0, C, B)] = 1.0  # every image has a label


def check_against(loss, expected_elements):
    z, y = torch.tensor(Z), torch.tensor(Y)
    per_image = loss(z, y, reduction="none")
    assert per_image.shape == (B,) and per_image.dtype == torch.float64
    np.testing.assert_allclose(per_image.numpy(), expected_elements.mean(1), rtol=1e-10)
    np.testing.assert_allclose(float(loss(z, y)), expected_elements.mean(), rtol=1e-10)
    np.testing.assert_allclose(float(loss(z, y, reduction="sum")),
                               expected_elements.mean(1).sum(), rtol=1e-10)


def test_bce_against_numpy():
    p = sigmoid(Z)
    check_against(BCELoss(), -(Y * np.log(p) + (1 - Y) * np.log(1 - p)))
    torch_bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(Z),
                                                                     torch.tensor(Y))
    assert float(BCELoss()(torch.tensor(Z), torch.tensor(Y))) == pytest.approx(
        float(torch_bce), rel=1e-12)


@pytest.mark.parametrize("gamma,bal", [(2.0, 0.25), (0.5, 1.0), (0.0, 0.25)])
def test_focal_against_numpy(gamma, bal):
    p = sigmoid(Z)
    pt = Y * p + (1 - Y) * (1 - p)
    check_against(MultiLabelFocalLoss(gamma=gamma, balance_param=bal),
                  -bal * (1 - pt) ** gamma * np.log(pt))


@pytest.mark.parametrize("mode", CB_MODES)
@pytest.mark.parametrize("focal", [False, True])
def test_cb_against_numpy(mode, focal):
    w = np_cb(Y, COUNTS, 0.99, mode)
    expected = np_elements(Z, Y, w, 2.0 if focal else 0.0, 2.0 if focal else 1.0)
    check_against(MultiLabelClassBalancedLoss(beta=0.99, mode=mode, focal=focal,
                                              class_counts=COUNTS), expected)


@pytest.mark.parametrize("reweight", [True, False])
@pytest.mark.parametrize("logit_reg", [True, False])
@pytest.mark.parametrize("focal", [True, False])
@pytest.mark.parametrize("bug", [True, False])
def test_db_parts_against_numpy(reweight, logit_reg, focal, bug):
    params = dict(alpha=0.1, beta=10.0, mu=0.2, neg_scale=2.0, init_bias=0.05, gamma=2.0,
                  balance_param=2.0)
    loss = DistributionBalancedLoss(reweight=reweight, logit_reg=logit_reg, focal=focal,
                                    reproduce_bias_bug=bug, class_counts=COUNTS,
                                    num_train=NUM_TRAIN, **params)
    expected = np_db(Z, Y, COUNTS, NUM_TRAIN, 0.1, 10.0, 0.2, 2.0, 0.05, 2.0, 2.0,
                     reweight=reweight, logit_reg=logit_reg, focal=focal, bug=bug)
    check_against(loss, expected)


def test_db_instance_sampler_against_numpy():
    loss = DistributionBalancedLoss(sampling="instance", class_counts=COUNTS, num_train=NUM_TRAIN)
    check_against(loss, np_db(Z, Y, COUNTS, NUM_TRAIN, 0.1, 10.0, 0.3, 5.0, 0.05, 2.0, 2.0,
                              sampler="instance"))


# ------------------------------------------- re-balanced weights from the sampling frequencies
LABELS = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 1, 1], [1, 0, 1]])


def test_rebalance_weights_from_sampling_frequencies():
    """Class-aware sampling: a class with probability 1/C, then one of its n_i images. By hand
    for LABELS (n = [5, 2, 2], C = 3): image 2 (classes 0, 1) is drawn with 1/3 * (1/5 + 1/2)
    per draw, and its class-level frequency for class i is 1/3 * 1/n_i."""
    n = np.array([5.0, 2.0, 2.0])
    p_instance = np.array([1 / 15, 1 / 15, 1 / 15 + 1 / 6, 1 / 15, 1 / 6 + 1 / 6, 1 / 15 + 1 / 6])
    p_class = np.array([1 / 15, 1 / 6, 1 / 6])
    alpha, beta, mu = 0.1, 10.0, 0.3
    expected = alpha + sigmoid(beta * (p_class[None] / p_instance[:, None] - mu))
    db = DistributionBalancedLoss(labels=LABELS, alpha=alpha, beta=beta, mu=mu)
    assert db.counts.tolist() == n.tolist() and db.num_train == 6
    np.testing.assert_allclose(db.weights(torch.tensor(LABELS, dtype=torch.float64)).numpy(),
                               expected, rtol=1e-12)
    sampler = ClassAwareMLSampler(LABELS, samples_per_class=1, seed=0)
    np.testing.assert_allclose(sampler.image_probabilities(), p_instance, rtol=1e-12)
    np.testing.assert_allclose(sampler.class_level_frequencies(), p_class, rtol=1e-12)
    # and the stream draws the images at those rates: over 300 passes of the classes each class
    # has exactly 300 turns and its images share them within 1 (cycles, not i.i.d. draws)
    sampler = ClassAwareMLSampler(LABELS, samples_per_class=1, reduce=5 * 3 / 900, seed=0)
    assert len(sampler) == 900
    drawn = np.bincount(sampler.indices().numpy(), minlength=6)
    assert np.abs(drawn - 900 * p_instance).max() <= 2
    # under instance sampling both frequencies are 1/N: r = 1, one weight everywhere
    flat = DistributionBalancedLoss(labels=LABELS, sampling="instance", alpha=alpha, beta=beta,
                                    mu=mu)
    np.testing.assert_allclose(flat.weights(torch.tensor(LABELS, dtype=torch.float64)).numpy(),
                               np.full((6, 3), alpha + sigmoid(beta * (1 - mu))), rtol=1e-12)


# ------------------------------------------------------------------------------ the contract
ALL_LOSSES = [
    lambda: BCELoss(),
    lambda: MultiLabelFocalLoss(),
    lambda: MultiLabelClassBalancedLoss(class_counts=COUNTS),
    lambda: DistributionBalancedLoss(class_counts=COUNTS, num_train=NUM_TRAIN),
]


@pytest.mark.parametrize("make", ALL_LOSSES)
def test_mixed_batch(make):
    loss = make()
    z = torch.tensor(Z, dtype=torch.float32)
    y_a = torch.tensor(Y, dtype=torch.float32)
    y_b = y_a.flip(0)
    lam = torch.linspace(0.1, 0.9, B)
    batch = Batch(z, y_a, y_b, lam)
    by_hand = (lam * loss(z, y_a, reduction="none")
               + (1 - lam) * loss(z, y_b, reduction="none")).mean()
    assert float(loss.batch_loss(z, batch)) == pytest.approx(float(by_hand), rel=1e-6)
    assert float(loss.batch_loss(z, Batch.plain(z, y_a))) == pytest.approx(float(loss(z, y_a)))


@pytest.mark.parametrize("make", ALL_LOSSES)
def test_logits_untouched_finite_and_float32(make):
    loss = make()
    z = torch.tensor(Z, dtype=torch.bfloat16, requires_grad=True)
    y = torch.tensor(Y, dtype=torch.float32)
    y[0] = 0.0  # an image without labels: no NaN
    z_far = torch.tensor([[80.0, -80.0, 30.0, -30.0, 0.0]] * 2)  # saturated probabilities
    out = loss(z, y)
    out.backward()
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert torch.isfinite(z.grad.float()).all()
    plain = torch.tensor(Z, dtype=torch.float32)
    kept = plain.clone()
    loss(plain, y)
    assert torch.equal(plain, kept)  # the official DB adds its bias in place; not here
    far = loss(z_far, torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 1, 0, 1]]), reduction="none")
    assert torch.isfinite(far).all()


def test_db_gradient():
    loss = DistributionBalancedLoss(class_counts=COUNTS, num_train=NUM_TRAIN)
    z = torch.tensor(Z, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: loss(t, torch.tensor(Y)), (z,))


@pytest.mark.parametrize("make,message", [
    (lambda: DistributionBalancedLoss(class_counts=COUNTS, num_train=NUM_TRAIN, neg_scale=0),
     "neg_scale"),
    (lambda: DistributionBalancedLoss(class_counts=COUNTS, num_train=NUM_TRAIN, beta=-1),
     "beta"),
    (lambda: DistributionBalancedLoss(class_counts=COUNTS, num_train=NUM_TRAIN, alpha=-0.1),
     "alpha"),
    (lambda: DistributionBalancedLoss(class_counts=COUNTS, num_train=NUM_TRAIN, focal="yes"),
     "focal"),
    (lambda: DistributionBalancedLoss(class_counts=COUNTS, num_train=NUM_TRAIN,
                                      sampling="random"), "sampling"),
    (lambda: DistributionBalancedLoss(class_counts=COUNTS), "num_train"),
    (lambda: DistributionBalancedLoss(num_train=10), "class_counts"),
    (lambda: DistributionBalancedLoss(class_counts=[10, 3], num_train=10), "class 0"),
    (lambda: DistributionBalancedLoss(class_counts=[12, 3], num_train=10), "class 0"),
    (lambda: DistributionBalancedLoss(class_counts=[4, 0], num_train=10), "class 1"),
    (lambda: DistributionBalancedLoss(labels=LABELS, class_counts=[5, 2, 1]), "class_counts"),
    (lambda: DistributionBalancedLoss(labels=LABELS, num_train=7), "num_train"),
    (lambda: MultiLabelClassBalancedLoss(class_counts=COUNTS, mode="average"), "mode"),
    (lambda: MultiLabelClassBalancedLoss(class_counts=COUNTS, beta=1.0), "beta"),
    (lambda: MultiLabelClassBalancedLoss(), "class_counts"),
    (lambda: MultiLabelFocalLoss(gamma=-1), "gamma"),
    (lambda: MultiLabelFocalLoss(balance_param=0), "balance_param"),
])
def test_parameter_errors_name_the_parameter(make, message):
    with pytest.raises(ConfigError) as err:
        make()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_db_without_bias_needs_no_training_size():
    # a class in every image is fine when the bias is off
    loss = DistributionBalancedLoss(class_counts=[10, 3], init_bias=0.0)
    assert torch.isfinite(loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])))


def test_shape_errors():
    loss = DistributionBalancedLoss(class_counts=COUNTS, num_train=NUM_TRAIN)
    with pytest.raises(ValueError, match="shape"):
        loss(torch.zeros(2, C), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ConfigError, match="classes"):
        loss(torch.zeros(2, C + 1), torch.zeros(2, C + 1))
    with pytest.raises(DataError, match="0 and 1"):
        DistributionBalancedLoss(labels=[[1, 0.5]])


# ------------------------------------------------------------------------------ the sampler
def official_streams(labels, k, reduce, epochs, seed):
    """sampler.py:228-291 (RandomCycleIter, class_aware_sample_generator, ClassAwareSampler)
    with ``random.Random(seed)`` for the global ``random`` the code re-seeds to 0."""
    rnd = random.Random(seed)

    class RandomCycleIter:
        def __init__(self, data_list):
            self.data_list, self.i = list(data_list), len(data_list) - 1

        def __iter__(self):
            return self

        def __next__(self):
            self.i += 1
            if self.i == len(self.data_list):
                self.i = 0
                rnd.shuffle(self.data_list)
            return self.data_list[self.i]

    def generator(cls_iter, data_iter_list, n, num_samples_cls):
        i = j = 0
        while i < n:
            if j >= num_samples_cls:
                j = 0
            if j == 0:
                temp_tuple = next(zip(*[data_iter_list[next(cls_iter)]] * num_samples_cls))
            yield temp_tuple[j]
            i += 1
            j += 1

    cls_data_list = [[i for i in range(len(labels)) if labels[i][c] == 1]
                     for c in range(len(labels[0]))]
    class_iter = RandomCycleIter(range(len(cls_data_list)))
    data_iter_list = [RandomCycleIter(x) for x in cls_data_list]
    num_samples = int(max(len(x) for x in cls_data_list) * len(cls_data_list) / reduce)
    return [list(generator(class_iter, data_iter_list, num_samples, k)) for _ in range(epochs)]


def ml_labels(n=60, c=7, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < np.geomspace(0.6, 0.03, c)).astype(np.int64)
    labels[labels.sum(1) == 0, 0] = 1
    labels[np.arange(c), np.arange(c)] = 1  # every class has an image
    return labels


@pytest.mark.parametrize("k,reduce,seed", [(3, 4, 0), (1, 1, 5), (2, 3, 1), (4, 2.5, 9)])
def test_sampler_is_the_official_stream(k, reduce, seed):
    labels = ml_labels(seed=seed)
    expected = official_streams(labels, k, reduce, 4, seed)
    sampler = ClassAwareMLSampler(labels, samples_per_class=k, reduce=reduce, seed=seed)
    assert len(sampler) == len(expected[0]) == int(labels.sum(0).max() * 7 / reduce)
    for epoch, stream in enumerate(expected):
        sampler.set_epoch(epoch)
        assert sampler.indices().tolist() == stream


@pytest.mark.parametrize("images,classes,largest,length", [
    (1142, 20, 775, 3875),     # VOC-MLT: person has 775 images; 775 * 20 / 4
    (1909, 80, 1128, 22560),   # COCO-MLT: person has 1128 images; 1128 * 80 / 4
])
def test_sampler_epoch_length_of_the_official_sets(images, classes, largest, length):
    labels = np.zeros((images, classes), dtype=np.int64)
    labels[:largest, 0] = 1
    labels[np.arange(images), 1 + np.arange(images) % (classes - 1)] = 1  # all far below
    assert len(ClassAwareMLSampler(labels)) == length


def test_sampler_class_turns_and_coverage():
    labels = ml_labels()
    k, C_ = 3, labels.shape[1]
    sampler = ClassAwareMLSampler(labels, samples_per_class=k, reduce=1)
    stream = sampler.indices().numpy()
    turns = len(stream) // k
    counts = labels.sum(0)
    owners = []
    for t in range(turns):  # each turn's k images share a class
        group = stream[t * k:(t + 1) * k]
        common = np.flatnonzero(labels[group].all(axis=0))
        assert common.size >= 1
        owners.append(common)
    # every pass of C turns visits every class once: check with the class each turn must be
    for p in range(turns // C_):
        covered = set()
        for t in range(p * C_, (p + 1) * C_):
            covered.update(owners[t].tolist())
        assert covered == set(range(C_))
    # every image of the rarest class is drawn
    rare = int(np.argmin(counts))
    rare_images = np.flatnonzero(labels[:, rare])
    assert set(stream.tolist()) >= set(rare_images.tolist())


def test_sampler_deterministic_resume_and_state():
    labels = ml_labels()
    a = ClassAwareMLSampler(labels, seed=3)
    streams = []
    for epoch in range(4):
        a.set_epoch(epoch)
        streams.append(a.indices().tolist())
    assert streams[0] != streams[1]  # the cycles go on across epochs
    jumped = ClassAwareMLSampler(labels, seed=3)
    jumped.set_epoch(3)  # replays epochs 0-2
    assert jumped.indices().tolist() == streams[3]
    jumped.set_epoch(1)  # back in time: replays from the start
    assert jumped.indices().tolist() == streams[1]
    a.set_epoch(2)
    saved = a.state_dict()
    buffer = io.BytesIO()
    torch.save(saved, buffer)  # as a checkpoint holds it
    buffer.seek(0)
    restored = ClassAwareMLSampler(labels, seed=3)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.indices().tolist() == streams[2]
    restored.set_epoch(3)
    assert restored.indices().tolist() == streams[3]
    other = ClassAwareMLSampler(labels, seed=4)
    assert other.indices().tolist() != streams[0]
    state_before = random.getstate()
    ClassAwareMLSampler(labels, seed=3).indices()
    assert random.getstate() == state_before  # the global RNG is not touched
    with pytest.raises(DataError, match="other training labels"):
        ClassAwareMLSampler(ml_labels(seed=1), seed=3).load_state_dict(saved)
    with pytest.raises(ConfigError, match="^seed is 4 but"):
        other.load_state_dict(saved)
    with pytest.raises(ConfigError, match="^samples_per_class is 2 but"):
        ClassAwareMLSampler(labels, seed=3, samples_per_class=2).load_state_dict(saved)


def test_sampler_distributed_slices():
    labels = ml_labels()
    full = ClassAwareMLSampler(labels, reduce=3, seed=2).indices().numpy()
    parts = [ClassAwareMLSampler(labels, reduce=3, seed=2, rank=r, world_size=4).indices()
             for r in range(4)]
    assert len({len(p) for p in parts}) == 1
    padded = np.resize(full, len(parts[0]) * 4)
    assert torch.equal(torch.stack(parts, 1).reshape(-1), torch.from_numpy(padded))


@pytest.mark.parametrize("labels,kwargs,error,message", [
    (np.array([[1, 0], [1, 0]]), {}, DataError, "label 1"),
    (np.array([[1, 2]]), {}, DataError, "0 and 1"),
    (np.array([1, 0, 1]), {}, ConfigError, "class ids"),
    (np.eye(3), {"samples_per_class": 0}, ConfigError, "samples_per_class"),
    (np.eye(3), {"reduce": 0}, ConfigError, "reduce"),
    (np.eye(3), {"reduce": 10}, ConfigError, "reduce"),
    (np.eye(3), {"seed": -1}, ConfigError, "seed"),
])
def test_sampler_errors(labels, kwargs, error, message):
    with pytest.raises(error) as err:
        ClassAwareMLSampler(labels, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_built_from_a_context():
    """The trainer passes a Context; a multi-hot ``labels`` field is what both read."""
    from lttoolbox.api import Context
    ctx = Context(labels=LABELS, num_classes=3, seed=7)
    db = DistributionBalancedLoss(context=ctx)
    assert db.counts.tolist() == [5, 2, 2] and db.num_train == 6
    y = torch.tensor(LABELS, dtype=torch.float32)
    assert torch.equal(db(y, y, reduction="none"),
                       DistributionBalancedLoss(labels=LABELS)(y, y, reduction="none"))
    assert torch.equal(ClassAwareMLSampler(context=ctx).indices(),
                       ClassAwareMLSampler(LABELS, seed=7).indices())
    with pytest.raises(DataError, match="3 columns for 4 classes"):
        DistributionBalancedLoss(context=Context(labels=LABELS, num_classes=4))


# ------------------------------------------------------------ the run's sampler sets the weights
def np_weights(y, ratio, alpha=0.1, beta=10.0, mu=0.3):
    return alpha + 1 / (1 + np.exp(-beta * (ratio - mu)))


def test_db_reads_the_frequencies_of_the_run_sampler():
    """In a run the re-balancing follows the sampler the recipe names: class-aware sampling gives
    r = (1/n_i) / sum_j y_j/n_j, shuffling r = 1 (numpy by hand below)."""
    from lttoolbox.api import Context
    from lttoolbox.samplers import InstanceSampler
    labels = ml_labels()
    n = labels.sum(0)
    y = torch.tensor(labels[:7])
    aware = DistributionBalancedLoss(context=Context(
        labels=labels, sampler=ClassAwareMLSampler(labels, seed=0)))
    ratio = (1 / n)[None] / (labels[:7] / n).sum(1, keepdims=True)
    np.testing.assert_allclose(aware.weights(y).numpy(), np_weights(labels[:7], ratio),
                               rtol=1e-12)
    shuffled = DistributionBalancedLoss(context=Context(
        labels=labels, sampler=InstanceSampler(labels, seed=0)))
    np.testing.assert_allclose(shuffled.weights(y).numpy(),
                               np_weights(labels[:7], np.ones_like(ratio)), rtol=1e-12)
    assert "the run's sampler" in repr(aware)


def test_db_follows_a_deferred_sampler_epoch_by_epoch():
    from lttoolbox.api import Context
    labels = ml_labels()
    n = labels.sum(0)
    y = torch.tensor(labels[:5])
    sampler = ClassAwareMLSampler(labels, seed=0, start_epoch=2)
    loss = DistributionBalancedLoss(context=Context(labels=labels, sampler=sampler))
    aware = np_weights(labels[:5], (1 / n)[None] / (labels[:5] / n).sum(1, keepdims=True))
    for epoch, expected in ((0, np_weights(labels[:5], np.ones((5, n.size)))), (1, None),
                            (2, aware), (3, aware)):
        for part in (sampler, loss):  # the trainer's order: the sampler first
            part.before_epoch(epoch)
        if expected is not None:
            np.testing.assert_allclose(loss.weights(y).numpy(), expected, rtol=1e-12)


def test_db_refuses_sampling_in_a_run():
    from lttoolbox.api import Context
    labels = ml_labels()
    with pytest.raises(ConfigError) as err:
        DistributionBalancedLoss(sampling="instance", context=Context(
            labels=labels, sampler=ClassAwareMLSampler(labels)))
    assert err.value.key == "sampling" and "run's sampler" in str(err.value)
