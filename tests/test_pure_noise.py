"""OPeN (``open_noise``) and DAR-BN (``dar_bn``): the replacement probabilities exactly and by
frequency, the noise's distribution, DAR-BN against numpy (natural and noise rows, running
statistics and affine gradients from natural rows only), all-natural and all-noise batches,
evaluation as plain BatchNorm, refusals, the digits end to end, exact resume and two
processes."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import ROOT, StopAfter, digits, eager_and_compiled, on_digits
from lttoolbox.api import Context
from lttoolbox.augment.dar_bn import DARBN, DARBatchNorm, dar_batch_norm
from lttoolbox.augment.pure_noise import OPeN
from lttoolbox.batch import Batch
from lttoolbox.engine import train
from lttoolbox.errors import ConfigError
from lttoolbox.models import DigitsCNN
from lttoolbox.recipe import read_recipe, resolve
from lttoolbox.registry import AUGMENTS

NOISE = [{"name": "open_noise", "start_epoch": 1}, {"name": "dar_bn"}]


def open_noise(counts, norm_mean=(0.5,), norm_std=(0.25,), **params) -> OPeN:
    """The entry as a recipe builds it, with the data's normalisation ``norm_mean/std``."""
    part = AUGMENTS.build({"name": "open_noise", **params},
                          **Context.from_counts(counts).as_kwargs())
    part.set_normalisation(norm_mean, norm_std)
    part.before_epoch(part.start_epoch)
    return part


def replaced(part: OPeN, x: torch.Tensor, y: torch.Tensor) -> Batch:
    step = SimpleNamespace(batch=Batch.plain(x, y, index=torch.arange(len(y))))
    part.before_step(step)
    return step.batch


# ------------------------------------------------------------------------------ OPeN: the rule
def test_replacement_probabilities_are_delta_times_one_minus_the_count_ratio():
    # by hand: (1 - [100, 10, 1] / 100) / 3 and (1 - [8, 4, 2] / 8) / 2
    assert open_noise([100, 10, 1]).probabilities.tolist() == pytest.approx([0.0, 0.3, 0.33])
    part = open_noise([8, 4, 2], delta=0.5)
    assert part.probabilities.tolist() == [0.0, 0.25, 0.375]
    assert open_noise([5, 5], delta=1.0).probabilities.tolist() == [0.0, 0.0]


def test_replacement_frequencies_match_the_probabilities():
    """60,000 samples of each class: the replaced share within 4 binomial standard deviations of
    delta (1 - n_y / n_max); the head class never."""
    torch.manual_seed(0)
    part = open_noise([100, 10, 1])
    per_class = 60_000
    y = torch.arange(3).repeat_interleave(per_class)
    batch = replaced(part, torch.zeros(len(y), 1, 1, 1), y)
    for label, p in enumerate([0.0, 0.3, 1 / 3 * 0.99]):
        share = batch.synthetic[y == label].float().mean().item()
        sd = math.sqrt(p * (1 - p) / per_class)
        assert abs(share - p) <= 4 * sd, (label, share, p)
    assert not batch.synthetic[y == 0].any()


def test_labels_index_and_natural_rows_are_kept():
    torch.manual_seed(1)
    part = open_noise([10, 1], delta=1.0)  # class 1: p = 0.9
    x = torch.randn(64, 1, 4, 4)
    y = torch.arange(2).repeat(32)
    batch = replaced(part, x, y)
    noise = batch.synthetic
    assert noise.dtype == torch.bool and noise.shape == (64,) and noise.any()
    assert torch.equal(batch.y_a, y) and batch.y_b is batch.y_a and not batch.mixed
    assert torch.equal(batch.index, torch.arange(64))
    assert torch.equal(batch.x[~noise], x[~noise])
    assert not torch.equal(batch.x[noise], x[noise])


