"""Margin calibration (MARC): the head's formula, the phase that trains only its two scalars per
class, its composition after other first phases, its refusals and an exact resume."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, digits
from lttoolbox.engine import train
from lttoolbox.errors import ConfigError
from lttoolbox.models import LinearHead, LWSHead, MARCHead
from lttoolbox.recipe import load_recipe, phase_recipes, read_recipe, resolve
from lttoolbox.registry import LOSSES

SHIPPED = {ds: ROOT / "configs" / ds / "ce_marc.yaml" for ds in ("cifar10_lt", "cifar100_lt")}


def linear(weight, bias) -> LinearHead:
    head = LinearHead(len(weight[0]), len(weight))
    with torch.no_grad():
        head.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        head.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return head


def calibrated(previous, a, b) -> MARCHead:
    head = MARCHead(previous.in_features, previous.out_features)
    head.adopt(previous)
    with torch.no_grad():
        head.a.copy_(torch.tensor(a, dtype=torch.float32))
        head.b.copy_(torch.tensor(b, dtype=torch.float32))
    return head


# -------------------------------------------------------------------------------------- formula
def test_the_worked_example_by_hand():
    """W rows (3, 4), (1, 0), (0, 2), bias (0, 0.5, -1), f = (1, 1): z = (7, 1.5, 1) and
    ||w|| = (5, 1, 2); with a = (1, 1.5, 2), b = (-0.2, 0.1, 0.5):
    z' = (7 - 0.2 * 5, 1.5 * 1.5 + 0.1 * 1, 2 * 1 + 0.5 * 2) = (6, 2.35, 3)."""
    old = linear([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]], [0.0, 0.5, -1.0])
    head = calibrated(old, [1.0, 1.5, 2.0], [-0.2, 0.1, 0.5])
    f = torch.ones(1, 2)
    assert old(f)[0].tolist() == pytest.approx([7.0, 1.5, 1.0])
    assert head.norms().tolist() == pytest.approx([5.0, 1.0, 2.0])
    z = head(f).detach()
    assert z[0].tolist() == pytest.approx([6.0, 2.35, 3.0], abs=1e-6)
    # CE for label 2: log(e^7 + e^1.5 + e^1) - 1 and log(e^6 + e^2.35 + e^3) - 3
    target = torch.tensor([2])
    assert float(F.cross_entropy(old(f).detach(), target)) == pytest.approx(6.00654, abs=1e-5)
    assert float(F.cross_entropy(z, target)) == pytest.approx(3.07304, abs=1e-5)


def test_the_formula_on_random_values_against_numpy():
    rng = np.random.default_rng(0)
    w, c = rng.normal(size=(5, 7)) * rng.uniform(0.1, 3, size=(5, 1)), rng.normal(size=5)
    a, b, f = rng.uniform(0.5, 2, size=5), rng.normal(size=5), rng.normal(size=(4, 7))
    head = calibrated(linear(w.tolist(), c.tolist()), a.tolist(), b.tolist())
    expected = a * (f @ w.T + c) + b * np.sqrt((w ** 2).sum(axis=1))  # bias scaled, not in norm
    got = head(torch.as_tensor(f, dtype=torch.float32)).detach().numpy()
    assert np.allclose(got, expected, atol=1e-5)


def test_it_starts_as_the_trained_classifier_and_trains_only_a_and_b():
    old = linear(np.random.default_rng(1).normal(size=(4, 6)).tolist(), [0.3, -0.1, 0.0, 1.0])
    head = MARCHead(6, 4)
    head.adopt(old)
    assert [n for n, _ in head.named_parameters()] == ["a", "b"]
    f = torch.randn(8, 6)
    assert torch.allclose(head(f), old(f), atol=1e-6)
    F.cross_entropy(head(f), torch.arange(8) % 4).backward()
    assert head.a.grad is not None and head.b.grad is not None
    assert old.weight.grad is None  # the trained classifier was copied, not shared


@pytest.mark.parametrize("kind", ["lws", "marc"])
def test_it_takes_over_a_calibrated_head_as_the_linear_classifier_it_makes(kind):
    """After LWS (``s_j z_j``) or MARC, a new MARC head starts from the logits it took over."""
    rng = np.random.default_rng(2)
    old = linear(rng.normal(size=(3, 4)).tolist(), rng.normal(size=3).tolist())
    if kind == "lws":
        previous = LWSHead(4, 3)
        previous.adopt(old)
        with torch.no_grad():
            previous.scales.copy_(torch.tensor([2.0, 0.5, 1.5]))
    else:
        previous = calibrated(old, [2.0, 0.5, 1.5], [0.3, -1.0, 0.2])
    head = MARCHead(4, 3)
    head.adopt(previous)
    f = torch.randn(5, 4)
    assert torch.allclose(head(f), previous(f), atol=1e-5)


