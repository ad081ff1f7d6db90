"""Sharpness-aware minimisation (``optim: {name: sam}``, lttoolbox/optimizers/sam.py).

The step is checked against the closed form on a quadratic (numpy, float64), the batch-norm
statistics of a one-parameter model against values computed by hand (the official code's double
update and the default hold), and the entry end to end on digits: resume, a mixing augmentation,
two processes, the fp16 refusal and bad parameters.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import StopAfter, digits

from lttoolbox.engine import train
from lttoolbox.optimizers.sam import sam
from lttoolbox.errors import ConfigError
from lttoolbox.recipe import resolve
from lttoolbox.recipe_checks import needs_closure
from lttoolbox.registry import OPTIMIZERS

A = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, -0.4], [0.0, -0.4, 1.0]])  # symmetric, positive definite
W0 = np.array([0.7, -1.3, 2.1])


def quadratic_step(rho, lr, weight_decay=0.0, adaptive=False, momentum=0.0):
    """One sam step on f(w) = 1/2 w^T A w, with w split into two tensors in two parameter groups
    (the norm is one over both); returns the new w and the closure's calls."""
    a = torch.tensor(A)
    w1 = torch.nn.Parameter(torch.tensor(W0[:2]))
    w2 = torch.nn.Parameter(torch.tensor(W0[2:]))
    opt = sam([{"params": [w1]}, {"params": [w2]}], rho=rho, adaptive=adaptive, lr=lr,
              weight_decay=weight_decay, momentum=momentum)
    seen = []

    def closure():
        opt.zero_grad(set_to_none=True)
        w = torch.cat([w1, w2])
        seen.append(w.detach().numpy().copy())
        loss = 0.5 * w @ a @ w
        loss.backward()
        return loss.detach().reshape(1)

    out = opt.step(closure)
    assert out.item() == pytest.approx(0.5 * W0 @ A @ W0)  # the first pass's loss, at w
    return torch.cat([w1, w2]).detach().numpy(), seen


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_one_step_on_a_quadratic_is_the_closed_form(adaptive, weight_decay):
    rho, lr = 0.3, 0.1
    g = A @ W0
    if adaptive:  # ASAM: e = rho T^2 g / ||T g||, T = |w|
        t = np.abs(W0)
        e = rho * t ** 2 * g / np.linalg.norm(t * g)
    else:
        e = rho * g / np.linalg.norm(g)
    # the gradient at w + e, applied at w; weight decay at w (SGD adds it after the restore)
    expected = W0 - lr * (A @ (W0 + e) + weight_decay * W0)
    new, seen = quadratic_step(rho, lr, weight_decay, adaptive)
    assert len(seen) == 2  # the closure, exactly twice per step
    np.testing.assert_allclose(seen[0], W0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(seen[1], W0 + e, rtol=1e-12)
    np.testing.assert_allclose(new, expected, rtol=1e-12)
    plain = W0 - lr * (A @ W0 + weight_decay * W0)
    assert np.abs(new - plain).max() > 1e-3  # it is not the plain step


def test_the_worked_example_and_its_weight_decay():
    """L = 1/2 ||w||^2 at w = (3, 4), rho 0.05, lr 0.1: e = (0.03, 0.04), w' = (2.697, 3.596);
    with weight decay 2e-4 at w: (2.69694, 3.59592) (the official sam.py gives the same)."""
    for wd, expected in ((0.0, [2.697, 3.596]), (2e-4, [2.69694, 3.59592])):
        w = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
        opt = sam([{"params": [w]}], rho=0.05, lr=0.1, momentum=0.0, weight_decay=wd)

        def closure(opt=opt, w=w):
            opt.zero_grad()
            loss = 0.5 * (w ** 2).sum()
            loss.backward()
            return loss.detach()

        opt.step(closure)
        np.testing.assert_allclose(w.detach().numpy(), expected, rtol=1e-12)


def test_momentum_is_the_base_optimizers_and_survives_a_state_dict_round_trip():
    """The base's momentum buffer is in sam's state_dict; a copy loaded from it steps as the
    original (davda54's SAM keeps it outside its own state_dict)."""
    def build():
        w = torch.nn.Parameter(torch.tensor(W0))
        return w, sam([{"params": [w]}], rho=0.2, lr=0.05, momentum=0.9)

    def closure_for(w, opt):
        def closure():
            opt.zero_grad()
            loss = 0.5 * w @ torch.tensor(A) @ w
            loss.backward()
            return loss.detach()
        return closure

    w, opt = build()
    for _ in range(2):
        opt.step(closure_for(w, opt))
    state = copy.deepcopy(opt.state_dict())  # as a checkpoint holds it (not the live buffers)
    assert any("momentum_buffer" in s for s in state["state"].values())
    w2, opt2 = build()
    with torch.no_grad():
        w2.copy_(w)
    opt2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = 0.02  # the trainer sets the rate on sam's groups: the base's
    opt.param_groups[0]["lr"] = 0.02
    assert opt2.base_optimizer.param_groups[0]["lr"] == 0.02
    opt.step(closure_for(w, opt))
    opt2.step(closure_for(w2, opt2))
    assert torch.equal(w, w2)


class ScaledBN(torch.nn.Module):
    """x -> BatchNorm1d(a x) (no affine parameters), the loss a plus the normalised output's sum
    (0 up to rounding): the gradient is 1 in a, so e = rho and the second pass runs at a + rho."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
        self.bn = torch.nn.BatchNorm1d(1, affine=False, momentum=0.1).double()

    def forward(self, x):
        return self.bn(self.a * x).sum() + self.a


@pytest.mark.parametrize("mode, mean, var, count", [
    # batch a x = (0.5, 1.5): mean 1.0, unbiased variance 0.5; from (0, 1) with momentum 0.1
    ("hold", 0.1, 0.95, 1),
    # the second batch (0.6, 1.8): mean 1.2, variance 0.72: 0.9 * 0.1 + 0.1 * 1.2, 0.9 * 0.95 +
    # 0.1 * 0.72 (the official code, both passes in train mode)
    ("update", 0.21, 0.927, 2),
])
def test_batch_norm_statistics_are_updated_once_unless_asked(mode, mean, var, count):
    model = ScaledBN()
    x = torch.tensor([[0.5], [1.5]], dtype=torch.float64)
    opt = sam([{"params": [model.a]}], model=model, rho=0.2, lr=0.1, momentum=0.0,
              weight_decay=0.0, second_pass_bn=mode)
    passes = []

    def closure():
        opt.zero_grad()
        loss = model(x)
        loss.backward()
        passes.append(float(model.a.detach()))
        return loss.detach()

    opt.step(closure)
    assert passes == pytest.approx([1.0, 1.2], abs=1e-12)
    assert float(model.bn.running_mean) == pytest.approx(mean, abs=1e-12)
    assert float(model.bn.running_var) == pytest.approx(var, abs=1e-12)
    assert int(model.bn.num_batches_tracked) == count


def test_both_passes_draw_the_same_random_numbers():
    """A draw inside the closure (a mixing augmentation's lam and partners, dropout) is the same
    in both passes: the two gradients are of one batch loss. The generator moves on once."""
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = sam([{"params": [w]}], rho=0.1)
    draws = []

    def closure():
        opt.zero_grad()
        r = torch.rand(2)
        draws.append(r)
        loss = (r * w ** 2).sum()
        loss.backward()
        return loss.detach()

    torch.manual_seed(3)
    opt.step(closure)
    after = torch.rand(2)
    assert len(draws) == 2 and torch.equal(draws[0], draws[1])
    torch.manual_seed(3)
    first, second = torch.rand(2), torch.rand(2)
    assert torch.equal(draws[0], first) and torch.equal(after, second)


def test_sam_steps_only_with_a_closure():
    w = torch.nn.Parameter(torch.ones(2))
    opt = sam([{"params": [w]}])
    w.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match="needs the closure.*train.amp"):
        opt.step()


def test_fp16_loss_scaling_is_refused_before_training():
    """The trainer steps through GradScaler without a closure under fp16: an optimizer that
    declares needs_closure is refused with train.amp named (before the CPU's own fp16 check)."""
    assert [n for n in OPTIMIZERS.names() if needs_closure(n)] == ["sam"]
    with pytest.raises(ConfigError, match=r"^train\.amp: optimizer 'sam' .*bf16 or off"):
        resolve(digits(optim={"name": "sam"}, train={"amp": "fp16"}))
    resolve(digits(optim={"name": "sam"}, train={"amp": "bf16"}))


@pytest.mark.parametrize("optim, key, message", [
    ({"rho": 0}, "optim.rho", "must be a positive number"),
    ({"rho": -0.1}, "optim.rho", "must be a positive number"),
    ({"rho": "big"}, "optim.rho", "must be a positive number"),
    ({"base": "sgdd"}, "optim.base", "unknown optimizer 'sgdd'; did you mean 'sgd'"),
    ({"base": "sam"}, "optim.base", "cannot be sam's base"),
    ({"second_pass_bn": "twice"}, "optim.second_pass_bn", "hold, update"),
    ({"adaptive": "yes"}, "optim.adaptive", "true or false"),
    ({"base": "adam", "momentum": 0.9}, "optim.momentum", "'adam' has no parameter 'momentum'"),
    ({"rh0": 0.1}, "optim.rh0", "did you mean 'rho'"),
])
def test_bad_parameters_stop_with_one_line_naming_the_key(optim, key, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        resolve(digits(optim={"name": "sam", **optim}))
    text = str(err.value)
    assert text.startswith(f"{key}: ") and message in text and "\n" not in text
    with pytest.raises(ConfigError):  # before anything is written
        train(digits(optim={"name": "sam", **optim}), tmp_path / "bad", quiet=True)
    assert not (tmp_path / "bad").exists()


def test_the_recipe_shape_and_its_defaults():
    """``optim: {name: sam}`` is SGD's CIFAR protocol around SAM; momentum and nesterov left
    null take the base's defaults, and adam is a base without them."""
    recipe = resolve(digits(optim={"name": "sam"}))
    assert recipe["optim"] == {"name": "sam", "rho": 0.05, "adaptive": False, "base": "sgd",
                               "second_pass_bn": "hold", "lr": 0.05, "weight_decay": 2e-4,
                               "momentum": None, "nesterov": None, "no_decay": []}
    w = torch.nn.Parameter(torch.ones(1))
    opt = OPTIMIZERS.build({"name": "sam", "momentum": 0.5}, params=[{"params": [w]}])
    group = opt.base_optimizer.param_groups[0]
    assert (type(opt.base_optimizer), group["momentum"], group["nesterov"],
            group["weight_decay"]) == (torch.optim.SGD, 0.5, False, 2e-4)
    adam = OPTIMIZERS.build({"name": "sam", "base": "adam", "lr": 1e-3},
                            params=[{"params": [w]}])
    assert type(adam.base_optimizer) is torch.optim.Adam and adam.param_groups[0]["rho"] == 0.05


def test_a_digits_run_trains_with_sam_and_a_mixing_augmentation(tmp_path):
    """End to end, with batch norm (held) and mixup drawn once per step for both passes."""
    recipe = resolve(digits(optim={"name": "sam", "rho": 0.05, "momentum": 0.9},
                            augment=[{"name": "mixup", "alpha": 1.0}], train={"epochs": 1}))
    results = train(recipe, tmp_path / "run", quiet=True)
    assert np.isfinite(results["history"][0]["loss"])
    assert results["top1"] > 10.0  # above chance on the 10 balanced test classes


@pytest.mark.long
def test_an_interrupted_sam_run_resumes_exactly(tmp_path):
    """The checkpoint holds the base optimizer's momentum: the resumed run equals the
    uninterrupted one."""
    recipe = resolve(digits(optim={"name": "sam", "rho": 0.1, "momentum": 0.9},
                            train={"epochs": 2, "batch_size": 128}))
    full = train(recipe, tmp_path / "full", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        # stopped in the last epoch, before its checkpoint
        train(recipe, tmp_path / "cut", logger=StopAfter(1))
    resumed = train(recipe, tmp_path / "cut", resume=True, quiet=True)
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in full["history"]]
    a = torch.load(tmp_path / "full" / "model-main.pt", map_location="cpu")
    b = torch.load(tmp_path / "cut" / "model-main.pt", map_location="cpu")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.long
def test_two_processes_match_one(tmp_path):
    """Under DDP both passes all-reduce: the perturbation is the global batch's, so two processes
    follow one (the distributed tests' batch-norm-free model and tolerances)."""
    from test_distributed import LOSS_RTOL, WEIGHT_ATOL, digits as ddp_digits, run_ranks, weights

    recipe = ddp_digits("optim.name=sam", "optim.rho=0.1", "train.epochs=2")
    one = train(recipe, tmp_path / "one", quiet=True)
    two = run_ranks(tmp_path, recipe, tmp_path / "two")
    assert two["processes"] == 2
    np.testing.assert_allclose([h["loss"] for h in two["history"]],
                               [h["loss"] for h in one["history"]], rtol=LOSS_RTOL)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=WEIGHT_ATOL, rtol=0)
