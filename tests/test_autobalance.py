"""AutoBalance (lttoolbox/losses/autobalance.py): the parametric loss against numpy, the
hypergradient against an exact implicit-function-theorem one and against finite differences of
the validation loss at the inner optimum, the outer step as the only thing that moves (d, l), the
refusals, and runs on digits (end to end, with mixing, resumed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import StopAfter, digits
from lttoolbox.api import Context
from lttoolbox.engine import train
from lttoolbox.errors import ConfigError
from lttoolbox.losses.autobalance import neumann_inverse_hvp
from lttoolbox.recipe import resolve
from lttoolbox.registry import DATASETS, LOSSES


def numpy_loss(z, y, dy, ly, group=1, w=None):
    """``CE(sigmoid(dy) * z + ly, y)``, the weighted batch mean, written out in numpy."""
    scale = np.repeat(1 / (1 + np.exp(-np.asarray(dy, float))), group)
    x = z * scale + np.repeat(np.asarray(ly, float), group)
    x = x - x.max(1, keepdims=True)
    per = np.log(np.exp(x).sum(1)) - x[np.arange(len(y)), y]
    w = np.ones(z.shape[1]) if w is None else np.asarray(w, float)
    return (w[y] * per).sum() / w[y].sum()


def test_the_parametric_loss_by_hand():
    # z = (2, 1, 0): at the init sigmoid(1) = 0.731059, x = (1.462117, 0.731059, 0), so
    # CE(y=2) = log(e^1.462117 + e^0.731059 + 1) = 2.000448 and CE(y=0) = 0.538330; with
    # d = (1, 0, -1), l = (0.5, 0, -0.5): x = (1.962117, 0.5, -0.5), 2.737473 and 0.275356.
    z = torch.tensor([[2.0, 1.0, 0.0]])
    init = LOSSES.build({"name": "autobalance"}, num_classes=3)
    assert init(z, torch.tensor([2])).item() == pytest.approx(2.000448, abs=1e-6)
    assert init(z, torch.tensor([0])).item() == pytest.approx(0.538330, abs=1e-6)
    set_ = LOSSES.build({"name": "autobalance", "dy_init": [1, 0, -1],
                         "ly_init": [0.5, 0, -0.5]}, num_classes=3)
    assert set_(z, torch.tensor([2])).item() == pytest.approx(2.737473, abs=1e-6)
    assert set_(z, torch.tensor([0])).item() == pytest.approx(0.275356, abs=1e-6)


@pytest.mark.parametrize("group", [1, 2])
def test_the_parametric_loss_against_numpy_with_groups_and_class_weights(group):
    rng = np.random.default_rng(0)
    counts = [40, 30, 20, 10, 5, 2]
    z, y = rng.normal(size=(16, 6)) * 3, rng.integers(0, 6, 16)
    dy, ly = rng.normal(size=6 // group), rng.normal(size=6 // group)
    loss = LOSSES.build({"name": "autobalance", "group_size": group, "dy_init": dy.tolist(),
                         "ly_init": ly.tolist(), "weights": "inverse"}, class_counts=counts)
    w = (1 / np.asarray(counts, float))
    w = w / w.sum() * len(counts)  # the inverse scheme's normalisation does not matter here
    got = float(loss(torch.tensor(z, dtype=torch.float64), torch.tensor(y)))
    assert got == pytest.approx(numpy_loss(z, y, dy, ly, group, w), rel=1e-6)


def test_the_neumann_series_by_hand():
    # alpha * sum_{j=0}^{5} (1 - alpha h)^j v: h = 0.5 -> 1.96875 (exact 2), h = 1.5 -> 0.65625
    for h, want in ((0.5, 1.96875), (1.5, 0.65625), (3.0, -21.0)):
        got = neumann_inverse_hvp(lambda u, h=h: [h * u[0]], [torch.ones(1)], 5, 1.0)
        assert float(got[0]) == pytest.approx(want)


# ------------------------------------------------------------------ the hypergradient, exactly
MU = 0.5  # an L2 term that makes the inner problem strictly convex, so H is invertible


class ToyStep:
    """The step events of a linear model ``z = x W^T`` whose objective is the loss plus
    ``MU/2 |W|^2`` on a fixed training set, with a fixed validation set."""

    def __init__(self, loss, model, xv, yv):
        self.loss, self.model, self.xv, self.yv = loss, model, xv, yv
        self.epoch, self.step = 0, 0

    def objective(self, batch):
        w = self.model.weight
        return (self.loss(self.model(batch.x), batch.y_a) + 0.5 * MU * (w * w).sum()).reshape(1)

    def validation_batch(self, size):
        assert size == len(self.yv)
        return self.xv, self.yv


def toy_problem(**params):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(24, 4, generator=gen, dtype=torch.float64)
    y = torch.arange(24) % 3
    xv = torch.randn(12, 4, generator=gen, dtype=torch.float64)
    yv = torch.arange(12) % 3
    ctx = Context(class_counts=[8, 8, 8], num_classes=3, labels=y.numpy(),
                  fetch=lambda i: (x[i], y[i]))
    loss = LOSSES.build({"name": "autobalance", "batch_size": 24, "val_batch_size": 12,
                         "train_batches": 1, "val_batches": 1, "start_epoch": 0,
                         "dy_init": [0.5, 1.0, -0.3], "ly_init": [0.2, -0.1, 0.0], **params},
                        context=ctx).double()
    model = torch.nn.Linear(4, 3, bias=False).double()
    return loss, model, x, y, xv, yv


def flat_inner(loss, x, y):
    """The inner objective as a function of the flat weights (and of (d, l) through ``loss``)."""
    def f(w):
        return loss(x @ w.reshape(3, 4).T, y) + 0.5 * MU * (w * w).sum()
    return f


def inner_optimum(loss, x, y) -> torch.Tensor:
    """Newton's method on the strictly convex inner problem (dense Hessian)."""
    f = flat_inner(loss, x, y)
    w = torch.zeros(12, dtype=torch.float64)
    for _ in range(30):
        g = torch.autograd.functional.jacobian(f, w)
        w = w - torch.linalg.solve(torch.autograd.functional.hessian(f, w), g)
    assert float(torch.autograd.functional.jacobian(f, w).norm()) < 1e-12
    return w.detach()