def test_the_mark_is_none_by_default_and_survives_a_mixing_hook():
    assert Batch.plain(torch.zeros(2, 1), torch.zeros(2)).synthetic is None
    torch.manual_seed(4)
    mask = torch.tensor([True, False, False, True])
    x = torch.randn(4, 1, 2, 2)
    batch = Batch.plain(x, torch.arange(4)).replace(synthetic=mask)
    _, mixed = AUGMENTS.build({"name": "mixup"})(x, batch)
    assert mixed.mixed and mixed.synthetic is mask  # each row keeps its own image's flag


def test_outside_its_window_the_batch_is_untouched():
    part = open_noise([10, 1], delta=1.0, start_epoch=2)
    part.before_epoch(1)
    step = SimpleNamespace(batch=Batch.plain(torch.zeros(4, 1, 2, 2), torch.tensor([1] * 4)))
    before = step.batch
    part.before_step(step)
    assert step.batch is before and before.synthetic is None


def clipped_normal_moments(mean: float, std: float, samples: int = 2_000_000):
    """Mean and std of clip(N(mean, std), 0, 1), and its mass at 0 and at 1 (numpy, apart from
    the code under test)."""
    v = np.clip(np.random.default_rng(0).normal(mean, std, samples), 0.0, 1.0)
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    return v.mean(), v.std(), phi((0 - mean) / std), 1 - phi((1 - mean) / std)


@pytest.mark.parametrize("noise", [None, {"mean": [0.5, 0.1, 0.9], "std": [0.2, 0.3, 0.5]}])
def test_noise_is_a_clipped_normal_per_channel_normalised_as_the_images(noise):
    """Pixels (the input un-normalised with the data's statistics) follow clip(N(m_c, s_c), 0,
    1): the data's statistics by default, the given ones otherwise."""
    norm_mean, norm_std = (0.2, 0.5, 0.7), (0.1, 0.3, 0.25)
    part = open_noise([10, 1], norm_mean, norm_std, **(noise or {}))
    torch.manual_seed(2)
    x = part.noise_like(torch.zeros(64, 3, 32, 32))
    pixels = (x * torch.tensor(norm_std).view(1, 3, 1, 1)
              + torch.tensor(norm_mean).view(1, 3, 1, 1)).double()
    means = noise["mean"] if noise else norm_mean
    stds = noise["std"] if noise else norm_std
    for c in range(3):
        values = pixels[:, c].flatten()
        mean, std, at0, at1 = clipped_normal_moments(means[c], stds[c])
        n = values.numel()
        assert values.min() >= -1e-6 and values.max() <= 1 + 1e-6
        # 4 standard errors of each estimate (a share's: the binomial sd)
        assert values.mean().item() == pytest.approx(mean, abs=4 * std / math.sqrt(n))
        assert values.std().item() == pytest.approx(std, abs=5 * std / math.sqrt(n))
        for share, p in (((values < 1e-6).double().mean().item(), at0),
                         ((values > 1 - 1e-6).double().mean().item(), at1)):
            assert share == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n) + 1e-9)
    # independent pixels: neighbouring pixels uncorrelated
    flat = pixels[:, 0].flatten(1)
    assert abs(np.corrcoef(flat[:, :-1].flatten(), flat[:, 1:].flatten())[0, 1]) < 0.01


def test_draws_come_from_torchs_global_generator():
    part = open_noise([10, 1], delta=1.0)
    x, y = torch.zeros(16, 1, 4, 4), torch.tensor([0, 1] * 8)
    torch.manual_seed(3)
    a = replaced(part, x, y)
    torch.manual_seed(3)
    b = replaced(part, x, y)
    c = replaced(part, x, y)
    assert torch.equal(a.x, b.x) and torch.equal(a.synthetic, b.synthetic)
    assert not torch.equal(b.x, c.x)


# ------------------------------------------------------------------------ DAR-BN against numpy
def numpy_bn(x: np.ndarray, eps: float):
    """(x - mean) / sqrt(biased var + eps) per channel over all axes but 1, and the unbiased
    variance, in float64."""
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    n = x.size / x.shape[1]
    return (x - mean) / np.sqrt(var + eps), mean.ravel(), var.ravel() * n / (n - 1)


