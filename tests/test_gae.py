"""Guiding adversarial examples (``gae``): the attack against hand computations, the tail and
the per-sample crossing check, the adversarial term against numpy, the clean batch untouched,
batch-norm statistics left alone, bad parameters, resume, two processes and the recipe on the
digits."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import ROOT, StopAfter, digits, eager_and_compiled, on_digits
from lttoolbox.api import Context
from lttoolbox.augment.gae import GuidingAdversarialExamples, tail_mask
from lttoolbox.batch import Batch
from lttoolbox.engine import train
from lttoolbox.errors import ConfigError
from lttoolbox.recipe import read_recipe, resolve
from lttoolbox.registry import AUGMENTS

EPS = 1 / 255


class Linear(torch.nn.Module):
    """logits = W x + b on a (B, 1, 1, D) input."""

    def __init__(self, weight, bias=None):
        super().__init__()
        weight = torch.as_tensor(weight, dtype=torch.float32)
        self.fc = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.copy_(torch.zeros(weight.shape[0]) if bias is None
                               else torch.as_tensor(bias, dtype=torch.float32))

    def forward(self, x):
        return self.fc(x.flatten(1))


def gae(counts, mean=(0.0,), std=(1.0,), **params) -> GuidingAdversarialExamples:
    part = AUGMENTS.build({"name": "gae", **params},
                          **Context.from_counts(counts).as_kwargs())
    part.set_normalisation(mean, std)
    part.before_epoch(0)
    return part


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_one_step_is_the_clipped_sign_of_the_input_gradient_in_pixel_units():
    """One step from the image: x + (alpha / std) * sign(W^T (softmax(W x + b) - e_y)), by hand,
    with the inputs normalised by mean 0.5 and std 0.25 (so the step is alpha / 0.25 in input
    units), and a step larger than eps clipped to eps."""
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(3, 4)), rng.normal(size=3)
    x = rng.uniform(-1.5, 1.5, size=(5, 4)).astype(np.float32)  # inside [-2, 2]: pixels 0..1
    y = np.array([2, 1, 2, 1, 2])
    p = softmax(x @ w.T + b)
    grad = (p - np.eye(3)[y]) @ w  # d CE_i / d x_i
    model = Linear(w, b)
    for step, moved in ((EPS / 8, EPS / 8), (3 * EPS, EPS)):
        part = gae([30, 20, 10], mean=(0.5,), std=(0.25,), num_steps=1, random_start=False,
                   step_size=step, tail_classes=[1, 2])
        adv, _ = part.craft(model, torch.from_numpy(x).view(5, 1, 1, 4), torch.from_numpy(y))
        expected = x + moved / 0.25 * np.sign(grad)
        np.testing.assert_allclose(adv.view(5, 4).numpy(), expected, atol=1e-6)


def test_the_worked_example_crosses_after_eight_steps():
    """z = x (W = I), tail label 1, eps 1/255, step eps/8, 8 steps, no random start: from
    (0.5, 0.504) the margin z_1 - z_0 falls by 2 eps / 8 a step and is negative at the 6th
    evaluated iterate, so the sample crossed and its example is x + (eps, -eps); from
    (0.5, 0.51) it stays positive at every evaluated iterate: not crossed."""
    part = gae([10, 5], random_start=False)
    x = torch.tensor([[0.5, 0.504], [0.5, 0.51]]).view(2, 1, 1, 2)
    adv, crossed = part.craft(Linear(np.eye(2)), x, torch.tensor([1, 1]))
    assert crossed.tolist() == [True, False]
    np.testing.assert_allclose(adv.view(2, 2).numpy(),
                               [[0.5 + EPS, 0.504 - EPS], [0.5 + EPS, 0.51 - EPS]], atol=1e-6)


def test_the_random_start_is_uniform_within_eps_and_from_the_seeded_generator():
    part = gae([10, 5], num_steps=1, step_size=1e-9)  # the step is negligible: the start shows
    x = torch.full((256, 1, 1, 2), 0.5)
    torch.manual_seed(3)
    a, _ = part.craft(Linear(np.eye(2)), x, torch.ones(256, dtype=torch.long))
    torch.manual_seed(3)
    b, _ = part.craft(Linear(np.eye(2)), x, torch.ones(256, dtype=torch.long))
    delta = (a - x).flatten()
    assert torch.equal(a, b)
    assert float(delta.abs().max()) <= EPS + 1e-6 and float(delta.abs().mean()) > EPS / 4


def test_only_tail_samples_are_attacked_and_selected():
    """A model that predicts class 0 for everything: the head samples (classes 2, 3) are
    misclassified but neither perturbed nor selected; the tail samples of class 1 are."""
    model = Linear(np.zeros((4, 2)), bias=[100.0, 0.0, 0.0, 0.0])
    with torch.no_grad():
        model.fc.weight[1, 0] = 1.0  # an input gradient for the tail class's CE
    part = gae([40, 5, 60, 80])  # tail: the rarest half, classes 1 and 0
    assert part.tail.tolist() == [True, True, False, False]
    x = torch.full((4, 1, 1, 2), 0.5)
    y = torch.tensor([0, 1, 2, 3])
    adv, crossed = part.craft(model, x, y)
    assert crossed.tolist() == [False, True, False, False]
    assert torch.equal(adv[2:], x[2:]) and not torch.equal(adv[1], x[1])


def test_the_crossing_check_is_per_sample_not_the_codes_broadcast():
    """Predictions 5, 6, 7 for labels 6, 5, 7 (CIFAR-10-LT's tail): samples 0 and 1 are wrong.
    The code's check, predict (n, 1) == target (n,), counts a sample correct when its
    prediction equals any sample's label: all three would stay 'not crossed'."""
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    model = Linear(100 * np.eye(10))
    pred = np.array([5, 6, 7])
    x = torch.from_numpy(np.eye(10, dtype=np.float32)[pred]).view(3, 1, 1, 10)
    y = np.array([6, 5, 7])
    _, crossed = gae(counts).craft(model, x, torch.from_numpy(y))
    assert crossed.tolist() == [True, True, False]
    broadcast_correct = (pred[:, None] == y[None, :]).any(axis=1)  # the code's row indices
    assert not (~broadcast_correct).any()  # the code would select none of them


def step_events(model, x, y):
    return SimpleNamespace(batch=Batch.plain(x, y), model=model, optimizer=None, epoch=0,
                           step=0, steps=1, lr=0.1)


def test_the_term_is_the_weighted_mean_ce_of_the_crossed_examples_and_trains_the_model():
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(4, 6)), rng.normal(size=4)
    model = Linear(w, b)
    x = torch.from_numpy(rng.uniform(0, 1, size=(12, 6)).astype(np.float32)).view(12, 1, 1, 6)
    y = torch.from_numpy(rng.integers(0, 4, size=12))
    part = gae([40, 30, 10, 5], weight=2.0, epsilon=0.2, step_size=0.05)
    step = step_events(model, x, y)
    clean = step.batch.x.clone()
    torch.manual_seed(0)
    part.before_step(step)
    assert step.batch.x is x and torch.equal(x, clean)  # the clean batch is untouched
    _, adv, _, crossed = part._pending
    assert crossed.any() and not crossed.all()
    term = part.auxiliary_loss()
    z = adv.view(12, 6).numpy().astype(np.float64) @ w.T + b
    ce = -np.log(softmax(z)[np.arange(12), y.numpy()])
    expected = 2.0 * ce[crossed.numpy()].mean()
    assert float(term.detach()) == pytest.approx(expected, rel=1e-5)
    term.backward()
    assert model.fc.weight.grad is not None and float(model.fc.weight.grad.abs().sum()) > 0
    part.after_step(step)
    assert part.auxiliary_loss() is None  # never carried into another step