def val_loss(w, xv, yv):
    return F.cross_entropy(xv @ w.reshape(3, 4).T, yv)


def dense_pieces(loss, w, x, y, xv, yv):
    """H (12 x 12), the mixed derivative d(grad_w L_train)/d(d, l) (12 x 6) and grad_w L_val, in
    numpy, from dense autograd derivatives (no Hessian-vector product, no Neumann series)."""
    f = flat_inner(loss, x, y)
    hess = torch.autograd.functional.hessian(f, w).numpy()

    def grad_w(theta):
        with torch.no_grad():
            loss.dy.copy_(theta[:3])
            loss.ly.copy_(theta[3:])
        wg = w.clone().requires_grad_(True)
        return torch.autograd.grad(f(wg), wg, create_graph=True)[0]

    theta0 = torch.cat([loss.dy.detach(), loss.ly.detach()]).clone()
    mixed = np.zeros((12, 6))
    for k in range(6):  # central differences of the analytic gradient in each of (d, l)
        e = torch.zeros(6, dtype=torch.float64)
        e[k] = 1e-6
        mixed[:, k] = ((grad_w(theta0 + e) - grad_w(theta0 - e)) / 2e-6).detach().numpy()
    grad_w(theta0)  # put (d, l) back
    wv = w.clone().requires_grad_(True)
    v = torch.autograd.grad(val_loss(wv, xv, yv), wv)[0].numpy()
    return hess, mixed, v


def run_hypergradient(loss, model, w, xv, yv):
    with torch.no_grad():
        model.weight.copy_(w.reshape(3, 4))
    gd, gl = loss.hypergradient(ToyStep(loss, model, xv, yv))
    return np.concatenate([gd.numpy(), gl.numpy()])


