"""ABSGD (``absgd``): the formula against hand-computed and numpy values, the two-phase window,
the wrapped losses, mixed batches, several processes, its state and its errors.

Expected values are computed here in numpy (in plain exponential space where it cannot
overflow), or taken from the worked example computed by hand from the official code's formula
(qiqi-helloworld/ABSGD at a2b26f5, ``mylosses.py`` lines 40-54), never from the code under test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import assert_same_training, digits, resumed_run
from lttoolbox.batch import Batch
from lttoolbox.errors import ConfigError
from lttoolbox.losses import ABSGDLoss, LTLoss, mixed_loss
from lttoolbox.registry import LOSSES

COUNTS = [40, 20, 5, 1]
C = len(COUNTS)


class Given(LTLoss):
    """A toy per-sample loss: the target's logit, so the logits are the losses."""

    def per_sample(self, logits, target):
        return logits.gather(1, target[:, None]).squeeze(1)


def given(values, dtype=torch.float64):
    """Logits whose ``Given`` losses are ``values`` (target 0), requiring a gradient."""
    z = torch.zeros(len(values), 2, dtype=dtype)
    z[:, 0] = torch.as_tensor(values, dtype=dtype)
    return z.requires_grad_(True), torch.zeros(len(values), dtype=torch.long)


def absgd(**params):
    """``absgd`` around the toy loss (registered for the duration of the build)."""
    with LOSSES.scoped():
        LOSSES.register("given")(Given)
        return LOSSES.build({"name": "absgd", "loss": "given", **params}, num_classes=2)


def step(loss, z, y):
    """One training step's loss and its gradient; ``u`` committed as the trainer does."""
    value = loss(z, y)
    (grad,) = torch.autograd.grad(value, z)
    loss.after_step(None)
    return float(value.detach()), grad


def np_absgd(steps, lam, gamma, alpha, u_init):
    """The official code's recursion in numpy (float64), optionally started at the first batch:
    ``(loss, p, u)`` of each step for the per-sample losses of each step."""
    u, out = None, []
    for losses in steps:
        e = np.exp(np.asarray(losses, dtype=np.float64) / lam)
        g = alpha * e.mean()
        if u is None:
            u = g if u_init == "batch" else gamma * g
        else:
            u = (1 - gamma) * u + gamma * g
        p = e / (len(e) * u)
        out.append(((p * losses).sum(), p, u))
    return out


# --------------------------------------------------------------------------- the formula
def test_worked_example_of_the_official_code():
    """Losses (0.1, 0.5, 2.0), lam 1, gamma 0.9, alpha 1, u_0 = 0 (by hand)."""
    loss = absgd(lam=1.0, gamma=0.9, alpha=1.0, u_init="zero")
    z, y = given([0.1, 0.5, 2.0])
    value, grad = step(loss, z, y)
    assert float(loss.u) == pytest.approx(3.04288, abs=5e-5)
    # dL/dl_i = p_i: the weights are constants for the gradient
    np.testing.assert_allclose(grad[:, 0].numpy(), [0.12107, 0.18061, 0.80944], atol=5e-5)
    assert value == pytest.approx(1.72128, abs=5e-5)
    value, grad = step(loss, z, y)
    assert float(loss.u) == pytest.approx(3.34717, abs=5e-5)
    np.testing.assert_allclose(grad[:, 0].numpy(), [0.11006, 0.16419, 0.73585], atol=5e-5)
    assert value == pytest.approx(1.56480, abs=5e-5)


def test_first_step_starts_the_average_at_the_batch():
    """u_init batch: u_1 = alpha mean exp(l / lam), so the first weights are softmax(l / lam) /
    alpha (the fact sheet's gamma = 1 limit: 1.54915); the same losses keep u where it is."""
    loss = absgd(lam=1.0, gamma=0.9, alpha=1.0)
    z, y = given([0.1, 0.5, 2.0])
    for _ in range(2):
        value, grad = step(loss, z, y)
        assert value == pytest.approx(1.54915, abs=5e-5)
        np.testing.assert_allclose(grad[:, 0].numpy(), [0.10896, 0.16255, 0.72849], atol=5e-5)
        assert float(loss.u) == pytest.approx(3.38098, abs=5e-5)