def routed_layer(channels=3, seed=0, gradient="activations"):
    """A BatchNorm2d with random affine, swapped for a routing layer; returns (model, part)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(channels))
    with torch.no_grad():
        model[0].weight.uniform_(0.5, 2.0)
        model[0].bias.uniform_(-1.0, 1.0)
        model[0].running_mean.uniform_(-1, 1)
        model[0].running_var.uniform_(0.5, 2)
    part = DARBN(noise_gradient=gradient)
    part.before_run(SimpleNamespace(model=model))
    return model, part


def forward(model, part, x, noise):
    batch = Batch.plain(x, torch.zeros(len(x), dtype=torch.long))
    part(x, batch.replace(synthetic=noise))
    return model(x)


@pytest.mark.parametrize("gradient", ["activations", "none"])
def test_dar_bn_matches_numpy_rows_running_statistics_and_affine_gradients(gradient):
    model, part = routed_layer(gradient=gradient)
    layer = model[0]
    assert isinstance(layer, DARBatchNorm)
    gamma = layer.weight.detach().numpy().astype(np.float64)
    beta = layer.bias.detach().numpy().astype(np.float64)
    r_mean = layer.running_mean.numpy().astype(np.float64).copy()
    r_var = layer.running_var.numpy().astype(np.float64).copy()
    torch.manual_seed(5)
    x = (torch.randn(7, 3, 4, 5) * 2 + 1).requires_grad_()
    x_noise_scale = torch.tensor([1.0, 1, 1, 1, 5, 5, 5]).view(7, 1, 1, 1)
    x_in = x * x_noise_scale
    noise = torch.tensor([False, True, False, False, True, True, False])
    out = forward(model, part, x_in, noise)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()

    xs = x_in.detach().double().numpy()
    nat, noi = ~noise.numpy(), noise.numpy()
    hat_nat, mean_nat, unbiased_nat = numpy_bn(xs[nat], 1e-5)
    hat_noi, _, _ = numpy_bn(xs[noi], 1e-5)
    g, b = gamma.reshape(1, 3, 1, 1), beta.reshape(1, 3, 1, 1)
    expected = np.empty_like(xs)
    expected[nat] = hat_nat * g + b
    expected[noi] = hat_noi * g + b
    np.testing.assert_allclose(out.detach().double().numpy(), expected, rtol=1e-5, atol=1e-5)
    # running statistics: momentum 0.1 towards the natural rows' mean and unbiased variance
    np.testing.assert_allclose(layer.running_mean.double().numpy(),
                               0.9 * r_mean + 0.1 * mean_nat, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.running_var.double().numpy(),
                               0.9 * r_var + 0.1 * unbiased_nat, rtol=1e-5, atol=1e-6)
    assert int(layer.num_batches_tracked) == 1
    # the affine learns from the natural rows only
    up = upstream.double().numpy()
    np.testing.assert_allclose(layer.weight.grad.double().numpy(),
                               (up[nat] * hat_nat).sum(axis=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.bias.grad.double().numpy(),
                               up[nat].sum(axis=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    # the input gradient: natural rows always; noise rows only with noise_gradient activations
    grad = x.grad.abs().flatten(1).sum(1)
    assert (grad[~noise] > 0).all()
    if gradient == "activations":
        assert (grad[noise] > 0).all()
    else:
        assert (grad[noise] == 0).all()


def test_batch_norm_1d_layers_are_routed_too():
    """A (B, C) input of a BatchNorm1d (a head's feature norm): the same routing."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    part = DARBN()
    part.before_run(SimpleNamespace(model=model))
    torch.manual_seed(9)
    x = torch.randn(6, 3)
    noise = torch.tensor([True, False, False, True, False, True])
    h = model[0](x).detach().double().numpy()
    out = forward(model, part, x, noise).detach().double().numpy()
    for rows in (noise.numpy(), ~noise.numpy()):
        hat = (h[rows] - h[rows].mean(0)) / np.sqrt(h[rows].var(0) + 1e-5)
        np.testing.assert_allclose(out[rows], hat, atol=1e-5)  # gamma 1, beta 0
    np.testing.assert_allclose(model[1].running_mean.double().numpy(),
                               0.1 * h[~noise.numpy()].mean(0), atol=1e-6)


def test_the_worked_example():
    """One channel, gamma 2, beta 0.5: natural [1, 3] (mean 2, var 1), noise [10, 14] (mean 12,
    var 4); running mean 0 -> 0.2, running var 1 -> 0.9 + 0.1 * 2 = 1.1 (by hand)."""
    x = torch.tensor([1.0, 10.0, 3.0, 14.0]).view(4, 1, 1, 1)
    noise = torch.tensor([False, True, False, True])
    mean, var, tracked = torch.zeros(1), torch.ones(1), torch.zeros((), dtype=torch.long)
    out = dar_batch_norm(x, noise, torch.tensor([2.0]), torch.tensor([0.5]), mean, var, tracked)
    expected = [-1 / math.sqrt(1 + 1e-5) * 2 + 0.5, -2 / math.sqrt(4 + 1e-5) * 2 + 0.5,
                1 / math.sqrt(1 + 1e-5) * 2 + 0.5, 2 / math.sqrt(4 + 1e-5) * 2 + 0.5]
    assert out.flatten().tolist() == pytest.approx(expected, abs=1e-6)
    assert mean.item() == pytest.approx(0.2) and var.item() == pytest.approx(1.1)
    assert int(tracked) == 1


def test_an_all_natural_batch_is_plain_batch_norm():
    model, part = routed_layer(seed=1)
    plain = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    plain.load_state_dict(model.state_dict())
    torch.manual_seed(6)
    x = torch.randn(5, 3, 4, 4)
    out = forward(model, part, x, torch.zeros(5, dtype=torch.bool))
    torch.testing.assert_close(out, plain(x), rtol=1e-5, atol=1e-5)
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=1e-5, atol=1e-6)