def test_outside_the_window_nothing_is_crafted_and_batch_norm_statistics_stay():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Flatten(), torch.nn.LazyLinear(4))
    x, y = torch.rand(8, 3, 6, 6), torch.tensor([0, 1, 2, 3] * 2)
    model(x)  # materialise the lazy layer
    part = gae([40, 30, 10, 5], mean=(0.4,) * 3, std=(0.2,) * 3, start_epoch=1)
    part.before_epoch(0)
    part.before_step(step_events(model, x, y))
    assert part.auxiliary_loss() is None
    part.before_epoch(1)
    running = model[1].running_mean.clone()
    model.train()
    part.before_step(step_events(model, x, y))
    term = part.auxiliary_loss()
    assert term.dim() == 0 and torch.isfinite(term)
    assert model.training and torch.equal(model[1].running_mean, running)


@pytest.mark.parametrize("norm_stats", ["fixed", "batch"])
def test_in_the_window_the_clean_batch_uses_the_running_statistics_unless_batch(norm_stats):
    """``fixed`` (the official code's model, left in evaluation mode by its attack): after the
    step's attack the clean forward of the training model normalises with the running statistics
    and leaves them as they were, as a copy of the model in evaluation mode computes; ``batch``:
    the clean forward normalises with the batch's statistics and updates the running ones."""
    import copy

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Flatten(), torch.nn.Linear(64, 4))
    with torch.no_grad():  # running statistics far from any batch's
        model[1].running_mean.fill_(0.7)
        model[1].running_var.fill_(3.0)
    x, y = torch.rand(8, 3, 6, 6), torch.tensor([0, 1, 2, 3] * 2)
    evaluated = copy.deepcopy(model).eval()(x)
    batch_normalised = copy.deepcopy(model).train()(x)
    part = gae([40, 30, 10, 5], mean=(0.4,) * 3, std=(0.2,) * 3, norm_stats=norm_stats)
    model.train()
    part.before_step(step_events(model, x, y))
    clean = model(x)  # the trainer's clean forward follows the attack
    part.auxiliary_loss()
    assert model.training  # the trainer's mode, whatever the layers' statistics
    if norm_stats == "fixed":
        assert torch.allclose(clean, evaluated, atol=1e-6)
        assert float(model[1].running_mean[0]) == pytest.approx(0.7)
        assert not model[1].training
    else:
        assert torch.allclose(clean, batch_normalised, atol=1e-6)
        assert float(model[1].running_mean[0]) != pytest.approx(0.7)
        assert model[1].training
    assert not torch.allclose(evaluated, batch_normalised, atol=1e-3)  # the check can fail


