"""Optimal-transport re-weighting (lttoolbox/losses/ot_reweight.py): Sinkhorn's plan against
closed forms and an independent numpy Sinkhorn, the code's cost and its stopping rule on the
worked example of the official code, the weight step against numpy finite differences, the
step's loss, the refusals, and runs on digits (end to end, resumed)."""
from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import ROOT, assert_same_training, digits, resumed_run
from lttoolbox.api import Context
from lttoolbox.batch import Batch
from lttoolbox.engine import train
from lttoolbox.errors import ConfigError
from lttoolbox.losses.ot_reweight import ot_cost, sinkhorn
from lttoolbox.recipe import read_recipe, resolve
from lttoolbox.registry import DATASETS, LOSSES

# The worked example (two classes; prototypes of class 0 and 1; a batch of three), as computed
# with the official code's Sinkhorn_distance_fl.SinkhornDistance at 01f35a8.
PROTOS = np.array([[1.0, 0.0], [0.0, 1.0]])
FEATS = np.array([[1.0, 0.1], [0.9, 0.3], [0.2, 1.0]])
LABELS = np.array([0, 0, 1])
RAW = np.array([0.5, 0.5, 1.0])


# ------------------------------------------------------------------------ numpy references
def np_softmax(w):
    e = np.exp(w - w.max())
    return e / e.sum()


def np_cost(protos, feats, labels, num_classes):
    cos = (protos @ feats.T) / np.outer(np.linalg.norm(protos, axis=1),
                                        np.linalg.norm(feats, axis=1))
    differ = (np.arange(len(protos))[:, None] != labels[None, :]).astype(float)
    return 0.5 * (1 - cos) + 0.5 * differ * 2 / num_classes


def np_sinkhorn(cost, a, b, eps, iterations=5000):
    """The textbook (kernel-domain) Sinkhorn: ``u = a / K v``, ``v = b / K^T u``."""
    k = np.exp(-cost / eps)
    v = np.ones_like(b)
    for _ in range(iterations):
        u = a / (k @ v)
        v = b / (k.T @ u)
    return u[:, None] * k * v[None, :]


def np_ot(raw, cost, eps=0.1):
    a = np.full(cost.shape[0], 1 / cost.shape[0])
    return float((np_sinkhorn(cost, a, np_softmax(raw), eps) * cost).sum())


def np_weight_step(raw, cost, lr, wd, eps=0.1, h=1e-6):
    grad = np.array([(np_ot(raw + h * e, cost, eps) - np_ot(raw - h * e, cost, eps)) / (2 * h)
                     for e in np.eye(len(raw))])
    return raw - lr * (grad + wd * raw)


def np_ce(z, y):
    z = z - z.max(1, keepdims=True)
    return np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]


def t64(x):
    return torch.tensor(x, dtype=torch.float64)


# ------------------------------------------------------------------------ Sinkhorn
@pytest.mark.parametrize("eps", [1.0, 0.5, 0.1])
def test_the_2x2_plan_with_uniform_marginals_is_the_closed_form(eps):
    # symmetric: pi = s K with K = exp(-C / eps); a row sums to s (1 + e^{-1/eps}) = 1/2
    plan = sinkhorn(t64([[0.0, 1.0], [1.0, 0.0]]), t64([0.5, 0.5]), t64([0.5, 0.5]), eps)
    diag = 1 / (2 * (1 + np.exp(-1 / eps)))
    np.testing.assert_allclose(plan.numpy(), [[diag, 0.5 - diag], [0.5 - diag, diag]],
                               atol=1e-9)


def test_a_small_epsilon_recovers_the_optimal_assignment():
    cost = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7], [0.6, 0.4, 0.05]])
    best = min(itertools.permutations(range(3)), key=lambda p: sum(cost[i, p[i]] for i in range(3)))
    assert best == (1, 0, 2)  # by hand: 0.1 + 0.2 + 0.05
    third = np.full(3, 1 / 3)
    plan = sinkhorn(t64(cost), t64(third), t64(third), eps=0.005, max_iter=2000).numpy()
    want = np.zeros((3, 3))
    want[[0, 1, 2], best] = 1 / 3
    np.testing.assert_allclose(plan, want, atol=1e-6)
    assert (plan * cost).sum() == pytest.approx((0.1 + 0.2 + 0.05) / 3, abs=1e-6)