@pytest.mark.parametrize("u_init", ["batch", "zero"])
@pytest.mark.parametrize("lam,gamma,alpha", [(1.0, 0.9, 1.0), (5.0, 0.7, 0.5), (0.3, 0.45, 0.3),
                                             (2.0, 1.0, 2.0)])
def test_random_batches_against_numpy(lam, gamma, alpha, u_init):
    rng = np.random.default_rng(int(lam * 10 + gamma * 100))
    batches = [rng.exponential(1.0, size=rng.integers(2, 9)) for _ in range(6)]
    expected = np_absgd(batches, lam, gamma, alpha, u_init)
    loss = absgd(lam=lam, gamma=gamma, alpha=alpha, u_init=u_init)
    for losses, (value, p, u) in zip(batches, expected):
        got, grad = step(loss, *given(losses))
        assert got == pytest.approx(value, rel=1e-6)
        np.testing.assert_allclose(grad[:, 0].numpy(), p, rtol=1e-6)
        assert float(loss.u) == pytest.approx(u, rel=1e-5)  # u is kept in float32


def test_no_gradient_through_the_weights_of_a_real_loss():
    """d L / d logits = sum_i p_i d l_i / d logits, p from numpy, d l_i from the wrapped loss."""
    loss = LOSSES.build({"name": "absgd", "loss": "ce", "lam": 0.7, "gamma": 0.6}, num_classes=C)
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(5, C, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    target = torch.tensor([0, 1, 2, 3, 1])
    per = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    jac = torch.stack([torch.autograd.grad(per[i], logits, retain_graph=True)[0]
                       for i in range(5)])
    (_, p, _), = np_absgd([per.detach().numpy()], 0.7, 0.6, 1.0, "batch")
    value = loss(logits, target)
    (grad,) = torch.autograd.grad(value, logits)
    expected = (torch.as_tensor(p)[:, None, None] * jac).sum(0)
    torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-9)
    # differentiating through the weights too would give another gradient
    e = torch.exp(per / 0.7)
    through = (e / e.sum() * per).sum()
    (other,) = torch.autograd.grad(through, logits)
    assert not torch.allclose(other, expected, atol=1e-4)


@pytest.mark.parametrize("u_init", ["batch", "zero"])
def test_huge_losses_stay_finite_and_exact(u_init):
    """Losses of 1000 with lam 1: exp overflows float32 (the official code gives NaN); the
    weights are softmax(l) / (gamma alpha) (zero) or / alpha (batch) exactly."""
    losses = np.array([1000.0, 1001.0, 999.0, 1000.0])
    naive = torch.exp(torch.tensor(losses, dtype=torch.float32))
    assert torch.isinf(naive).all()  # the code's exp(l / lam)
    gamma, alpha = 0.8, 0.5
    loss = absgd(lam=1.0, gamma=gamma, alpha=alpha, u_init=u_init)
    z, y = given(losses, dtype=torch.float32)
    value, grad = step(loss, z, y)
    soft = np.exp(losses - losses.max())
    soft /= soft.sum()
    p = soft / (alpha * (gamma if u_init == "zero" else 1.0))
    # float32 resolves l / lam near 1000 to 6e-5 (its spacing there): that is the tolerance
    np.testing.assert_allclose(grad[:, 0].numpy(), p, rtol=1e-4)
    assert value == pytest.approx(float((p * losses).sum()), rel=1e-4)
    mean = np.log(np.exp(losses - 1000).mean()) + 1000  # log mean exp, shifted by hand
    log_u = math.log(alpha) + mean + (math.log(gamma) if u_init == "zero" else 0.0)
    assert float(loss.log_u) == pytest.approx(log_u, rel=1e-6)
    assert math.isfinite(float(loss.log_u))


def test_u_carries_no_graph():
    loss = absgd(lam=1.0, u_init="zero")
    z, y = given([0.3, 1.0])
    loss(z, y)
    loss.after_step(None)
    assert loss.log_u.grad_fn is None and loss.log_u_next.grad_fn is None