def test_the_truncated_series_is_the_code_s_neumann_formula():
    """Five terms, alpha 1 (the code's): -M^T alpha sum_{j<=5} (I - alpha H)^j v exactly."""
    loss, model, x, y, xv, yv = toy_problem()
    w = inner_optimum(loss, x, y)
    hess, mixed, v = dense_pieces(loss, w, x, y, xv, yv)
    assert np.linalg.eigvalsh(hess).max() < 2  # the series converges with alpha 1
    p, term = v.copy(), v.copy()
    for _ in range(5):
        term = term - hess @ term
        p = p + term
    np.testing.assert_allclose(run_hypergradient(loss, model, w, xv, yv), -mixed.T @ p,
                               rtol=1e-5, atol=1e-9)


def test_the_hypergradient_is_the_total_derivative_of_the_validation_loss():
    """With enough terms the series is the exact IFT hypergradient -M^T H^{-1} v, which at the
    inner optimum is d L_val(w*(d, l)) / d(d, l): checked against a dense solve and against
    finite differences of the validation loss at re-solved inner optima."""
    loss, model, x, y, xv, yv = toy_problem(neumann_terms=300, neumann_lr=1.0)
    w = inner_optimum(loss, x, y)
    hess, mixed, v = dense_pieces(loss, w, x, y, xv, yv)
    exact = -mixed.T @ np.linalg.solve(hess, v)
    got = run_hypergradient(loss, model, w, xv, yv)
    np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-10)
    theta0 = torch.cat([loss.dy.detach(), loss.ly.detach()]).clone()
    fd = np.zeros(6)
    for k in range(6):
        values = []
        for sign in (1, -1):
            theta = theta0.clone()
            theta[k] += sign * 1e-5
            with torch.no_grad():
                loss.dy.copy_(theta[:3])
                loss.ly.copy_(theta[3:])
            values.append(float(val_loss(inner_optimum(loss, x, y), xv, yv)))
        fd[k] = (values[0] - values[1]) / 2e-5
    assert np.abs(fd).max() > 1e-3  # a problem where (d, l) matter
    np.testing.assert_allclose(got, fd, rtol=1e-5, atol=1e-8)


def test_the_outer_step_follows_the_code_s_sgd_and_leaves_the_model_as_it_was():
    """One outer step is SGD(lr, momentum 0.9, weight decay 1e-4) on the hypergradient; the
    model's weights and BatchNorm statistics are untouched."""
    loss, _, x, y, xv, yv = toy_problem(outer_lr=0.05, outer_warmup_epochs=0)
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3, bias=False))
    model = model.double()
    model.weight = model[1].weight  # ToyStep's L2 term reads model.weight
    step = ToyStep(loss, model, xv, yv)
    stats = model[0].running_mean.clone()
    theta = torch.cat([loss.dy.detach(), loss.ly.detach()]).clone()
    hyper = torch.cat(loss.hypergradient(step))
    assert not torch.equal(model[0].running_mean, stats)  # its forwards do move the statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss.before_step(step)
    want = theta - 0.05 * (hyper + 1e-4 * theta)  # the first SGD step: no momentum yet
    assert torch.allclose(torch.cat([loss.dy.detach(), loss.ly.detach()]), want, atol=1e-10)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert loss.outer_steps == 1


def test_the_outer_rate_follows_the_code_s_schedule():
    loss = LOSSES.build({"name": "autobalance", "outer_lr": 0.1, "start_epoch": 120,
                         "outer_warmup_epochs": 40, "milestones": [220, 260]}, num_classes=10)
    # (epoch - 120 + 1) / 40 during the warm-up, then 0.1 ** (milestones passed)
    assert loss.outer_lr_at(120) == pytest.approx(0.1 / 40)
    assert loss.outer_lr_at(159) == pytest.approx(0.1)
    assert loss.outer_lr_at(219) == pytest.approx(0.1)
    assert loss.outer_lr_at(220) == pytest.approx(0.01)
    assert loss.outer_lr_at(299) == pytest.approx(0.001)


# ------------------------------------------------------------------------------- refusals
BAD = [({"every": 0}, "every"), ({"train_batches": 0}, "train_batches"),
       ({"val_batch_size": 2.5}, "val_batch_size"), ({"neumann_lr": 0}, "neumann_lr"),
       ({"neumann_terms": -1}, "neumann_terms"), ({"outer_lr": -0.1}, "outer_lr"),
       ({"outer_momentum": 1.0}, "outer_momentum"), ({"group_size": 3}, "group_size"),
       ({"dy_init": [1.0, 2.0]}, "dy_init"), ({"milestones": 220}, "milestones"),
       ({"search": "yes"}, "search"), ({"start_epoch": 5, "end_epoch": 5}, "end_epoch")]


