"""Tests of the losses family: the contract every entry keeps, and each loss against its formula.

Expected values are computed here independently (by hand or with a few lines of numpy), never by
calling the code under test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lttoolbox.losses as losses_pkg
from lttoolbox.batch import Batch
from lttoolbox.errors import ConfigError
from lttoolbox.losses import (LTLoss, ClassBalancedLoss, LDAMLoss, class_weights, mixed_loss)
from lttoolbox.registry import LOSSES, recipe_parameters

COUNTS = [40, 20, 5, 1]
C = len(COUNTS)
#: CB weights for CIFAR-10-LT ratio 100, beta 0.9999.
CIFAR10_R100_CB = [0.0506, 0.0769, 0.1211, 0.1950, 0.3188, 0.5246, 0.8683, 1.4426, 2.4092, 3.9927]

#: Configurations the contract and formula tests need beyond each entry's defaults: other
#: parameter values, and each cb base.
VARIANTS = [
    {"name": "ce"},
    {"name": "ce", "label_smoothing": 0.1},
    {"name": "cs_ce", "gamma": 0.5},
    {"name": "focal", "gamma": 2.0},
    {"name": "sigmoid_focal", "gamma": 2.0},
    {"name": "cb", "beta": 0.99, "base": "ce"},
    {"name": "cb", "beta": 0.99, "base": "focal", "gamma": 1.0},
    {"name": "cb", "beta": 0.99, "base": "sigmoid"},
    {"name": "cb", "beta": 0.99, "base": "sigmoid_focal", "gamma": 0.5},
    {"name": "ldam", "max_m": 0.5, "s": 30.0},
    {"name": "am_softmax", "m": 0.35, "s": 30.0},
    {"name": "balanced_softmax", "tau": 1.0},
    {"name": "cdt", "gamma": 0.3},
    {"name": "las", "smooth_head": 0.4, "smooth_tail": 0.1},
]
#: Every registered loss from its defaults, read from the registry (a new entry is covered as
#: soon as it is registered), then the variants.
#: Losses on multi-hot targets only (``single_label = False``) are checked in
#: tests/test_multilabel.py.
CONFIGS = [{"name": name} for name in LOSSES.names() if LOSSES.get(name).single_label]
CONFIGS += [cfg for cfg in VARIANTS if cfg not in CONFIGS]
IDS = [("-".join(f"{v}" for v in cfg.values())) for cfg in CONFIGS]
#: The entries whose batch mean is a weighted mean of their per-sample values (not
#: ``batch_weighted``, whose mean weighs samples by the batch: tests/test_absgd.py).
PER_SAMPLE_IDS = [i for cfg, i in zip(CONFIGS, IDS)
                  if not LOSSES.get(cfg["name"]).batch_weighted]
PER_SAMPLE = [cfg for cfg in CONFIGS if not LOSSES.get(cfg["name"]).batch_weighted]
SIGMOID_FORMS = {("sigmoid_focal", None), ("cb", "sigmoid"), ("cb", "sigmoid_focal")}


def build(cfg, counts=COUNTS, **extra):
    return LOSSES.build({**cfg, **extra}, class_counts=counts, num_classes=len(counts),
                        total_epochs=10, seed=0, labels=np.zeros(3, dtype=np.int64))


def drw_config(cfg, start):
    """The entry with deferred weights switching on at ``start`` (a loss that wraps another
    defers the wrapped loss's weights)."""
    if LOSSES.get(cfg["name"]).batch_weighted and default_of(cfg["name"], "loss") is not None:
        inner = cfg.get("loss", default_of(cfg["name"], "loss"))
        return {**cfg, "loss": drw_config({"name": inner} if isinstance(inner, str) else inner,
                                          start)}
    if not any(p.name == "weights" for p in recipe_parameters(LOSSES, cfg["name"])):
        return {**cfg, "weights_start_epoch": start}
    return {**cfg, "weights": {"name": "effective_number", "beta": 0.99},
            "weights_start_epoch": start}


def batch_normalized(cfg):
    return (cfg["name"], cfg.get("base", default_of(cfg["name"], "base"))) in SIGMOID_FORMS


def default_of(name, parameter):
    """The default of an entry's parameter (None where it has no such parameter)."""
    found = [p.default for p in recipe_parameters(LOSSES, name) if p.name == parameter]
    return found[0] if found else None


def data(batch=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, C, generator=g) * 2).to(dtype)
    target = torch.tensor([0, 1, 2, 3, 3, 0][:batch])
    return logits, target