def test_the_code_reweighted_ce_is_cs_ce_with_gamma_1_2():
    """GRWLoss (microsoft/robustlearn marc/loss/GRWLoss.py lines 24-28 and 52 at 31580cd):
    w_j = K r_j^-p / sum_k r_k^-p with r = n / N, p = 1.2, and PyTorch's weighted mean.
    The toolbox's cs_ce weights (n_min / n_j)^1.2 differ by a constant factor, which the weighted
    mean sum w l / sum w cancels: the same loss and the same gradients for SGD."""
    r = np.array([0.9, 0.1]) ** -1.2
    assert (2 * r / r.sum()).tolist() == pytest.approx([0.13363, 1.86637], abs=1e-5)
    counts = np.array([500, 120, 40, 9, 3])
    grw = counts / counts.sum()
    grw = len(counts) * grw ** -1.2 / (grw ** -1.2).sum()
    rng = np.random.default_rng(3)
    logits, target = rng.normal(size=(16, 5)) * 3, rng.integers(0, 5, size=16)
    nll = -(logits[np.arange(16), target] - np.log(np.exp(logits).sum(axis=1)))
    expected = (grw[target] * nll).sum() / grw[target].sum()
    loss = LOSSES.build({"name": "cs_ce", "gamma": 1.2}, class_counts=counts.tolist(),
                        num_classes=5)
    got = loss(torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(target))
    assert float(got) == pytest.approx(expected, rel=1e-6)  # float32 class weights


@pytest.mark.parametrize("ds", sorted(SHIPPED))
def test_the_recipes_phase_is_the_codes_iteration_budget(ds):
    """The code counts iterations: epochs = ceil(2000 / len(loader)) and a warm-up of
    ceil(800 / len(loader)) epochs (run_networks.py lines 73-76 at 31580cd), with the loader's
    ceil(N / 512) batches of the long-tailed training set."""
    from lttoolbox.data.profiles import long_tail_counts

    per_class = {"cifar10_lt": (5000, 10), "cifar100_lt": (500, 100)}[ds]
    batches = math.ceil(sum(long_tail_counts(*per_class, "exp", 100)) / 512)
    joint, marc = phase_recipes(load_recipe(SHIPPED[ds]))
    assert joint["model"]["head"] == "linear" and joint["loss"] == {"name": "ce"}
    assert marc["model"]["head"] == "marc" and marc["sampler"]["name"] == "instance"
    assert marc["loss"] == {"name": "cs_ce", "gamma": 1.2}
    assert marc["train"]["epochs"] == math.ceil(2000 / batches)
    assert marc["schedule"]["warmup_epochs"] == math.ceil(800 / batches)
    assert marc["train"]["freeze"] == ["backbone"] and marc["train"]["freeze_bn_stats"]


# ------------------------------------------------------------------------------------- refusals
MARC = {"name": "marc", "model": {"head": "marc"}, "loss": {"name": "cs_ce", "gamma": 1.2},
        "train": {"epochs": 1, "batch_size": 512, "freeze": ["backbone"], "freeze_bn_stats": True}}


@pytest.mark.parametrize("recipe, message", [
    (digits(model={"head": "marc"}),
     r"^model\.head: head 'marc' takes over .*got none \(it is the first phase\)$"),
    (digits(model={"head": "cosine"}, phases=[{"name": "joint"}, MARC]),
     r"^phases\[1\]\.model\.head: head 'marc' .*must be one of linear, lws, marc; got cosine$"),
    (digits(phases=[{"name": "joint"}, {"name": "tau", "model": {"head": "tau_norm"},
                                        "train": {"epochs": 0}}, MARC]),
     r"^phases\[2\]\.model\.head: head 'marc' .*got tau_norm$"),
    (digits(phases=[{"name": "joint"}, {**MARC, "model": {"head": {"name": "marc", "a": 1}}}]),
     r"^phases\[1\]\.model\.head\.a: "),
], ids=["first_phase", "after_cosine", "after_tau_norm", "unknown_parameter"])
def test_it_is_refused_in_one_line_naming_the_key_before_anything_is_written(
        tmp_path, recipe, message):
    with pytest.raises(ConfigError) as err:
        train(resolve(recipe), tmp_path / "run", quiet=True)
    assert "\n" not in str(err.value)
    assert err.match(message)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- phases on the digits
