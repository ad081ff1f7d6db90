"""The loss recipes: each resolves, builds its loss with the protocol's class counts, cites its
number, and runs end to end.

The first tests need only the recipe files (merged with their ``_base_`` chain) and the loss
registry; the end-to-end test runs every CIFAR-10-LT loss recipe for two epochs on ``digits_lt``
through ``lttoolbox.recipe.load_recipe`` and ``lttoolbox.engine.train`` (one per loss in README's
quick set).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
import torch

from lttoolbox.losses import LTLoss
from lttoolbox.recipe import load_recipe, phase_recipes, read_recipe
from lttoolbox.registry import LOSSES
from conftest import RATIOS, case_id, on_digits, one_per_entry, read_at_ratio, recipes_that_set

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("cifar10_lt", "cifar100_lt")
# The expected (loss name, deferred weights?, model head) of the recipes shipped so far, written
# out by hand so that a recipe that drifts from them fails; a loss recipe added since is found in
# the folder (conftest.recipes_that_set) and checked the same way against what it declares.
# Sigmoid losses start every class at probability 1/C (Cui et al. 2019, after Lin et al. 2017).
PRIOR = {"name": "linear", "prior": "uniform"}
RECIPES = {
    "ce": ("ce", False, "linear"),
    "ce_drw": ("ce", True, "linear"),
    "cs_ce": ("cs_ce", False, "linear"),
    "cs_ce_sqrt": ("cs_ce", False, "linear"),
    "cs_ce_drw": ("cs_ce", True, "linear"),
    "focal": ("focal", False, "linear"),
    "focal_drw": ("focal", True, "linear"),
    "sigmoid_focal": ("sigmoid_focal", False, PRIOR),
    "sigmoid_focal_drw": ("sigmoid_focal", True, PRIOR),
    "cb_ce": ("cb", False, "linear"),
    "cb_ce_drw": ("cb", True, "linear"),
    "cb_focal": ("cb", False, PRIOR),
    "cb_focal_drw": ("cb", True, PRIOR),
    "ldam": ("ldam", False, "cosine"),
    "ldam_drw": ("ldam", True, "cosine"),
    "balanced_softmax": ("balanced_softmax", False, "linear"),
    "balanced_softmax_drw": ("balanced_softmax", True, "linear"),
    "am_softmax": ("am_softmax", False, "cosine"),
    "am_softmax_drw": ("am_softmax", True, "cosine"),
    "cdt": ("cdt", False, "linear"),
    "cdt_drw": ("cdt", True, "linear"),
    "las": ("las", False, "linear"),
    "las_drw": ("las", True, "linear"),
    "vs": ("vs", False, "linear"),
    "mm_drw": ("mm", True, "cosine"),
    "mm_ldam_drw": ("mm", True, "cosine"),
    "absgd": ("absgd", True, "linear"),
}


def expected(name: str) -> tuple[str, bool, object]:
    """``RECIPES[name]``, or for a recipe added since, what it declares: its loss, whether that
    (or the loss it wraps) defers its weights, and its head."""
    if name in RECIPES:
        return RECIPES[name]
    recipe = read_recipe(ROOT / "configs" / "cifar10_lt" / f"{name}.yaml")
    cfg = recipe["loss"]
    inner = cfg.get("loss") if isinstance(cfg.get("loss"), dict) else cfg
    return cfg["name"], bool(inner.get("weights_start_epoch")), recipe["model"]["head"]


NAMES = recipes_that_set("loss", DATASETS)
PATHS = [ROOT / "configs" / ds / f"{name}.yaml" for ds in DATASETS for name in NAMES]
# Each recipe as written (ratio 100) and with the override data.imbalance_ratio=50.
CASES = [(path, ratio) for path in PATHS for ratio in RATIOS]
#: CB weights for CIFAR-10-LT ratio 100, beta 0.9999.
CIFAR10_R100_CB = [0.0506, 0.0769, 0.1211, 0.1950, 0.3188, 0.5246, 0.8683, 1.4426, 2.4092, 3.9927]





def wrapped(cfg: dict, loss: LTLoss) -> tuple[dict, LTLoss]:
    """The per-sample loss (recipe and object) that holds the class weights: the one a
    batch-weighted loss wraps (its ``loss``), or the loss itself."""
    return (cfg["loss"], loss.inner) if loss.batch_weighted else (cfg, loss)


def protocol_counts(dataset: str, ratio: int) -> list[int]:
    """Class sizes of the exponential CIFAR-LT profile (Cui et al. 2019; Cao et al. 2019)."""
    classes, n_max = (10, 5000) if dataset == "cifar10_lt" else (100, 500)
    return [int(n_max * (1 / ratio) ** (i / (classes - 1))) for i in range(classes)]


def test_every_loss_is_used_by_a_recipe():
    # a loss recipe's own loss, or a phase's (a method that re-trains after a first phase)
    used = {read_recipe(p)["loss"]["name"] for p in PATHS}
    used |= {phase["loss"]["name"] for ds in DATASETS
             for p in sorted((ROOT / "configs" / ds).glob("*.yaml")) if p.name != "base.yaml"
             for phase in phase_recipes(load_recipe(p)) if "phases" in read_recipe(p)}
    # or the loss of a recipe that also adds an augmentation it is written for (DBN-Mix's)
    used |= {read_recipe(p)["loss"]["name"] for ds in DATASETS
             for p in sorted((ROOT / "configs" / ds).glob("*.yaml"))
             if p.name != "base.yaml" and "loss" in yaml.safe_load(p.read_text())}
    # or a multi-label recipe's (a loss on multi-hot targets trains no single-label set)
    used |= {read_recipe(p)["loss"]["name"]
             for p in sorted((ROOT / "configs" / "multilabel").glob("*.yaml"))}
    assert used == set(LOSSES.names())


def test_the_recipes_written_out_exist_in_both_folders():
    missing = [f"{ds}/{name}.yaml" for ds in DATASETS for name in RECIPES
               if not (ROOT / "configs" / ds / f"{name}.yaml").is_file()]
    assert not missing and set(RECIPES) <= set(NAMES)


@pytest.mark.parametrize("path, ratio", CASES, ids=case_id)
def test_recipe_resolves_and_builds_its_loss(path, ratio):
    recipe = read_at_ratio(path, ratio)
    name = path.stem
    loss_name, deferred, head = expected(name)
    dataset = path.parts[-2]
    assert recipe["data"]["name"] == dataset and recipe["data"]["imbalance_ratio"] == ratio
    assert recipe["model"]["head"] == head
    cfg = recipe["loss"]
    assert cfg["name"] == loss_name
    assert all(key.endswith(("_epoch", "_epochs")) for key in cfg if "epoch" in key)
    counts = protocol_counts(dataset, ratio)
    loss = LOSSES.build(cfg, class_counts=counts, num_classes=len(counts),
                        total_epochs=recipe["train"]["epochs"])
    assert isinstance(loss, LTLoss)
    weighted_cfg, weighted = wrapped(cfg, loss)
    if deferred:
        assert weighted_cfg["weights_start_epoch"] == 160
        assert recipe["schedule"]["milestones"][0] == 160
        assert all(v == 160 for k, v in cfg.items() if k.endswith("_epoch"))
        loss.set_epoch(159)
        assert not weighted.weights_active and not loss.active
    loss.set_epoch(160)
    assert loss.active
    assert weighted.weights_active == (weighted.class_weights is not None)
    logits = np.random.default_rng(0).normal(size=(4, len(counts)))
    value = loss(torch.tensor(logits, dtype=torch.float32), torch.tensor([0, 1, 2, 3]))
    assert torch.isfinite(value)


def test_cifar10_cb_focal_recipe_has_the_effective_number_weights():
    recipe = read_recipe(ROOT / "configs" / "cifar10_lt" / "cb_focal.yaml")
    loss = LOSSES.build(recipe["loss"], class_counts=protocol_counts("cifar10_lt", 100))
    np.testing.assert_allclose(loss.class_weights.numpy(), CIFAR10_R100_CB, atol=5e-5)



# README's quick set runs one recipe per registered loss end to end, its deferred-weights variant
# where there is one (both sides of the switch run); .ci/run runs every recipe.
@pytest.mark.parametrize("name", one_per_entry({name: expected(name)[0] for name in NAMES},
                                               prefer=lambda name: expected(name)[1]))
def test_recipe_runs_end_to_end(name, tmp_path, monkeypatch):
    from lttoolbox.engine import train
    from lttoolbox.recipe import load_recipe

    calls = []
    original = LTLoss.forward

    def spy(self, logits, target, reduction="mean"):
        calls.append((self.registry_name, self.epoch, self.weights_active))
        return original(self, logits, target, reduction)

    monkeypatch.setattr(LTLoss, "forward", spy)
    recipe = on_digits(load_recipe(ROOT / "configs" / "cifar10_lt" / f"{name}.yaml"))
    results = train(recipe, tmp_path, quiet=True)
    assert math.isfinite(results["top1"])
    loss_name, deferred, _ = expected(name)
    if LOSSES.get(loss_name).batch_weighted:  # its wrapped loss is the one called per sample
        loss_name = recipe["loss"]["loss"]["name"]
    assert calls and {c[0] for c in calls} == {loss_name}
    assert {c[1] for c in calls} == {0, 1}
    if deferred:
        assert all(active == (epoch >= 1) for _, epoch, active in calls)