# --------------------------------------------------------------------------- the two phases
def test_before_start_epoch_it_is_the_wrapped_loss_and_u_waits():
    inner_cfg = {"name": "ce", "weights": {"name": "effective_number", "beta": 0.99},
                 "weights_start_epoch": 2}
    loss = LOSSES.build({"name": "absgd", "loss": inner_cfg, "lam": 2.0, "start_epoch": 3},
                        class_counts=COUNTS, num_classes=C, total_epochs=6)
    plain = LOSSES.build(inner_cfg, class_counts=COUNTS, num_classes=C, total_epochs=6)
    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(6, C, generator=g), torch.tensor([0, 1, 2, 3, 3, 0])
    y_b = torch.tensor([3, 2, 1, 0, 1, 2])
    mixed = Batch(torch.zeros(6, 1), target, y_b, torch.rand(6, generator=g))
    for epoch in range(5):
        loss.before_epoch(epoch)
        plain.before_epoch(epoch)
        assert loss.active == (epoch >= 3) and loss.inner.weights_active == (epoch >= 2)
        per = loss(logits, target, reduction="none")
        assert torch.equal(per, plain(logits, target, reduction="none"))
        if epoch < 3:
            assert torch.equal(loss(logits, target), plain(logits, target))
            assert torch.equal(loss.normalizer(target), plain.normalizer(target))
            assert torch.equal(mixed_loss(loss, logits, mixed), mixed_loss(plain, logits, mixed))
            loss.after_step(None)
            assert float(loss.u) == 0.0  # u waits for the ABSGD phase
        else:
            (value, p, _), = np_absgd([per.numpy()], 2.0, 0.9, 1.0, "batch")
            assert float(loss(logits, target)) == pytest.approx(value, rel=1e-6)
            assert float(loss.normalizer(target)) == 6
            break


# --------------------------------------------------------------------------- every wrapped loss
@pytest.mark.parametrize("name", LOSSES.names())
def test_wraps_every_per_sample_loss(name):
    if not LOSSES.get(name).single_label:
        with pytest.raises(ConfigError, match=r"^loss\.loss\.name: absgd wraps a loss on "
                                              r"class-id targets"):
            LOSSES.build({"name": "absgd", "loss": {"name": name}}, num_classes=C)
        return  # refused before training (its formula: tests/test_multilabel_losses.py)
    if LOSSES.get(name).batch_weighted:
        pytest.skip(f"'{name}' weighs its samples by the batch itself: absgd refuses to wrap it "
                    f"(test_a_batch_weighted_loss_is_refused)")
    counts = dict(class_counts=COUNTS, num_classes=C, total_epochs=4)
    inner = LOSSES.build({"name": name}, **counts)
    loss = LOSSES.build({"name": "absgd", "loss": {"name": name}, "lam": 1.5, "gamma": 0.5,
                         "alpha": 0.8}, **counts)
    assert type(loss.inner) is type(inner)
    g = torch.Generator().manual_seed(2)
    target = torch.tensor([0, 1, 2, 3, 3, 0])
    batches = [torch.tanh(torch.randn(6, C, generator=g)) * 3 for _ in range(3)]
    per = [inner(z, target, reduction="none").detach().numpy() for z in batches]
    for z, (value, _p, u) in zip(batches, np_absgd(per, 1.5, 0.5, 0.8, "batch")):
        z = z.clone().requires_grad_(True)
        got = loss(z, target)
        got.backward()
        assert float(got.detach()) == pytest.approx(value, rel=1e-5)
        assert torch.isfinite(z.grad).all()
        loss.after_step(None)
        # log u: u itself passes float32's range for am_softmax's losses (s = 30)
        assert float(loss.log_u) == pytest.approx(math.log(u), rel=1e-6, abs=1e-6)


def test_a_batch_weighted_loss_is_refused():
    with pytest.raises(ConfigError, match=r"^loss\.loss\.name: absgd wraps a per-sample loss"):
        LOSSES.build({"name": "absgd", "loss": {"name": "absgd"}}, num_classes=C)