# ------------------------------------------------------------------------ numpy references
def np_log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def np_ce(z, y):
    return -np_log_softmax(z)[np.arange(len(y)), y]


def np_effective_weights(counts, beta):
    n = np.asarray(counts, dtype=np.float64)
    w = (1 - beta) / (1 - beta ** n)
    return w / w.sum() * len(n)


def np_sigmoid_focal(z, y, gamma, alpha=None):
    """Explicit loop over samples and classes; returns each sample's sum over classes."""
    z = np.asarray(z, dtype=np.float64)
    out = np.zeros(len(y))
    for i in range(z.shape[0]):
        for c in range(z.shape[1]):
            p = 1 / (1 + math.exp(-z[i, c]))
            pt = p if c == y[i] else 1 - p
            a = 1.0 if alpha is None else (alpha if c == y[i] else 1 - alpha)
            out[i] += -a * (1 - pt) ** gamma * math.log(pt)
    return out


# ------------------------------------------------------------------------ registry coverage
def test_every_registered_loss_builds_from_its_defaults_and_is_exported():
    for name in LOSSES.names():
        cls = LOSSES.get(name)
        assert getattr(losses_pkg, cls.__name__) is cls and cls.registry_name == name
        assert issubclass(cls, LTLoss)
        if cls.single_label:
            assert isinstance(build({"name": name}), cls)
        else:  # built on multi-hot training labels (its own tests: tests/test_multilabel*.py)
            labels = np.eye(C)[np.repeat(np.arange(C), COUNTS)]
            assert isinstance(LOSSES.build({"name": name}, labels=labels, num_classes=C), cls)
    from lttoolbox.losses import mixed_loss as exported
    assert exported is mixed_loss


# ------------------------------------------------------------------------ contract
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_build_and_reductions(cfg):
    loss = build(cfg)
    assert isinstance(loss, LTLoss) and loss.registry_name == cfg["name"]
    logits, target = data()
    per = loss(logits, target, reduction="none")
    assert per.shape == (6,) and per.dtype == torch.float32 and torch.isfinite(per).all()
    total = loss(logits, target, reduction="sum")
    if not loss.batch_weighted:
        assert torch.allclose(total, per.sum())
    mean = loss(logits, target)
    assert mean.dim() == 0
    assert torch.allclose(mean, total / loss.normalizer(target))
    with pytest.raises(ValueError, match="reduction"):
        loss(logits, target, reduction="avg")


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_per_sample_values_do_not_depend_on_the_batch(cfg):
    loss = build(drw_config(cfg, 0))
    logits, target = data()
    per = loss(logits, target, reduction="none")
    alone = torch.stack([loss(logits[i:i + 1], target[i:i + 1], reduction="none")[0]
                         for i in range(6)])
    assert torch.allclose(per, alone, atol=1e-6)
    assert not torch.allclose(per, per[0].expand(6))  # the values do differ per sample


@pytest.mark.parametrize("cfg", PER_SAMPLE, ids=PER_SAMPLE_IDS)
def test_drw_switches_weights_on_at_the_start_epoch(cfg):
    loss = build(drw_config(cfg, 3))
    beta = cfg.get("beta", default_of("cb", "beta")) if cfg["name"] == "cb" else 0.99
    if cfg["name"] == "cs_ce":
        gamma = cfg.get("gamma", default_of("cs_ce", "gamma"))
        expected_w = (min(COUNTS) / np.asarray(COUNTS, float)) ** gamma
    else:
        expected_w = np_effective_weights(COUNTS, beta)
    logits, target = data()
    plain = loss.per_sample(logits, target).detach().numpy()
    for epoch in range(5):
        loss.set_epoch(epoch)
        per = loss(logits, target, reduction="none").detach().numpy()
        w = np.ones(C) if epoch < 3 else expected_w
        np.testing.assert_allclose(per, w[target.numpy()] * plain, rtol=1e-5)
        denom = len(target) if batch_normalized(cfg) else w[target.numpy()].sum()
        np.testing.assert_allclose(float(loss(logits, target)), per.sum() / denom, rtol=1e-5)
        assert loss.weights_active == (epoch >= 3)