def test_the_plan_matches_an_independent_numpy_sinkhorn_and_its_marginals():
    rng = np.random.default_rng(0)
    cost = rng.uniform(size=(4, 6))
    a, b = np_softmax(rng.normal(size=4)), np_softmax(rng.normal(size=6))
    plan = sinkhorn(t64(cost), t64(a), t64(b), eps=0.1, max_iter=2000).numpy()
    np.testing.assert_allclose(plan.sum(1), a, atol=1e-6)
    np.testing.assert_allclose(plan.sum(0), b, atol=1e-6)
    np.testing.assert_allclose(plan, np_sinkhorn(cost, a, b, 0.1), atol=1e-9)


def test_the_code_s_cost_and_its_loose_stop_on_the_worked_example():
    cost = ot_cost(t64(PROTOS), torch.arange(2), t64(FEATS), torch.tensor(LABELS), 2)
    np.testing.assert_allclose(cost.numpy(), np_cost(PROTOS, FEATS, LABELS, 2), atol=1e-12)
    np.testing.assert_allclose(cost.numpy(), [[0.002481, 0.025658, 0.901942],
                                              [0.950248, 0.841886, 0.009710]], atol=1e-6)
    mu, nu = t64([0.5, 0.5]), torch.softmax(t64(RAW), 0)
    # the code's stop (sum |du| < 0.1) after two iterations: its <pi, C> of 0.012318
    loose = sinkhorn(cost, mu, nu, eps=0.1, tol=0.1)
    assert float((loose * cost).sum()) == pytest.approx(0.012318, abs=1e-6)
    np.testing.assert_allclose(loose.sum(1).numpy(), [0.547932, 0.452068], atol=1e-6)
    # the default (all 200 iterations) converges: numpy's value, 0.052844, marginals to 1e-6
    full = sinkhorn(cost, mu, nu, eps=0.1)
    assert float((full * cost).sum()) == pytest.approx(np_ot(RAW, cost.numpy()), abs=1e-9)
    assert float((full * cost).sum()) == pytest.approx(0.052844, abs=1e-6)
    np.testing.assert_allclose(full.sum(1).numpy(), [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(full.sum(0).numpy(), nu.numpy(), atol=1e-6)


# ------------------------------------------------------------------------ the weight step
class Identity(torch.nn.Module):
    """A model whose pooled features are its input and whose head is a fixed linear map."""

    def __init__(self, dim, classes):
        super().__init__()
        self.head = torch.nn.Linear(dim, classes)

    def forward_features(self, x):
        return x

    def forward(self, x):
        return self.head(x)


class ToyStep:
    def __init__(self, batch, model, xv, yv):
        self.batch, self.model, self.xv, self.yv = batch, model, xv, yv
        self.epoch, self.step, self.steps, self.optimizer, self.lr = 0, 0, 1, None, 0.1

    def validation_batch(self, size):
        assert size == len(self.yv)
        return self.xv, self.yv


def toy(counts=(5, 3), **params):
    loss = LOSSES.build({"name": "ot_reweight", **params}, context=Context.from_counts(counts))
    loss.before_run(SimpleNamespace(recipe={"data": {"val_per_class": 2}}))
    # validation images whose class means are the prototypes (1, 0) and (0, 1)
    xv = torch.tensor([[1.5, 0.0], [0.5, 0.0], [0.0, 0.8], [0.0, 1.2]])
    yv = torch.tensor([0, 0, 1, 1])
    return loss, Identity(2, 2), xv, yv


def test_the_initial_weights_are_the_class_balanced_ones():
    loss, *_ = toy((5, 3))
    n = np.array([5.0, 3.0])
    w = (1 - 0.9999) / (1 - 0.9999 ** n)
    w = w / w.sum() * 2
    np.testing.assert_allclose(loss.raw_weights.numpy(), np.repeat(w, [5, 3]), rtol=1e-6)


def test_the_prototypes_are_the_features_of_each_class_s_mean_image():
    loss, model, _, _ = toy((5, 3))
    x = torch.tensor([[2.0, 1.0], [4.0, 3.0], [0.0, 6.0], [1.0, 0.0], [3.0, 2.0]])
    y = torch.tensor([0, 0, 1, 0, 1])
    # by hand: class 0 (2+4+1, 1+3+0) / 3, class 1 (0+3, 6+2) / 2
    np.testing.assert_allclose(loss.prototypes(model, x, y).numpy(),
                               [[7 / 3, 4 / 3], [1.5, 4.0]], rtol=1e-6)


def test_before_step_moves_the_batch_s_weights_by_the_ot_gradient_as_numpy_does():
    # weight_lr 1 (the code's 0.01 moves them by about 1e-5, below float32's resolution here)
    loss, model, xv, yv = toy((5, 3), weight_lr=1.0, weight_decay=0.01, meta_weight=0.0)
    index = torch.tensor([1, 4, 6])  # classes 0, 0, 1 in the class-ordered training set
    loss.raw_weights[index] = torch.tensor(RAW, dtype=torch.float32)
    before = loss.raw_weights.clone()
    batch = Batch.plain(torch.tensor(FEATS, dtype=torch.float32), torch.tensor(LABELS), index)
    loss.before_step(ToyStep(batch, model, xv, yv))
    want = np_weight_step(RAW, np_cost(PROTOS, FEATS, LABELS, 2), lr=1.0, wd=0.01)
    assert not np.allclose(want, RAW, atol=1e-3)
    np.testing.assert_allclose(loss.raw_weights[index].numpy(), want, atol=2e-6)
    others = torch.ones(8, dtype=torch.bool)
    others[index] = False
    assert torch.equal(loss.raw_weights[others], before[others])  # only the batch's weights


def test_an_image_drawn_twice_is_written_as_its_first_occurrence():
    """A re-sampling sampler may put one image in a batch twice (two crops, one label): both
    copies are written with the first occurrence's update, whatever order the writes land in."""
    loss, model, xv, yv = toy((5, 3), weight_lr=1.0, weight_decay=0.01, meta_weight=0.0)
    index = torch.tensor([1, 6, 1])  # image 1 (class 0) twice, image 6 (class 1)
    labels = np.array([0, 1, 0])
    raw = np.array([RAW[0], RAW[2], RAW[0]])
    loss.raw_weights[index] = torch.tensor(raw, dtype=torch.float32)
    batch = Batch.plain(torch.tensor(FEATS, dtype=torch.float32), torch.tensor(labels), index)
    loss.before_step(ToyStep(batch, model, xv, yv))
    want = np_weight_step(raw, np_cost(PROTOS, FEATS, labels, 2), lr=1.0, wd=0.01)
    assert abs(want[0] - want[2]) > 1e-3  # the two copies' own updates differ
    np.testing.assert_allclose(loss.raw_weights[torch.tensor([1, 6])].numpy(), want[:2],
                               atol=2e-6)


def test_the_step_s_loss_is_the_weighted_sum_plus_ten_times_the_meta_mean():
    loss, model, xv, yv = toy((5, 3))
    index = torch.tensor([0, 7, 2])
    x, y = torch.tensor(FEATS, dtype=torch.float32), torch.tensor(LABELS)
    loss.before_step(ToyStep(Batch.plain(x, y, index), model, xv, yv))
    w = loss.raw_weights[index].numpy().astype(np.float64)
    with torch.no_grad():
        z, zv = model(x).double().numpy(), model(xv).double().numpy()

    got = float(loss.batch_loss(model(x), Batch.plain(x, y, index)).detach())
    assert got == pytest.approx((w * np_ce(z, LABELS)).sum(), rel=1e-5)
    meta = loss.auxiliary_loss()
    assert float(meta.detach()) == pytest.approx(10 * np_ce(zv, yv.numpy()).mean(), rel=1e-5)
    assert meta.requires_grad and loss.auxiliary_loss() is None  # one term per step


def test_a_mixed_batch_weighs_both_targets_and_its_ot_step_reads_the_first():
    """With a mixing augmentation: each image's loss is ``lam CE(y_a) + (1 - lam) CE(y_b)``
    under its own weight, and the OT step's label cost uses ``y_a`` (the label of the image that
    was drawn at that row), its features those of the mixed input."""
    loss, model, xv, yv = toy((5, 3), weight_lr=1.0, weight_decay=0.01, meta_weight=0.0)
    index = torch.tensor([1, 4, 6])
    loss.raw_weights[index] = torch.tensor(RAW, dtype=torch.float32)
    x = torch.tensor(FEATS, dtype=torch.float32)
    y_b = np.array([1, 1, 0])
    lam = np.array([0.7, 0.25, 1.0])
    batch = Batch(x, torch.tensor(LABELS), torch.tensor(y_b), torch.tensor(lam).float(), index)
    loss.before_step(ToyStep(batch, model, xv, yv))
    want = np_weight_step(RAW, np_cost(PROTOS, FEATS, LABELS, 2), lr=1.0, wd=0.01)
    np.testing.assert_allclose(loss.raw_weights[index].numpy(), want, atol=2e-6)
    with torch.no_grad():
        z = model(x).double().numpy()
    got = float(loss.batch_loss(model(x), batch).detach())
    mixed = lam * np_ce(z, LABELS) + (1 - lam) * np_ce(z, y_b)
    w = loss.raw_weights[index].double().numpy()
    assert got == pytest.approx((w * mixed).sum(), rel=1e-5)
    assert got != pytest.approx((w * np_ce(z, LABELS)).sum(), rel=1e-3)  # y_b counts


def test_the_weights_are_a_checkpointed_buffer_that_no_optimizer_moves():
    loss, model, xv, yv = toy((5, 3))
    assert list(loss.parameters()) == [] and not loss.learned
    assert "raw_weights" in loss.state_dict()
    index = torch.tensor([0, 5, 6])
    x, y = torch.tensor(FEATS, dtype=torch.float32), torch.tensor(LABELS)
    loss.before_step(ToyStep(Batch.plain(x, y, index), model, xv, yv))
    after_outer = loss.raw_weights.clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    total = loss.batch_loss(model(x), Batch.plain(x, y, index)) + loss.auxiliary_loss()
    total.backward()
    optimizer.step()
    assert torch.equal(loss.raw_weights, after_outer)
    restored, *_ = toy((5, 3))
    restored.load_state_dict(loss.state_dict())
    assert torch.equal(restored.raw_weights, after_outer)


# ------------------------------------------------------------------------ refusals
BAD = [({"eps": 0}, "eps"), ({"iterations": 0}, "iterations"), ({"weight_lr": 0}, "weight_lr"),
       ({"weight_decay": -1}, "weight_decay"), ({"meta_weight": -1}, "meta_weight"),
       ({"init_beta": 1.0}, "init_beta")]


@pytest.mark.parametrize("params, key", BAD, ids=[k for _, k in BAD])
def test_bad_parameters_fail_with_one_line_naming_the_key(params, key):
    with pytest.raises(ConfigError, match=key) as err:
        LOSSES.build({"name": "ot_reweight", **params}, class_counts=[5, 3])
    assert str(err.value).startswith(f"loss.{key}") and "\n" not in str(err.value)


def test_two_processes_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="one process") as err:
        LOSSES.build({"name": "ot_reweight"}, context=Context.from_counts([5, 3], world_size=2))
    assert "\n" not in str(err.value)


def test_a_run_without_a_validation_split_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"^loss: .*val_per_class") as err:
        train(resolve(digits(loss={"name": "ot_reweight"})), tmp_path / "run", quiet=True)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------- on digits