# --------------------------------------------------------------------------- mixed batches
def test_a_mixed_batch_weighs_each_samples_mixed_loss():
    inner_cfg = {"name": "ce", "weights": "inverse"}
    loss = LOSSES.build({"name": "absgd", "loss": inner_cfg, "lam": 1.0, "gamma": 0.7,
                         "alpha": 0.5}, class_counts=COUNTS, num_classes=C)
    inner = LOSSES.build(inner_cfg, class_counts=COUNTS, num_classes=C)
    g = torch.Generator().manual_seed(4)
    z = torch.randn(6, C, generator=g, dtype=torch.float64).requires_grad_(True)
    y_a, y_b = torch.tensor([0, 1, 2, 3, 3, 0]), torch.tensor([3, 2, 1, 0, 1, 2])
    lam = torch.tensor([0.0, 0.2, 0.5, 0.7, 1.0, 0.4])
    l_a = inner(z, y_a, reduction="none")
    l_b = inner(z, y_b, reduction="none")
    mixed_np = (lam * l_a + (1 - lam) * l_b).detach().numpy()
    (value, p, _), = np_absgd([mixed_np], 1.0, 0.7, 0.5, "batch")
    got = mixed_loss(loss, z, Batch(torch.zeros(6, 1), y_a, y_b, lam))
    assert float(got.detach()) == pytest.approx(value, rel=1e-6)
    (grad,) = torch.autograd.grad(got, z)
    p = torch.as_tensor(p)
    expected = torch.autograd.grad((p * (lam * l_a + (1 - lam) * l_b)).sum(), z)[0]
    torch.testing.assert_close(grad, expected)


# --------------------------------------------------------------------------- several processes
WORLD = 2