@pytest.mark.parametrize("cfg", PER_SAMPLE, ids=PER_SAMPLE_IDS)
def test_mixed_loss_with_one_lambda_is_the_mixup_combination(cfg):
    loss = build(drw_config(cfg, 0))
    logits, y_a = data()
    y_b = torch.tensor([3, 2, 1, 0, 1, 2])
    lam = 0.3
    batch = Batch(torch.zeros(6, 1), y_a, y_b, torch.full((6,), lam))
    expected = lam * loss(logits, y_a) + (1 - lam) * loss(logits, y_b)
    assert torch.allclose(mixed_loss(loss, logits, batch), expected, atol=1e-6)
    plain = Batch.plain(torch.zeros(6, 1), y_a)
    assert torch.equal(mixed_loss(loss, logits, plain), loss(logits, y_a))


def test_mixed_loss_with_per_sample_lambda():
    loss = build({"name": "ce", "weights": "inverse"})
    logits, y_a = data()
    y_b = torch.tensor([3, 2, 1, 0, 1, 2])
    lam = torch.tensor([0.0, 0.2, 0.5, 0.7, 1.0, 0.4])
    w = 1 / np.asarray(COUNTS, float)
    w = w / w.sum() * C
    z, a, b, lam_np = logits.numpy(), y_a.numpy(), y_b.numpy(), lam.numpy()
    expected = ((lam_np * w[a] * np_ce(z, a)).sum() / w[a].sum()
                + ((1 - lam_np) * w[b] * np_ce(z, b)).sum() / w[b].sum())
    got = mixed_loss(loss, logits, Batch(torch.zeros(6, 1), y_a, y_b, lam))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_a_split_batch_with_global_normalizers_gives_the_whole_batch_gradient():
    """Two halves of a batch, each normalised by the global normalizers over 2 (what
    ``global_normalizer`` gives each of two processes), averaged as DDP averages gradients:
    the gradient of the whole batch's weighted mean, for a plain and a mixed batch. Each half's
    own normalizers (the former behaviour) give another gradient."""
    loss = build({"name": "ce", "weights": "inverse"})
    logits, y_a = data()
    y_b = torch.tensor([3, 2, 1, 0, 1, 2])
    lam = torch.tensor([0.0, 0.2, 0.5, 0.7, 1.0, 0.4])
    halves = (slice(0, 3), slice(3, 6))
    for mixed in (False, True):
        def batch(part, mixed=mixed):
            return (Batch(torch.zeros(3, 1), y_a[part], y_b[part], lam[part]) if mixed
                    else Batch.plain(torch.zeros(3, 1), y_a[part]))
        whole = (Batch(torch.zeros(6, 1), y_a, y_b, lam) if mixed
                 else Batch.plain(torch.zeros(6, 1), y_a))
        z = logits.clone().requires_grad_(True)
        mixed_loss(loss, z, whole).backward()
        expected = z.grad.clone()
        # the global normalizers, as the all-reduce of the halves' would give them
        norms = torch.stack([loss.normalizer(y_a), loss.normalizer(y_b)])[:1 + mixed]
        for normalize, same in ((lambda n, norms=norms: norms / 2, True), (None, False)):
            z = logits.clone().requires_grad_(True)
            total = sum(mixed_loss(loss, z[part], batch(part), normalize) for part in halves)
            (total / 2).backward()  # DDP: the mean of the two processes' gradients
            assert torch.allclose(z.grad, expected, atol=1e-6) is same, (mixed, same)
    # by hand, the plain batch: sum w l / sum w over all six samples
    w = 1 / np.asarray(COUNTS, float)
    w = w / w.sum() * C
    a = y_a.numpy()
    halves_sum = sum(float(mixed_loss(loss, logits[p], Batch.plain(torch.zeros(3, 1), y_a[p]),
                                      lambda n: torch.tensor([w[a].sum() / 2]))) for p in halves)
    assert halves_sum / 2 == pytest.approx((w[a] * np_ce(logits.numpy(), a)).sum() / w[a].sum(),
                                           rel=1e-5)