def shipped_on_digits(first: dict | None = None, joint_epochs: int = 2) -> dict:
    """The shipped CIFAR-10-LT recipe on the digits: ``joint_epochs`` of the first phase (with
    ``first``'s sections), then one epoch of its MARC phase at a constant rate (the cosine's
    last epoch is at rate 0, so a one-epoch cosine would train nothing)."""
    recipe = read_recipe(SHIPPED["cifar10_lt"])
    marc = recipe["phases"][1]
    marc["schedule"] = {"_replace_": True, "name": "constant"}
    marc["train"] = {**marc["train"], "epochs": 1}
    return digits(train={"epochs": joint_epochs}, **(first or {}),
                  phases=[{"name": "joint"}, marc])


def assert_only_a_and_b_trained(out, folded=None):
    """Every backbone tensor (the BatchNorm statistics too: ``freeze_bn_stats``) is the first
    phase's, the head's weight and bias are the classifier it took over, and a, b moved."""
    joint = torch.load(out / "model-joint.pt")
    marc = torch.load(out / "model-marc.pt")
    backbone = [k for k in joint if not k.startswith("head.")]
    assert backbone and all(torch.equal(marc[k], joint[k]) for k in backbone)
    weight, bias = folded(joint) if folded else (joint["head.weight"], joint["head.bias"])
    assert torch.equal(marc["head.weight"], weight) and torch.equal(marc["head.bias"], bias)
    assert not torch.equal(marc["head.a"], torch.ones(10))
    assert not torch.equal(marc["head.b"], torch.zeros(10))


def test_the_shipped_recipe_on_the_digits_trains_only_a_and_b(tmp_path):
    results = train(resolve(shipped_on_digits()), tmp_path / "run", quiet=True)
    assert [p["name"] for p in results["phases"]] == ["joint", "marc"]
    assert results["epochs"] == len(results["history"]) == 3
    assert all(np.isfinite(r["loss"]) for r in results["history"])
    assert_only_a_and_b_trained(tmp_path / "run")


LWS = {"name": "lws", "model": {"head": "lws"}, "sampler": {"name": "class_balanced"},
       "train": {"epochs": 1, "freeze": ["backbone"]}}


@pytest.mark.long
@pytest.mark.parametrize("first", [
    {"augment": [{"name": "mixup", "alpha": 1.0}]},
    {"augment": [{"name": "cmo", "alpha": 1.0, "p": 0.5}]},
    {"loss": {"name": "balanced_softmax"}},
], ids=["mixup", "cmo", "balanced_softmax"])
def test_it_composes_after_other_first_phases(tmp_path, first):
    train(resolve(shipped_on_digits(first, joint_epochs=1)), tmp_path / "run", quiet=True)
    assert_only_a_and_b_trained(tmp_path / "run")


@pytest.mark.long
def test_it_follows_an_lws_phase(tmp_path):
    recipe = shipped_on_digits(joint_epochs=1)
    recipe["phases"].insert(1, LWS)
    train(resolve(recipe), tmp_path / "run", quiet=True)
    lws = torch.load(tmp_path / "run" / "model-lws.pt")
    marc = torch.load(tmp_path / "run" / "model-marc.pt")
    assert torch.equal(marc["head.weight"], lws["head.weight"] * lws["head.scales"][:, None])
    assert torch.equal(marc["head.bias"], lws["head.bias"] * lws["head.scales"])


@pytest.mark.long
def test_resumed_inside_the_marc_phase_ends_where_the_uninterrupted_run_does(tmp_path):
    from test_engine import StopAfter

    recipe = shipped_on_digits(joint_epochs=1)
    recipe["phases"][1]["train"]["epochs"] = 2
    recipe = resolve(recipe)
    train(recipe, tmp_path / "full", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "cut", logger=StopAfter(2))  # joint 1 epoch, marc 1
    inside = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert inside["phase"] == 1 and not torch.equal(inside["model"]["head.a"], torch.ones(10))
    train(recipe, tmp_path / "cut", resume=True, quiet=True)
    full = torch.load(tmp_path / "full" / "model-marc.pt")
    cut = torch.load(tmp_path / "cut" / "model-marc.pt")
    assert full.keys() == cut.keys()
    for k in full:
        assert torch.equal(full[k], cut[k]), k