def _rank_worker(rank, init_file, out):
    from lttoolbox.engine.distributed import World, global_normalizer

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        torch.manual_seed(0)
        logits, y_a, y_b, lam = _batches()
        loss = LOSSES.build({"name": "absgd", "loss": {"name": "ce", "weights": "inverse"},
                             "lam": 1.0, "gamma": 0.6}, class_counts=COUNTS, num_classes=C)
        normalize = global_normalizer(World(rank, WORLD))
        grads = []
        for z, a, b, m in zip(logits, y_a, y_b, lam):
            part = slice(rank * 4, rank * 4 + 4)
            z = z[part].clone().requires_grad_(True)
            value = mixed_loss(loss, z, Batch(torch.zeros(4, 1), a[part], b[part], m[part]),
                               normalize)
            value.backward()
            loss.after_step(None)
            grads.append(z.grad)
        torch.save({"grads": grads, "log_u": loss.log_u}, f"{out}.rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _batches():
    g = torch.Generator().manual_seed(5)
    logits = [torch.randn(8, C, generator=g, dtype=torch.float64) * 2 for _ in range(3)]
    y_a = [torch.randint(0, C, (8,), generator=g) for _ in range(3)]
    y_b = [torch.randint(0, C, (8,), generator=g) for _ in range(3)]
    lam = [torch.rand(8, generator=g, dtype=torch.float64) for _ in range(3)]
    return logits, y_a, y_b, lam


@pytest.mark.long
def test_two_processes_compute_the_global_batch(tmp_path):
    """Each process holds half of every batch; DDP's mean of their gradients is the gradient of
    the whole batch in one process, and both keep the one-process u."""
    out = tmp_path / "absgd"
    mp.spawn(_rank_worker, args=(str(tmp_path / "init"), str(out)), nprocs=WORLD, join=True)
    ranks = [torch.load(f"{out}.rank{r}.pt") for r in range(WORLD)]
    loss = LOSSES.build({"name": "absgd", "loss": {"name": "ce", "weights": "inverse"},
                         "lam": 1.0, "gamma": 0.6}, class_counts=COUNTS, num_classes=C)
    for i, (z, a, b, m) in enumerate(zip(*_batches())):
        z = z.clone().requires_grad_(True)
        mixed_loss(loss, z, Batch(torch.zeros(8, 1), a, b, m)).backward()
        loss.after_step(None)
        # DDP averages the ranks' gradients; rank r's rows are its own samples
        got = torch.cat([ranks[r]["grads"][i] for r in range(WORLD)]) / WORLD
        torch.testing.assert_close(got, z.grad, rtol=1e-6, atol=1e-9)
    for r in range(WORLD):
        assert float(ranks[r]["log_u"]) == pytest.approx(float(loss.log_u), rel=1e-6)


# --------------------------------------------------------------------------- state
def test_state_dict_round_trip_continues_exactly():
    rng = np.random.default_rng(7)
    batches = [rng.exponential(1.0, size=5) for _ in range(5)]
    full = absgd(lam=0.8, gamma=0.3, alpha=0.5)
    values = [step(full, *given(b))[0] for b in batches]
    first = absgd(lam=0.8, gamma=0.3, alpha=0.5)
    for b in batches[:3]:
        step(first, *given(b))
    state = first.state_dict()
    assert set(state) == {"log_u"}  # the wrapped loss's buffers derive from the recipe
    resumed = absgd(lam=0.8, gamma=0.3, alpha=0.5)
    resumed.load_state_dict(state)
    assert [step(resumed, *given(b))[0] for b in batches[3:]] == values[3:]
    # without the state, the resumed steps would differ
    fresh = absgd(lam=0.8, gamma=0.3, alpha=0.5)
    assert [step(fresh, *given(b))[0] for b in batches[3:]] != values[3:]


def test_u_advances_once_per_step_however_often_the_loss_is_evaluated():
    """A two-pass optimizer evaluates the closure twice: u moves once, by the last pass."""
    once, twice = absgd(lam=1.0, gamma=0.5), absgd(lam=1.0, gamma=0.5)
    rng = np.random.default_rng(8)
    for _ in range(3):
        losses = rng.exponential(1.0, size=4)
        once(*given(losses))
        twice(*given(losses * 3))
        twice(*given(losses))
        once.after_step(None)
        twice.after_step(None)
        assert torch.equal(once.log_u, twice.log_u)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("params,key", [
    ({"lam": 0.0}, "loss.lam"), ({"lam": -1.0}, "loss.lam"), ({"lam": "5"}, "loss.lam"),
    ({"gamma": 0.0}, "loss.gamma"), ({"gamma": 1.5}, "loss.gamma"),
    ({"alpha": 0.0}, "loss.alpha"), ({"alpha": -0.5}, "loss.alpha"),
    ({"start_epoch": -1}, "loss.start_epoch"), ({"u_init": "one"}, "loss.u_init"),
    ({"loss": {"name": "ce", "label_smoothing": 1.0}}, "loss.loss.label_smoothing"),
    ({"loss": {"name": "ce", "smoothing": 0.1}}, "loss.loss.smoothing"),
    ({"loss": {"name": "cee"}}, "loss.loss.name"),
    ({"loss": [1, 2]}, "loss.loss"),
    ({"lamda": 5}, "loss.lamda"),
])
def test_bad_parameters_give_one_line_naming_the_key(params, key):
    with pytest.raises(ConfigError) as err:
        LOSSES.build({"name": "absgd", **params}, class_counts=COUNTS, num_classes=C)
    message = str(err.value)
    assert message.startswith(key + ":") and "\n" not in message


def test_the_key_is_complete_in_a_later_phase(tmp_path):
    from lttoolbox.recipe import resolve
    from lttoolbox.engine.trainer import Trainer

    recipe = resolve(digits(phases=[{"name": "a"}, {"name": "b", "loss": {
        "name": "absgd", "loss": {"name": "focal", "gamma": -1.0}}}]))
    with pytest.raises(ConfigError, match=r"^phases\[1\]\.loss\.loss\.gamma: "):
        Trainer(recipe, tmp_path / "run")


# --------------------------------------------------------------------------- the official package
def test_matches_the_absgd_package_when_installed():
    """An independent implementation: the ``absgd`` package's ``ABLoss`` (0.0.1), which starts
    from u_0 = 0, on random CE batches."""
    ablosses = pytest.importorskip("absgd.losses", reason="the absgd package is not installed "
                                   "(optional independent check: pip install absgd)")
    g = torch.Generator().manual_seed(9)
    theirs = ablosses.ABLoss(2.0, criterion=torch.nn.CrossEntropyLoss(reduction="none"),
                             abgamma=0.6, abalpha=0.5)
    theirs.updateLambda()  # milestone 0: ABSGD from the first call on
    ours = LOSSES.build({"name": "absgd", "loss": "ce", "lam": 2.0, "gamma": 0.6, "alpha": 0.5,
                         "u_init": "zero"}, num_classes=C)
    for _ in range(4):
        z, y = torch.randn(8, C, generator=g) * 3, torch.randint(0, C, (8,), generator=g)
        assert float(ours(z, y)) == pytest.approx(float(theirs(z, y)), rel=1e-5)
        ours.after_step(None)


# --------------------------------------------------------------------------- end to end
@pytest.mark.long
def test_digits_run_switches_to_absgd_and_resumes_exactly(tmp_path, monkeypatch):
    from lttoolbox.engine import train
    from lttoolbox.recipe import resolve

    recipe = resolve(digits(train={"epochs": 3}, loss={
        "name": "absgd", "lam": 2.0, "gamma": 0.7, "alpha": 0.5, "start_epoch": 1,
        "loss": {"name": "ce", "weights": {"name": "effective_number", "beta": 0.999},
                 "weights_start_epoch": 1}}))
    seen = []
    original = ABSGDLoss.batch_loss

    def spy(self, logits, batch, normalize=None):
        seen.append((self.epoch, self.active, float(self.log_u)))
        return original(self, logits, batch, normalize)

    monkeypatch.setattr(ABSGDLoss, "batch_loss", spy)
    full = train(recipe, tmp_path / "full", quiet=True)
    assert math.isfinite(full["top1"])
    assert all(active == (epoch >= 1) for epoch, active, _ in seen)
    assert all(log_u == -math.inf for epoch, _, log_u in seen if epoch == 0)
    assert all(math.isfinite(log_u) for epoch, _, log_u in seen if epoch == 2)
    assert_same_training(resumed_run(recipe, tmp_path / "cut", stop_after=2), full)


@pytest.mark.long
def test_the_compiled_step_keeps_u_as_the_eager_one(tmp_path, monkeypatch):
    """``u`` is written in the forward pass (a buffer copy) and committed after the step: through
    torch.compile (here the aot_eager backend, on the CPU) the run is the eager one."""
    import warnings

    import lttoolbox.engine.compile as compile_module
    from lttoolbox.engine import train
    from lttoolbox.recipe import resolve

    loss = {"name": "absgd", "lam": 5.0, "gamma": 0.7, "alpha": 0.5, "start_epoch": 1,
            "loss": {"name": "ce", "weights": "inverse", "weights_start_epoch": 1}}
    eager = train(resolve(digits(train={"epochs": 2}, loss=loss)), tmp_path / "eager",
                  quiet=True)
    torch._dynamo.reset()
    monkeypatch.setattr(compile_module, "BACKEND", "aot_eager")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a failed compile warns
            compiled = train(resolve(digits(train={"epochs": 2, "compile": "on"}, loss=loss)),
                             tmp_path / "compiled", quiet=True)
    finally:
        torch._dynamo.reset()
    assert compiled["history"][0]["compile_seconds"] > 0
    np.testing.assert_allclose([h["loss"] for h in compiled["history"]],
                               [h["loss"] for h in eager["history"]], rtol=1e-5)
    states = [torch.load(tmp_path / run / "checkpoint.pt", weights_only=False)["components"]
              for run in ("eager", "compiled")]
    logs = [next(s["log_u"] for s in state if isinstance(s, dict) and "log_u" in s)
            for state in states]
    assert math.isfinite(float(logs[0])) and float(logs[1]) == pytest.approx(float(logs[0]),
                                                                            rel=1e-5)


def test_a_wrapped_loss_keeps_what_it_needs_and_withholds():
    """Wrapping AutoBalance: the wrapper reads the validation split as it does, and its learned
    adjustments stay out of the main step."""
    counts = dict(class_counts=COUNTS, num_classes=C, total_epochs=4)
    inner = LOSSES.build({"name": "autobalance"}, **counts)
    loss = LOSSES.build({"name": "absgd", "loss": {"name": "autobalance"}}, **counts)
    assert loss.needs_validation is True and inner.needs_validation is True
    assert {id(p) for p in loss.frozen_parameters()} == {id(p) for p in loss.inner.parameters()}
    assert list(loss.inner.parameters()) and not list(LOSSES.build(
        {"name": "absgd", "loss": {"name": "ce"}}, **counts).frozen_parameters())