def test_tail_classes_without_class_counts_standalone():
    part = GuidingAdversarialExamples(tail_classes=[2], random_start=False)
    part.set_normalisation((0.0,), (1.0,))
    part.before_epoch(0)
    x, y = torch.full((3, 1, 1, 4), 0.5), torch.tensor([0, 2, 3])
    adv, _ = part.craft(Linear(np.eye(4)), x, y)
    assert [not torch.equal(adv[i], x[i]) for i in range(3)] == [False, True, False]
    with pytest.raises(ConfigError, match="class counts"):
        GuidingAdversarialExamples().craft(Linear(np.eye(4)), x, y)


def test_tail_mask_takes_the_rarest_share_with_ties_to_the_higher_index():
    assert tail_mask([9, 5, 5, 1], 0.5).tolist() == [False, False, True, True]
    assert tail_mask([1, 5, 5, 9], 0.5).tolist() == [True, False, True, False]
    assert tail_mask([3, 2, 1], 1.0).all()


@pytest.mark.parametrize("params, key", [
    ({"epsilon": 0}, "epsilon"), ({"epsilon": 2}, "epsilon"), ({"step_size": -1}, "step_size"),
    ({"num_steps": 0}, "num_steps"), ({"num_steps": 2.5}, "num_steps"),
    ({"random_start": "yes"}, "random_start"), ({"weight": -1}, "weight"),
    ({"tail_fraction": 0}, "tail_fraction"), ({"tail_fraction": 0.05}, "tail_fraction"),
    ({"tail_classes": [4]}, "tail_classes"), ({"tail_classes": []}, "tail_classes"),
    ({"tail_classes": [1], "tail_fraction": 0.5}, "tail_classes"),
    ({"start_epoch": -1}, "start_epoch"), ({"norm_stats": "frozen"}, "norm_stats"),
])
def test_bad_parameters_are_one_line_naming_the_key(params, key):
    with pytest.raises(ConfigError, match=key) as err:
        gae([40, 30, 10, 5], **params)
    assert "\n" not in str(err.value)


def test_a_bad_recipe_stops_before_anything_is_written(tmp_path):
    recipe = digits(augment=[{"name": "gae", "num_steps": 0}])
    with pytest.raises(ConfigError, match="num_steps") as err:
        train(resolve(recipe), tmp_path / "run", quiet=True)
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