# the loss is a sum over the batch (64 images): the rate is scaled down accordingly
RUN = {"data": {"val_per_class": 6}, "optim": {"lr": 0.002}, "loss": {"name": "ot_reweight"}}


def test_a_digits_run_learns_per_example_weights(tmp_path):
    recipe = resolve(digits(train={"epochs": 2}, **RUN))
    results = train(recipe, tmp_path / "run", quiet=True)
    assert np.isfinite(results["top1"]) and results["top1"] > 10.0  # above chance (10 classes)
    counts = np.bincount(DATASETS.build(recipe["data"]).train.labels, minlength=10)
    w = (1 - 0.9999) / (1 - 0.9999 ** counts.astype(float))
    initial = w / w.sum() * 10
    learned = np.array(results["selection"]["ot_reweight"]["class_mean_weight"])
    assert not np.allclose(learned, initial, rtol=0, atol=1e-7)  # the OT step moved them
    np.testing.assert_allclose(learned, initial, rtol=1e-3)  # by the code's small steps
    assert all(set(r["loss_terms"]) == {"ot_reweight", "ot_reweight_aux"}
               for r in results["history"])


def test_a_digits_run_trains_with_a_mixing_augmentation(tmp_path):
    recipe = resolve(digits(train={"epochs": 1}, augment=[{"name": "mixup", "alpha": 1.0}],
                            **RUN))
    results = train(recipe, tmp_path / "run", quiet=True)
    assert np.isfinite(results["top1"]) and results["top1"] > 10.0
    assert np.isfinite(results["history"][-1]["loss"])