def test_an_all_noise_batch_leaves_the_running_statistics_and_the_affine_alone():
    model, part = routed_layer(seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    x = torch.randn(4, 3, 4, 4, requires_grad=True)
    out = forward(model, part, x, torch.ones(4, dtype=torch.bool))
    hat, _, _ = numpy_bn(x.detach().double().numpy(), 1e-5)
    gamma = model[0].weight.detach().double().numpy().reshape(1, 3, 1, 1)
    beta = model[0].bias.detach().double().numpy().reshape(1, 3, 1, 1)
    np.testing.assert_allclose(out.detach().double().numpy(), hat * gamma + beta, atol=1e-5)
    out.sum().backward()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(model[0].weight.grad, torch.zeros(3))
    assert torch.isfinite(x.grad).all()


def test_without_a_mask_and_in_evaluation_the_layer_is_plain_batch_norm_bit_for_bit():
    model, part = routed_layer(seed=3)
    plain = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    plain.load_state_dict(model.state_dict())
    x = torch.randn(6, 3, 4, 4)
    assert torch.equal(forward(model, part, x, None), plain(x))   # training, no noise marked
    model.eval(), plain.eval()
    assert torch.equal(forward(model, part, x, torch.ones(6, dtype=torch.bool)), plain(x))


def test_the_model_keeps_its_state_dict_and_gets_plain_layers_back():
    """Routing layers share the plain layers' tensors: same keys, and after training the weights
    load into a plain model, which evaluates exactly as the routed one; after the run the plain
    layers are back and hold what was trained."""
    torch.manual_seed(8)
    model = DigitsCNN(num_classes=3)
    keys = list(model.state_dict())
    part = DARBN()
    part.before_run(SimpleNamespace(model=model))
    assert sum(isinstance(m, DARBatchNorm) for m in model.modules()) == 2
    assert list(model.state_dict()) == keys
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
        batch = Batch.plain(x, y).replace(synthetic=torch.arange(8) % 3 == 0)
        logits, _ = model.forward_hooked(batch, {"input": part})
        torch.nn.functional.cross_entropy(logits, y).backward()
        opt.step(), opt.zero_grad()
        part.after_step(None)
    plain = DigitsCNN(num_classes=3)
    plain.load_state_dict(model.state_dict(), strict=True)
    model.eval(), plain.eval()
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(model(x), plain(x))
    part.after_run(None)
    assert not any(isinstance(m, DARBatchNorm) for m in model.modules())
    assert torch.equal(model(x), plain(x))


def test_two_phases_components_share_one_router():
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(2))
    first, second = DARBN(), DARBN(noise_gradient="none")
    for part in (first, second):
        part.before_run(SimpleNamespace(model=model))
    assert first.router is second.router is model[0].router