@pytest.mark.parametrize("params, key", BAD, ids=[k for _, k in BAD])
def test_bad_parameters_fail_with_one_line_naming_the_key(params, key):
    with pytest.raises(ConfigError, match=key) as err:
        LOSSES.build({"name": "autobalance", **params}, num_classes=10)
    assert str(err.value).startswith(f"loss.{key}") and "\n" not in str(err.value)


def test_two_processes_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="DistributedDataParallel") as err:
        LOSSES.build({"name": "autobalance"}, context=Context.from_counts([5, 3], world_size=2))
    assert "\n" not in str(err.value)
    # a fixed loss (no outer step) trains in any number of processes
    LOSSES.build({"name": "autobalance", "search": False},
                 context=Context.from_counts([5, 3], world_size=2))


def test_a_run_without_a_validation_split_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"^loss: .*val_per_class") as err:
        train(resolve(digits(loss={"name": "autobalance"})), tmp_path / "run", quiet=True)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------- on digits
SMALL = {"name": "autobalance", "start_epoch": 0, "every": 2, "train_batches": 2,
         "val_batches": 2, "batch_size": 32, "val_batch_size": 20, "outer_lr": 0.01,
         "neumann_lr": 0.1, "outer_warmup_epochs": 0}


def test_only_the_outer_step_moves_the_loss_parameters(tmp_path):
    """The main optimizer holds (d, l) (a learned component) but never moves them: with the
    outer step's window never open they keep their initial values; open, they move."""
    recipe = digits(data={"val_per_class": 6}, train={"epochs": 1})
    closed = train(resolve({**recipe, "loss": {**SMALL, "start_epoch": 1}}),
                   tmp_path / "closed", quiet=True)
    kept = closed["selection"]["autobalance"]
    assert kept["outer_steps"] == 0 and kept["dy"] == [1.0] * 10 and kept["ly"] == [0.0] * 10
    moved = train(resolve({**recipe, "loss": SMALL}), tmp_path / "open", quiet=True)
    learned = moved["selection"]["autobalance"]
    steps = -(-len(DATASETS.build(resolve(recipe)["data"]).train.labels) // 64)
    assert learned["outer_steps"] == -(-steps // 2)  # steps 0, 2, 4, ... (every: 2)
    assert learned["dy"] != [1.0] * 10 and learned["ly"] != [0.0] * 10
    assert moved["data"]["val_per_class"] == 6 and moved["data"]["val_class_counts"] == [6] * 10


def test_with_a_mixing_augmentation_it_trains_on_the_mixed_objective(tmp_path):
    # one outer step (at step 0), through the hooks that mix the fresh training batches
    recipe = resolve(digits(data={"val_per_class": 6}, train={"epochs": 1},
                            loss={**SMALL, "every": 1000},
                            augment=[{"name": "mixup", "alpha": 1.0}]))
    results = train(recipe, tmp_path / "run", quiet=True)
    assert np.isfinite(results["top1"]) and results["selection"]["autobalance"]["outer_steps"] == 1


def test_a_fixed_autobalance_loss_needs_no_validation_split(tmp_path):
    values = {"dy_init": [0.5] * 10, "ly_init": [0.1 * c for c in range(10)]}
    results = train(resolve(digits(train={"epochs": 1}, loss={"name": "autobalance",
                                                               "search": False, **values})),
                    tmp_path / "run", quiet=True)
    assert np.isfinite(results["top1"]) and "autobalance" not in results["selection"]


@pytest.mark.long
def test_a_search_run_resumes_exactly(tmp_path):
    recipe = resolve(digits(data={"val_per_class": 6}, train={"epochs": 3, "checkpoint_every": 1},
                            loss=SMALL))
    full = train(recipe, tmp_path / "full", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "cut", logger=StopAfter(1))
    resumed = train(recipe, tmp_path / "cut", resume=True, quiet=True)
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in full["history"]]
    assert resumed["selection"] == full["selection"]
    assert resumed["per_class_acc"] == full["per_class_acc"]