def test_a_run_resumes_exactly(tmp_path):
    recipe = resolve(digits(train={"epochs": 2, "checkpoint_every": 1}, **RUN))
    full = train(recipe, tmp_path / "full", quiet=True)
    resumed = resumed_run(recipe, tmp_path / "cut", 1)
    assert_same_training(resumed, full)
    assert resumed["selection"] == full["selection"]


@pytest.mark.parametrize("folder", ["cifar10_lt", "cifar100_lt"])
def test_the_cifar_recipes_run_their_two_phases_on_digits(tmp_path, folder):
    """configs/<folder>/ot_reweight.yaml, data and model swapped for digits, one epoch a phase:
    CE, then the classifier re-trained under ot_reweight with the backbone frozen."""
    recipe = read_recipe(ROOT / "configs" / folder / "ot_reweight.yaml")
    assert recipe["data"]["val_per_class"] == 10
    assert recipe["data"]["name"] == folder and recipe["train"]["epochs"] == 200
    assert recipe["phases"][1]["train"]["epochs"] == 90
    assert recipe["phases"][1]["train"]["batch_size"] == 16
    assert recipe["phases"][1]["train"]["freeze"] == ["backbone"]
    recipe["data"] = {"name": "digits_lt", "imbalance_ratio": 10, "val_per_class": 6}
    recipe["model"]["name"] = "digits_cnn"
    recipe["train"]["epochs"] = 1
    recipe["phases"][1]["train"]["epochs"] = 1
    recipe["phases"][1]["optim"]["lr"] = 1e-4
    results = train(resolve(recipe), tmp_path / "run", quiet=True)
    assert np.isfinite(results["top1"])
    assert results["selection"]["ot_reweight"]["phase"] == "ot"
    assert [r["phase"] for r in results["history"]] == ["joint", "ot"]


@pytest.mark.long
def test_a_compiled_step_trains_as_the_eager_one(tmp_path, monkeypatch):
    """The meta term's graph is built before the step and back-propagated through the compiled
    step's output: the compiled forward, which updates the BatchNorm buffers in place, must not
    invalidate it (AOTAutograd's eager backend, as tests/test_compile.py uses a light one)."""
    import lttoolbox.engine.compile as compile_module

    monkeypatch.setattr(compile_module, "BACKEND", "aot_eager")
    runs = {mode: train(resolve(digits(train={"epochs": 1, "compile": mode}, **RUN)),
                        tmp_path / mode, quiet=True) for mode in ("off", "on")}
    assert runs["on"]["compile_seconds"] > 0
    assert_same_training(runs["on"], runs["off"])
    assert runs["on"]["selection"] == runs["off"]["selection"]