# ------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("params,key", [
    ({"delta": -0.1}, "delta"), ({"delta": 1.5}, "delta"), ({"delta": "1/3"}, "delta"),
    ({"mean": [0.5]}, "std"), ({"std": [0.5]}, "mean"), ({"mean": [1.5], "std": [0.2]}, "mean"),
    ({"mean": [0.5], "std": [0.0]}, "std"), ({"mean": [0.5, 0.5], "std": [0.2]}, "std"),
    ({"start_epoch": -1}, "start_epoch"),
])
def test_bad_noise_parameters_are_one_line_naming_the_key(params, key):
    with pytest.raises(ConfigError, match=key) as err:
        open_noise([10, 1], **params)
    assert "\n" not in str(err.value)


def test_bad_dar_bn_parameters_and_models_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="noise_gradient"):
        AUGMENTS.build({"name": "dar_bn", "noise_gradient": "all"})
    with pytest.raises(ConfigError, match="has none") as err:
        DARBN().before_run(SimpleNamespace(model=DigitsCNN(num_classes=3, batch_norm=False)))
    assert "\n" not in str(err.value)
    sync = torch.nn.Sequential(torch.nn.SyncBatchNorm(2))
    with pytest.raises(ConfigError, match="SyncBatchNorm"):
        DARBN().before_run(SimpleNamespace(model=sync))
    with pytest.raises(ConfigError, match="class counts"):
        OPeN()


def test_a_bad_mask_or_a_hook_that_adds_rows_is_named():
    model, part = routed_layer()
    x = torch.randn(4, 3, 2, 2)
    with pytest.raises(ValueError, match="synthetic"):
        forward(model, part, x, torch.tensor([0, 1, 0, 1]))
    part(x, Batch.plain(x, torch.zeros(4)).replace(synthetic=torch.zeros(4, dtype=torch.bool)))
    with pytest.raises(RuntimeError, match="added or dropped rows"):
        model(torch.randn(6, 3, 2, 2))


def test_a_model_without_batch_norm_is_refused_before_training(tmp_path):
    recipe = resolve(digits(model={"name": "digits_cnn", "batch_norm": False}, augment=NOISE))
    with pytest.raises(ConfigError, match="dar_bn") as err:
        train(recipe, tmp_path / "run", quiet=True)
    assert str(err.value).startswith("augment[1]: dar_bn cannot train model.name 'digits_cnn': ")
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------- end to end
def test_the_recipe_runs_on_the_digits(tmp_path, monkeypatch):
    """The shipped recipe on the digits (sampler and noise switched on at epoch 1): noise
    replaces samples in epoch 1 only, the run's exported weights load into the plain model."""
    counts = []
    original = OPeN.replace

    def counting(self, batch):
        out = original(self, batch)
        counts.append((self.epoch, int(out.synthetic.sum())))
        return out

    monkeypatch.setattr(OPeN, "replace", counting)
    recipe = on_digits(read_recipe(ROOT / "configs" / "cifar10_lt" / "open_noise.yaml"))
    results = train(resolve(recipe), tmp_path / "run", quiet=True)
    assert {epoch for epoch, _ in counts} == {1} and sum(n for _, n in counts) > 0
    assert results["top1"] > 15.0  # chance is 10 %
    weights = torch.load(tmp_path / "run" / "model-main.pt", weights_only=True)
    model = DigitsCNN(num_classes=10)
    model.load_state_dict(weights, strict=True)