def test_one_process_needs_no_global_normalizer():
    from lttoolbox.engine.distributed import World, global_normalizer
    assert global_normalizer(World()) is None
    assert global_normalizer(World(0, 2)) is not None


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_gradients_match_finite_differences(cfg):
    loss = build(drw_config(cfg, 0))
    if loss.stops_gradient:  # its own test checks the gradient with those terms held fixed
        pytest.skip(f"{cfg['name']} holds terms of its value constant for the gradient")
    logits, target = data(batch=3, dtype=torch.float64)
    if cfg["name"] in ("ldam", "am_softmax"):
        logits = torch.tanh(logits)  # cosines, as from the cosine head
    logits.requires_grad_(True)
    assert loss(logits, target).dtype == torch.float64  # float64 stays float64
    if not loss.batch_weighted:  # its batch weights are constants for the gradient
        assert torch.autograd.gradcheck(lambda z: loss(z, target), (logits,))
    assert torch.autograd.gradcheck(lambda z: loss(z, target, reduction="none"), (logits,))


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_extreme_logits_give_finite_loss_and_gradients(cfg):
    loss = build(drw_config(cfg, 0))
    logits = torch.tensor([[1e4, -1e4, 0.0, -1e4],   # confident and right
                           [-1e4, 1e4, -1e4, 0.0],   # confident and right
                           [1e4, -1e4, -1e4, 0.0],   # confident and wrong (target 2)
                           [-1e4, -1e4, -1e4, -1e4]], requires_grad=True)
    target = torch.tensor([0, 1, 2, 3])
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    assert torch.isfinite(loss(logits, target, reduction="none")).all()


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_autocast_bf16_logits_give_a_float32_loss(cfg):
    loss = build(cfg)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    layer = torch.nn.Linear(5, C)
    target = data()[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        value = loss(logits, target)
    assert logits.dtype == torch.bfloat16 and value.dtype == torch.float32
    assert torch.allclose(value, loss(logits.float(), target))
    value.backward()
    assert torch.isfinite(layer.weight.grad).all()


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_buffers_follow_the_module_and_stay_out_of_the_state_dict(cfg):
    loss = build(drw_config(cfg, 0))
    # a batch-weighted loss checkpoints its weights' moving average, a learned one what it learns
    if not loss.batch_weighted and not loss.learned:
        assert loss.state_dict() == {}  # derived from the recipe, so nothing to checkpoint
    assert len(list(loss.buffers())) >= 1  # the class weights at least
    logits, target = data()
    expected = loss(logits, target)
    loss.to(torch.float64)
    assert all(b.dtype == torch.float64 for b in loss.buffers())
    assert torch.allclose(loss(logits.double(), target).float(), expected, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_cuda_matches_cpu(cfg):
    loss = build(drw_config(cfg, 0))
    logits, target = data()
    expected = loss(logits, target)
    cuda = loss.to("cuda")
    assert all(b.is_cuda for b in cuda.buffers())
    got = cuda(logits.cuda(), target.cuda())
    assert got.is_cuda and torch.allclose(got.cpu(), expected, atol=1e-5)
    with torch.autocast("cuda", dtype=torch.float16):
        half = cuda(logits.cuda().half(), target.cuda())
    assert half.dtype == torch.float32 and torch.isfinite(half)


# ------------------------------------------------------------------------ bad parameters
BAD = [
    ({"name": "ce", "label_smoothing": 1.0}, "label_smoothing"),
    ({"name": "ce", "label_smoothing": -0.1}, "label_smoothing"),
    ({"name": "cs_ce", "gamma": -1.0}, "gamma"),
    ({"name": "focal", "gamma": -0.5}, "gamma"),
    ({"name": "focal", "gamma": "2"}, "gamma"),
    ({"name": "sigmoid_focal", "gamma": -1.0}, "gamma"),
    ({"name": "sigmoid_focal", "alpha": 1.5}, "alpha"),
    ({"name": "cb", "beta": 1.0}, "beta"),
    ({"name": "cb", "beta": -0.1}, "beta"),
    ({"name": "cb", "base": "softmax"}, "base"),
    ({"name": "cb", "base": "ce", "gamma": 1.0}, "gamma"),
    ({"name": "cb", "base": "focal", "gamma": -1.0}, "gamma"),
    ({"name": "cb", "weights": "inverse"}, "weights"),
    ({"name": "ldam", "max_m": 0.0}, "max_m"),
    ({"name": "ldam", "s": 0}, "s"),
    ({"name": "am_softmax", "m": -0.1}, "m"),
    ({"name": "am_softmax", "s": -1.0}, "s"),
    ({"name": "balanced_softmax", "tau": -1.0}, "tau"),
    ({"name": "cdt", "gamma": -0.2}, "gamma"),
    ({"name": "las", "smooth_head": 1.0}, "smooth_head"),
    ({"name": "las", "smooth_tail": -0.1}, "smooth_tail"),
    ({"name": "las", "shape": "round"}, "shape"),
    ({"name": "ce", "weights": {"name": "effective_number", "beta": 1.0}}, "weights.beta"),
    ({"name": "ce", "weights": {"name": "effective_number", "beta": -0.5}}, "weights.beta"),
    ({"name": "ce", "weights": {"name": "inverse", "beta": 0.9}}, "weights.beta"),
    ({"name": "ce", "weights": {"name": "efective_number"}}, "effective_number"),
    ({"name": "ce", "weights": [1, 2]}, "weights"),
    ({"name": "focal", "weights": {"name": "cost_sensitive", "gamma": -1}}, "weights.gamma"),
    ({"name": "ce", "weights_start_epoch": 160}, "weights_start_epoch"),
    ({"name": "ce", "weights": "inverse", "weights_start_epoch": -1}, "weights_start_epoch"),
    ({"name": "ce", "weights": "inverse", "weights_start_epoch": 2.5}, "weights_start_epoch"),
    ({"name": "focal", "gama": 2.0}, "gama"),
]


@pytest.mark.parametrize("cfg,word", BAD, ids=[f"{c['name']}-{w}-{i}" for i, (c, w) in
                                               enumerate(BAD)])
def test_bad_parameters_fail_with_a_message_naming_them(cfg, word):
    with pytest.raises(ConfigError, match=word) as err:
        build(cfg)
    assert str(err.value).startswith("loss")


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_bad_class_counts(cfg):
    with pytest.raises(ConfigError, match=r"class_counts: class 2 has 0 samples"):
        build(cfg, counts=[4, 3, 0, 1])
    with pytest.raises(ConfigError, match="num_classes"):
        LOSSES.build(cfg, class_counts=[4, 3, 1], num_classes=4)
    loss = build(cfg)
    with pytest.raises(ConfigError, match="logits have 5 classes"):
        loss(torch.zeros(2, 5), torch.tensor([0, 1]))


@pytest.mark.parametrize("name", ["cs_ce", "cb", "ldam", "balanced_softmax", "cdt", "las"])
def test_losses_that_need_counts_say_so(name):
    with pytest.raises(ConfigError, match="class_counts is required"):
        LOSSES.build({"name": name}, num_classes=4)


def test_weights_need_counts_but_plain_losses_do_not():
    with pytest.raises(ConfigError, match="class_counts is required"):
        LOSSES.build({"name": "focal", "weights": "inverse"}, num_classes=4)
    loss = LOSSES.build({"name": "focal"}, num_classes=4)
    assert torch.isfinite(loss(torch.zeros(2, 4), torch.tensor([0, 3])))


def test_unreachable_drw_epoch_warns():
    with pytest.warns(UserWarning, match="never"):
        LOSSES.build({"name": "ce", "weights": "inverse", "weights_start_epoch": 160},
                     class_counts=COUNTS, total_epochs=100)


# ------------------------------------------------------------------------ weight schemes
def test_weight_schemes_against_numpy():
    n = np.asarray(COUNTS, float)
    inv = (1 / n) / (1 / n).sum() * C
    sqrt_inv = (n ** -0.5) / (n ** -0.5).sum() * C
    np.testing.assert_allclose(class_weights("inverse", COUNTS), inv, rtol=1e-6)
    np.testing.assert_allclose(class_weights({"name": "sqrt_inverse"}, COUNTS), sqrt_inv, rtol=1e-6)
    np.testing.assert_allclose(class_weights({"name": "effective_number", "beta": 0.9}, COUNTS),
                               np_effective_weights(COUNTS, 0.9), rtol=1e-6)
    np.testing.assert_allclose(class_weights({"name": "cost_sensitive", "gamma": 0.5}, COUNTS),
                               [math.sqrt(1 / 40), math.sqrt(1 / 20), math.sqrt(1 / 5), 1.0],
                               rtol=1e-6)
    for spec in ("inverse", "sqrt_inverse", {"name": "effective_number", "beta": 0.99}):
        assert float(class_weights(spec, COUNTS).sum()) == pytest.approx(C)


def test_effective_number_limits():
    # beta = 0: every sample counts once, so no re-weighting; beta -> 1: inverse frequency.
    np.testing.assert_allclose(class_weights({"name": "effective_number", "beta": 0.0}, COUNTS),
                               np.ones(C))
    near_one = class_weights({"name": "effective_number", "beta": 1 - 1e-12}, COUNTS)
    np.testing.assert_allclose(near_one, class_weights("inverse", COUNTS), rtol=1e-4)


def test_cb_weights_for_cifar10_ratio_100_match_hand_computed_values():
    counts = [int(5000 * 0.01 ** (i / 9)) for i in range(10)]
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    loss = ClassBalancedLoss(beta=0.9999, base="sigmoid_focal", gamma=1.0, class_counts=counts)
    np.testing.assert_allclose(loss.class_weights.numpy(), CIFAR10_R100_CB, atol=5e-5)
    drw = LOSSES.build({"name": "ldam", "weights": {"name": "effective_number", "beta": 0.9999}},
                       class_counts=counts)
    np.testing.assert_allclose(drw.class_weights.numpy(), CIFAR10_R100_CB, atol=5e-5)


# ------------------------------------------------------------------------ formulas
Z = np.array([[2.0, -1.0, 0.5, 0.0],
              [0.1, 0.2, -0.3, 1.5],
              [-2.0, 3.0, 1.0, -0.5]])
Y = np.array([0, 3, 2])


def tz():
    return torch.tensor(Z, dtype=torch.float32), torch.tensor(Y)


def test_ce_and_label_smoothing_formula():
    z, y = tz()
    ce = build({"name": "ce"})
    assert float(ce(z, y)) == pytest.approx(np_ce(Z, Y).mean(), rel=1e-6)
    eps = 0.2
    logp = np_log_softmax(Z)
    q = np.full_like(Z, eps / C)
    q[np.arange(3), Y] += 1 - eps
    smoothed = build({"name": "ce", "label_smoothing": eps})
    np.testing.assert_allclose(smoothed(z, y, reduction="none").numpy(), -(q * logp).sum(1),
                               rtol=1e-6)


def test_weighted_ce_follows_pytorch_weighted_mean():
    z, y = tz()
    w = np_effective_weights(COUNTS, 0.99)
    expected = (w[Y] * np_ce(Z, Y)).sum() / w[Y].sum()
    loss = build({"name": "ce", "weights": {"name": "effective_number", "beta": 0.99}})
    assert float(loss(z, y)) == pytest.approx(expected, rel=1e-6)
    reference = torch.nn.functional.cross_entropy(z, y, weight=torch.tensor(w, dtype=torch.float32))
    assert float(loss(z, y)) == pytest.approx(float(reference), rel=1e-6)


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_cost_sensitive_ce_formula(gamma):
    z, y = tz()
    w = (1 / np.asarray(COUNTS, float)) ** gamma  # n_min = 1
    loss = build({"name": "cs_ce", "gamma": gamma})
    np.testing.assert_allclose(loss(z, y, reduction="none").numpy(), w[Y] * np_ce(Z, Y), rtol=1e-6)
    assert float(loss(z, y)) == pytest.approx((w[Y] * np_ce(Z, Y)).sum() / w[Y].sum(), rel=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_softmax_focal_formula(gamma):
    z, y = tz()
    p = np.exp(np_log_softmax(Z))
    pt = p[np.arange(3), Y]
    expected = (1 - pt) ** gamma * -np.log(pt)
    loss = build({"name": "focal", "gamma": gamma})
    np.testing.assert_allclose(loss(z, y, reduction="none").numpy(), expected, rtol=1e-5)
    assert float(loss(z, y)) == pytest.approx(expected.mean(), rel=1e-5)
    alpha = build({"name": "focal", "gamma": gamma, "weights": "inverse"})
    w = (1 / np.asarray(COUNTS, float))
    w = w / w.sum() * C
    assert float(alpha(z, y)) == pytest.approx((w[Y] * expected).sum() / w[Y].sum(), rel=1e-5)


def test_softmax_focal_modulating_factor_at_the_extremes():
    loss = build({"name": "focal", "gamma": 2.0})
    # p_t ~ 0: the factor is ~1, so the loss equals -log p_t = 1e4 + log 3.
    z = torch.tensor([[-1e4, 0.0, 0.0, 0.0]])
    assert float(loss(z, torch.tensor([0]))) == pytest.approx(1e4 + math.log(3), rel=1e-6)
    # p_t = 1 exactly: loss 0 and, even for gamma < 1, a finite (zero) gradient.
    half = build({"name": "focal", "gamma": 0.5})
    z = torch.tensor([[1e4, 0.0, 0.0, 0.0]], requires_grad=True)
    value = half(z, torch.tensor([0]))
    value.backward()
    assert float(value.detach()) == 0.0 and torch.isfinite(z.grad).all()
    assert float(z.grad.abs().max()) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("gamma,alpha", [(0.0, None), (2.0, None), (1.0, 0.25)])
def test_sigmoid_focal_against_explicit_loop(gamma, alpha):
    z, y = tz()
    per = np_sigmoid_focal(Z, Y, gamma, alpha)
    loss = build({"name": "sigmoid_focal", "gamma": gamma, "alpha": alpha})
    np.testing.assert_allclose(loss(z, y, reduction="none").numpy(), per, rtol=1e-5)
    assert float(loss(z, y)) == pytest.approx(per.sum() / 3, rel=1e-5)
    weighted = build({"name": "sigmoid_focal", "gamma": gamma, "alpha": alpha,
                      "weights": "inverse"})
    w = (1 / np.asarray(COUNTS, float))
    w = w / w.sum() * C
    assert float(weighted(z, y)) == pytest.approx((w[Y] * per).sum() / 3, rel=1e-5)  # / batch


def test_sigmoid_focal_modulating_factor_does_not_underflow():
    # The true class has a very negative logit, so p_t ~ 0 and its factor must be ~1 (the
    # class-balanced reference code gets 0 or NaN here); the other classes have z = 0.
    gamma = 2.0
    loss = build({"name": "sigmoid_focal", "gamma": gamma})
    z = torch.tensor([[-1e4, 0.0, 0.0, 0.0]], requires_grad=True)
    value = loss(z, torch.tensor([0]))
    expected = 1e4 + 3 * 0.5 ** gamma * math.log(2)
    assert float(value.detach()) == pytest.approx(expected, rel=1e-6)
    value.backward()
    assert float(z.grad[0, 0]) == pytest.approx(-1.0, abs=1e-4)  # d(1e4 - z)/dz with factor 1


@pytest.mark.parametrize("base,gamma", [("ce", None), ("focal", 1.0), ("sigmoid", None),
                                        ("sigmoid_focal", 0.5)])
def test_class_balanced_formula(base, gamma):
    z, y = tz()
    beta = 0.99
    w = np_effective_weights(COUNTS, beta)
    p = np.exp(np_log_softmax(Z))
    pt = p[np.arange(3), Y]
    if base == "ce":
        per, denom = -np.log(pt), w[Y].sum()
    elif base == "focal":
        per, denom = (1 - pt) ** gamma * -np.log(pt), w[Y].sum()
    else:
        per, denom = np_sigmoid_focal(Z, Y, gamma or 0.0), 3
    cfg = {"name": "cb", "beta": beta, "base": base}
    if gamma is not None:
        cfg["gamma"] = gamma
    loss = build(cfg)
    np.testing.assert_allclose(loss(z, y, reduction="none").numpy(), w[Y] * per, rtol=1e-5)
    assert float(loss(z, y)) == pytest.approx((w[Y] * per).sum() / denom, rel=1e-5)


def test_ldam_margins_and_value():
    loss = LDAMLoss(max_m=0.5, s=30.0, class_counts=[100, 10, 1])
    np.testing.assert_allclose(loss.margins.numpy(),
                               [0.5 * 100 ** -0.25, 0.5 * 10 ** -0.25, 0.5], rtol=1e-6)
    cos = np.array([[0.3, -0.2, 0.1], [0.0, 0.5, 0.4]])
    y = np.array([2, 1])
    m = np.array([0.5 * 100 ** -0.25, 0.5 * 10 ** -0.25, 0.5])
    shifted = cos.copy()
    shifted[np.arange(2), y] -= m[y]  # margin off the target logit only, then scale all
    expected = np_ce(30 * shifted, y)
    got = loss(torch.tensor(cos, dtype=torch.float32), torch.tensor(y), reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_ldam_drw_matches_weighted_ce_of_the_margin_logits():
    counts = [100, 10, 1]
    loss = LOSSES.build({"name": "ldam", "weights": {"name": "effective_number", "beta": 0.9999},
                         "weights_start_epoch": 1}, class_counts=counts)
    cos = torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.5, 0.4], [0.9, 0.1, -0.3]])
    y = torch.tensor([2, 1, 0])
    m = np.array([0.5 * 100 ** -0.25, 0.5 * 10 ** -0.25, 0.5])
    shifted = cos.numpy().astype(np.float64)
    shifted[np.arange(3), y.numpy()] -= m[y.numpy()]
    per = np_ce(30 * shifted, y.numpy())
    assert float(loss(cos, y)) == pytest.approx(per.mean(), rel=1e-5)  # epoch 0: weights 1
    loss.set_epoch(1)
    w = np_effective_weights(counts, 0.9999)[y.numpy()]
    assert float(loss(cos, y)) == pytest.approx((w * per).sum() / w.sum(), rel=1e-5)


def test_am_softmax_formula():
    cos = np.array([[0.3, -0.2, 0.1, 0.0], [0.0, 0.5, 0.4, -0.1]])
    y = np.array([0, 2])
    shifted = cos.copy()
    shifted[np.arange(2), y] -= 0.35
    expected = np_ce(30 * shifted, y)
    loss = build({"name": "am_softmax", "m": 0.35, "s": 30.0})
    got = loss(torch.tensor(cos, dtype=torch.float32), torch.tensor(y), reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("tau", [0.0, 1.0, 1.5])
def test_balanced_softmax_is_ce_on_shifted_logits(tau):
    z, y = tz()
    expected = np_ce(Z + tau * np.log(np.asarray(COUNTS, float)), Y)
    loss = build({"name": "balanced_softmax", "tau": tau})
    np.testing.assert_allclose(loss(z, y, reduction="none").numpy(), expected, rtol=1e-5)
    if tau == 0.0:
        np.testing.assert_allclose(expected, np_ce(Z, Y))


def test_cdt_formula():
    z, y = tz()
    gamma = 0.3
    a = (40 / np.asarray(COUNTS, float)) ** gamma
    loss = build({"name": "cdt", "gamma": gamma})
    np.testing.assert_allclose(loss(z, y, reduction="none").numpy(), np_ce(Z / a, Y), rtol=1e-5)


def test_las_smoothing_factors_by_hand():
    counts = [101, 51, 1]  # r = 1, 0.5, 0
    head, tail = 0.4, 0.1
    s45 = math.sin(math.pi / 4)
    hand = {"linear": [0.4, 0.25, 0.1],
            "concave": [0.4, tail + 0.3 * s45, 0.1],
            "convex": [0.4, head - 0.3 * s45, 0.1]}
    for shape, expected in hand.items():
        loss = LOSSES.build({"name": "las", "smooth_head": head, "smooth_tail": tail,
                             "shape": shape}, class_counts=counts)
        np.testing.assert_allclose(loss.smoothing.numpy(), expected, rtol=1e-6)


def test_las_formula():
    z, y = tz()
    head, tail = 0.4, 0.1
    n = np.asarray(COUNTS, float)
    eps = tail + (head - tail) * np.sin(np.pi / 2 * (n - n.min()) / (n.max() - n.min()))
    q = np.zeros_like(Z)
    for i, label in enumerate(Y):
        q[i] = eps[label] / (C - 1)
        q[i, label] = 1 - eps[label]
    expected = -(q * np_log_softmax(Z)).sum(1)
    loss = build({"name": "las", "smooth_head": head, "smooth_tail": tail, "shape": "concave"})
    np.testing.assert_allclose(loss(z, y, reduction="none").numpy(), expected, rtol=1e-5)


def test_las_on_balanced_counts_uses_the_head_factor():
    loss = LOSSES.build({"name": "las", "smooth_head": 0.3, "smooth_tail": 0.0},
                        class_counts=[5, 5, 5])
    np.testing.assert_allclose(loss.smoothing.numpy(), [0.3, 0.3, 0.3])