def test_the_recipe_runs_on_the_digits_two_phases(tmp_path):
    recipe = on_digits(read_recipe(ROOT / "configs" / "cifar10_lt" / "ce_gae.yaml"), epochs=1)
    for phase in recipe["phases"]:
        phase.setdefault("train", {})["epochs"] = 1
    results = train(resolve(recipe), tmp_path / "run", quiet=True)
    first, second = results["history"]
    assert (first["phase"], second["phase"]) == ("joint", "gae")
    assert "loss_terms" not in first and second["loss_terms"]["gae"] > 0
    assert results["top1"] > 15.0  # chance is 10 %


def test_it_composes_with_a_mixing_augmentation(tmp_path):
    """The adversarial term uses its own examples and true labels; mixup mixes the clean batch
    inside the model's forward (GAE declares mixes = False)."""
    recipe = resolve(digits(train={"epochs": 1},
                            augment=[{"name": "mixup"}, {"name": "gae", "num_steps": 2}]))
    results = train(recipe, tmp_path / "run", quiet=True)
    assert np.isfinite(results["history"][0]["loss_terms"]["gae"])


def test_the_step_cost_benchmark_runs_the_attack(tmp_path):
    """benchmarks/throughput.py --augment times the step with each augmentation, gae's attack
    (before_step) and term included; one step each here, the figures are for the benchmark."""
    import runpy

    from lttoolbox.engine.trainer import Trainer

    script = runpy.run_path(str(ROOT / "benchmarks" / "throughput.py"))
    recipe = resolve(digits())
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    crafted = []
    original = GuidingAdversarialExamples.craft

    def counting(self, *args):
        crafted.append(1)
        return original(self, *args)

    GuidingAdversarialExamples.craft = counting
    try:
        figures = script["time_components"](trainer, recipe, 1, 1, "augment")
    finally:
        GuidingAdversarialExamples.craft = original
    assert set(figures) == {"plain", *script["AUGMENTS_TIMED"]} and "gae" in figures
    assert len(crafted) == 2 and all(v > 0 for v in figures.values())


@pytest.mark.long
def test_resume_inside_the_window_matches(tmp_path):
    """Resumed from the checkpoint of epoch 1 (stopped at the end of epoch 2, before its
    checkpoint): the random starts continue torch's checkpointed stream."""
    recipe = resolve(digits(train={"epochs": 3, "checkpoint_every": 1},
                            augment=[{"name": "gae", "num_steps": 2, "start_epoch": 1}]))
    full = train(recipe, tmp_path / "full", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "cut", logger=StopAfter(2))  # stopped inside the window
    resumed = train(recipe, tmp_path / "cut", resume=True, quiet=True)
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in full["history"]]
    assert resumed["per_class_acc"] == full["per_class_acc"]


@pytest.mark.long
def test_two_processes_match_one(tmp_path):
    """Each rank crafts from its share of the global batch and the term's mean divides by the
    global number of crossed samples, so two processes follow one (no batch norm, no random
    transform, no random start: every sample's attack is the same however the batch is split;
    dividing by each rank's own count would weigh the ranks' crossed samples unequally)."""
    from test_distributed import DIGITS as DDP_DIGITS
    from test_distributed import LOSS_RTOL, WEIGHT_ATOL, run_ranks, weights

    recipe = resolve({**DDP_DIGITS, "train": {**DDP_DIGITS["train"], "epochs": 1},
                      "augment": [{"name": "gae", "num_steps": 2, "random_start": False,
                                   "epsilon": 0.1, "step_size": 0.05}]})
    one = train(recipe, tmp_path / "one", quiet=True)
    two = run_ranks(tmp_path, recipe, tmp_path / "two")
    assert two["processes"] == 2
    for a, b in zip(one["history"], two["history"]):
        assert b["loss_terms"]["gae"] == pytest.approx(a["loss_terms"]["gae"], rel=LOSS_RTOL)
        assert b["loss"] == pytest.approx(a["loss"], rel=LOSS_RTOL)
    assert one["history"][0]["loss_terms"]["gae"] > 0
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], atol=WEIGHT_ATOL, rtol=0)


@pytest.mark.long
def test_the_compiled_step_trains_as_the_eager_one(tmp_path, monkeypatch):
    """The term reads the examples crafted outside the compiled step, with the model switched
    to evaluation mode inside it: the step still compiles (no fallback) and trains the same."""
    eager_and_compiled(monkeypatch, tmp_path, digits(
        train={"epochs": 1}, augment=[{"name": "gae", "num_steps": 2, "random_start": False}]),
        terms=("gae",))