def test_the_step_cost_benchmark_times_noise_routed_by_dar_bn(tmp_path, monkeypatch):
    """benchmarks/throughput.py --pure-noise: the timed step replaces samples and routes them
    through DAR-BN (the noise and the routed layers run), and the model gets plain layers back;
    one step each here, the figures are for the benchmark."""
    import runpy

    import lttoolbox.augment.dar_bn as dar_bn_module
    from lttoolbox.engine.trainer import Trainer

    script = runpy.run_path(str(ROOT / "benchmarks" / "throughput.py"))
    recipe = resolve(digits())
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    calls, routed = [], []
    replace, route = OPeN.replace, dar_bn_module.dar_batch_norm
    monkeypatch.setattr(OPeN, "replace", lambda self, b: calls.append(1) or replace(self, b))
    monkeypatch.setattr(dar_bn_module, "dar_batch_norm",
                        lambda *a, **k: routed.append(1) or route(*a, **k))
    figures = script["time_pure_noise"](trainer, recipe, 1, 1)
    assert set(figures) == {"plain", "open_noise+dar_bn"} and all(v > 0 for v in figures.values())
    assert len(calls) == 2 and len(routed) == 2 * 2  # two steps, two BatchNorm layers


@pytest.mark.long
def test_resume_inside_the_window_matches(tmp_path):
    """Stopped at the end of epoch 2 (before its checkpoint) and resumed from epoch 1's: the
    coins and the noise continue torch's checkpointed stream."""
    recipe = resolve(digits(train={"epochs": 3, "checkpoint_every": 1},
                            sampler={"name": "class_balanced", "start_epoch": 1},
                            augment=NOISE))
    full = train(recipe, tmp_path / "full", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "cut", logger=StopAfter(2))
    resumed = train(recipe, tmp_path / "cut", resume=True, quiet=True)
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in full["history"]]
    assert resumed["per_class_acc"] == full["per_class_acc"]


@pytest.mark.long
def test_two_processes_train_with_per_process_statistics(tmp_path):
    """Under DDP each process routes its own share of the batch (per-process statistics, as
    plain BatchNorm); the run finishes, every rank reports the same evaluation (run_ranks
    checks), and the checkpointed weights load into the plain model."""
    from test_distributed import DIGITS as DDP_DIGITS
    from test_distributed import run_ranks, weights

    recipe = resolve({**DDP_DIGITS, "model": {"name": "digits_cnn"},
                      "train": {**DDP_DIGITS["train"], "epochs": 2},
                      "sampler": {"name": "class_balanced", "start_epoch": 1},
                      "augment": NOISE})
    two = run_ranks(tmp_path, recipe, tmp_path / "two")
    assert two["processes"] == 2 and all(np.isfinite(r["loss"]) for r in two["history"])
    DigitsCNN(num_classes=10).load_state_dict(weights(tmp_path / "two"), strict=True)


@pytest.mark.long
def test_the_compiled_step_trains_as_the_eager_one(tmp_path, monkeypatch):
    """The noise is drawn outside the compiled step and DAR-BN's masked statistics have fixed
    shapes: the step compiles (no fallback) and trains as the eager one."""
    eager_and_compiled(monkeypatch, tmp_path, digits(
        train={"epochs": 1}, augment=[{"name": "open_noise"}, {"name": "dar_bn"}]))

