"""Mixing augmentations: contract checks for every entry, the draws, the boxes, CMO's streams,
Remix's label rule, mixed losses for every loss family against hand computations, windows,
refusals and resume."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import ROOT, assert_same_training, digits, one_per_entry, resumed_run
from lttoolbox.api import Context
from lttoolbox.augment import CMO, CutMix, ManifoldMixup, Mixup, Remix, paste_boxes
from lttoolbox.augment.base import beta_draw
from lttoolbox.augment.cutmix import stream_seed
from lttoolbox.batch import Batch
from lttoolbox.engine import train
from lttoolbox.errors import ConfigError
from lttoolbox.losses import mixed_loss
from lttoolbox.models import DigitsCNN
from lttoolbox.recipe import resolve
from lttoolbox.registry import AUGMENTS, LOSSES, SAMPLERS

COUNTS = [60, 30, 12, 6]
LABELS = np.repeat(np.arange(4), COUNTS)


def images_of(labels) -> torch.Tensor:
    """A distinct constant image per training index (its value is index + 1)."""
    n = len(labels)
    return torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 8, 8).clone()


IMAGES = images_of(LABELS)


def fetch(indices: torch.Tensor):
    return IMAGES[indices], torch.as_tensor(LABELS)[indices]


CONTEXT = {"class_counts": COUNTS, "num_classes": 4, "labels": LABELS, "seed": 0,
           "total_epochs": 10, "fetch": fetch, "rank": 0, "world_size": 1,
           "point_names": ("input", "stem", "layer1", "features"), "image_shape": (3, 8, 8),
           "train_transform": lambda x: x.float(),
           "feature_dim": 8}  # an entry with a head of its own on the features (rescom)


def build(name: str, **params):
    return AUGMENTS.build({"name": name, **params}, **CONTEXT)


def batch_of(size: int = 16) -> Batch:
    idx = torch.arange(size) * 5 % len(LABELS)
    x, y = fetch(idx)
    return Batch.plain(x, y)


# ------------------------------------------------------------------------------------ contract
def contract_config(name: str) -> dict:
    """The entry from its defaults (or its own ``example_config`` where a parameter has none),
    acting on every batch at the input, where the contract test applies it."""
    from lttoolbox.registry import recipe_parameters

    cfg = dict(getattr(AUGMENTS.get(name), "example_config", {}))
    defaults = {p.name: p.default for p in recipe_parameters(AUGMENTS, name)}
    if "point" in defaults:
        cfg.setdefault("point", "input")
    if isinstance(defaults.get("p"), float):
        cfg.setdefault("p", 1.0)
    return cfg


#: Every registered augmentation that mixes batches, read from the registry; the others prepare a
#: phase's data instead (cam_resample: tests/test_cam.py).
MIXING = [name for name in AUGMENTS.names() if AUGMENTS.get(name).mixes]
#: Those that act on any model. The others train the branches of a two-branch model
#: (``check_model`` refuses a plain one) and hand it two streams, twice the rows: checked in
#: tests/test_two_branch.py and, on the two-branch digits model, tests/test_contracts.py.
PLAIN_MODEL = DigitsCNN(num_classes=4)
ANY_MODEL = [name for name in MIXING
             if build(name, **contract_config(name)).refusal(PLAIN_MODEL) is None]


def test_every_registered_augmentation_builds_from_its_defaults_or_example():
    assert MIXING
    for name in AUGMENTS.names():
        assert build(name, **contract_config(name)).mixes == (name in MIXING)


@pytest.mark.parametrize("name", ANY_MODEL)
def test_the_augmentation_contract(name):
    torch.manual_seed(0)
    aug = build(name, **contract_config(name))
    assert aug.mixes and aug.point in CONTEXT["point_names"]
    aug.set_epoch(0)
    assert aug.active
    batch = batch_of()
    h, out = aug(batch.x, batch)
    assert h.shape == batch.x.shape and out.x is h
    assert out.mixed and out.y_a is batch.y_a
    assert out.lam.shape == (16,) and out.lam.dtype == torch.float32
    assert bool(((out.lam >= 0) & (out.lam <= 1)).all())
    assert set(out.y_b.tolist()) <= set(range(4))
    # a mixed batch trains: the loss is finite and has a gradient
    logits = torch.randn(16, 4, requires_grad=True)
    loss = mixed_loss(LOSSES.build({"name": "ce"}, num_classes=4), logits, out)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and logits.grad is not None


@pytest.mark.parametrize("params, message", [
    ({"alpha": 0}, "alpha"), ({"p": 1.5}, "p"), ({"start_epoch": -1}, "start_epoch"),
    ({"start_epoch": 3, "end_epoch": 2}, "end_epoch"),
])
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ConfigError, match=message):
        build("mixup", **params)


# ------------------------------------------------------------------------------------- the draws
def test_lam_follows_beta():
    torch.manual_seed(1)
    uniform = np.sort(beta_draw(1.0, 4000).numpy())  # Beta(1, 1) is uniform: a KS test
    ks = np.max(np.abs(np.arange(1, 4001) / 4000 - uniform))
    assert ks < 1.36 / math.sqrt(4000)  # the 5 % critical value
    lam = beta_draw(0.4, 20000).numpy().astype(np.float64)  # mean 1/2, var 1 / (4 (2a + 1))
    assert abs(lam.mean() - 0.5) < 0.01 and abs(lam.var() - 1 / (4 * 1.8)) < 0.005


def test_mixup_mixes_with_one_lam_and_a_permutation():
    torch.manual_seed(2)
    batch = batch_of(8)
    h, out = Mixup(alpha=1.0)(batch.x, batch)
    lam = float(out.lam[0])
    assert torch.all(out.lam == lam) and 0 < lam < 1
    own = batch.x[:, 0, 0, 0]
    # each value is lam * own + (1 - lam) * partner, the partners a permutation of the batch
    partner = (h[:, 0, 0, 0] - lam * own) / (1 - lam)
    assert sorted(partner.round(decimals=2).tolist()) == sorted(own.tolist())
    value_label = dict(zip(own.tolist(), batch.y_a.tolist()))
    assert [value_label[round(v, 2)] for v in partner.tolist()] == out.y_b.tolist()


def test_cutmix_boxes_and_the_clipped_area_correction():
    torch.manual_seed(3)
    aug = CutMix(alpha=1.0, p=1.0)
    background = torch.zeros(256, 3, 8, 8)
    batch = Batch.plain(background, torch.zeros(256, dtype=torch.long))
    # the partner of a zero image is a zero image: mark the pasted pixels through the boxes
    _, out = aug(background, batch)
    boxes = aug.last_boxes
    marked, kept = paste_boxes(torch.zeros(256, 1, 8, 8), torch.ones(256, 1, 8, 8), boxes)
    covered = marked.sum(dim=(1, 2, 3)) / 64.0
    assert torch.allclose(out.lam, 1.0 - covered) and torch.allclose(kept, out.lam)
    top, left, bottom, right = boxes.T
    assert bool(((0 <= top) & (top <= bottom) & (bottom <= 8)).all())
    assert bool(((0 <= left) & (left <= right) & (right <= 8)).all())
    # clipping only ever shrinks a box: the corrected lam is at least the drawn one on average
    assert float(out.lam.mean()) > 0.5


def test_random_boxes_match_the_official_rounding():
    from lttoolbox.augment.cutmix import random_boxes

    torch.manual_seed(4)
    lam = torch.tensor([0.75, 0.0, 1.0])
    boxes = random_boxes(lam, 8, 8)
    sides = (boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    # cut = int(8 * sqrt(1 - lam)) = 4, 8, 0; an unclipped box spans 2 * (cut // 2)
    assert all(int(s[0]) <= 4 for s in sides) and all(int(s[2]) == 0 for s in sides)


# ------------------------------------------------------------------------------------------- CMO
def test_cmo_pastes_the_foreground_inside_the_box_and_keeps_the_background_elsewhere():
    torch.manual_seed(5)
    aug = build("cmo", p=1.0)
    aug.set_epoch(0)
    background = torch.full((32, 3, 8, 8), -1.0)
    batch = Batch.plain(background, torch.zeros(32, dtype=torch.long))
    h, out = aug(background, batch)
    fg, boxes = aug.last_foreground, aug.last_boxes
    for i in range(32):
        top, left, bottom, right = boxes[i].tolist()
        inside = torch.zeros(8, 8, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        assert torch.equal(h[i][:, inside], fg[i][:, inside])
        assert bool((h[i][:, ~inside] == -1.0).all())
        assert float(out.lam[i]) == pytest.approx(1 - inside.float().mean().item())
    # the foreground's labels are the images' own (image value = index + 1)
    indices = fg[:, 0, 0, 0].long() - 1
    assert torch.equal(out.y_b, torch.as_tensor(LABELS)[indices])


@pytest.mark.parametrize("weighting", ["image", "class"])
def test_the_cmo_foreground_follows_the_weighted_sampler(weighting):
    aug = build("cmo", weighting=weighting)
    expected = SAMPLERS.build({"name": "cmo_weighted", "weighting": weighting},
                              labels=LABELS, num_classes=4).class_probabilities()
    drawn = []
    for epoch in range(30):
        aug.set_epoch(epoch)
        drawn.append(aug.next_indices(len(LABELS)))
    freq = np.bincount(LABELS[torch.cat(drawn).numpy()], minlength=4) / (30 * len(LABELS))
    assert np.allclose(freq, expected, atol=0.02), (freq, expected)
    # a stream of its own: not the background sampler's stream
    background = SAMPLERS.build({"name": "instance"}, labels=LABELS, num_classes=4, seed=0)
    background.set_epoch(0)
    aug.set_epoch(0)
    assert not torch.equal(aug.next_indices(len(LABELS)), background.indices())


def test_wrappers_hand_their_inner_entries_the_one_context():
    """one_of's choices get the very context the trainer gave it; CMO's foreground sampler gets
    it with the foreground stream's seed, derived from the run's, and nothing else changed."""
    ctx = replace(Context(**CONTEXT), world_size=None)  # None: from torch.distributed
    choices = ["remix", {"name": "manifold_mixup", "point": "input"}]
    one_of = AUGMENTS.build({"name": "one_of", "choices": choices, "p": [0.5, 0.5]},
                            **ctx.as_kwargs())
    assert one_of.context is ctx and all(c.context is ctx for c in one_of.choices)
    cmo = AUGMENTS.build({"name": "cmo"}, **ctx.as_kwargs())
    inner = cmo.foreground.context
    assert inner.seed == stream_seed(ctx.seed) != ctx.seed
    assert inner.labels is ctx.labels and inner.fetch is ctx.fetch and inner.world_size is None
    assert replace(inner, seed=ctx.seed) == ctx  # (the same labels array: compared by identity)


def test_cmo_needs_the_trainers_fetch():
    with pytest.raises(ConfigError, match="fetch"):
        CMO(context=Context(labels=LABELS))


# ------------------------------------------------------------------------------------------ Remix
@pytest.mark.parametrize("lam, n_a, n_b, expected", [
    (0.3, 60, 6, 0.0),    # a majority image that is mostly the minority one: all minority
    (0.3, 60, 30, 0.3),   # ratio 2 < kappa 3: plain mixup
    (0.7, 60, 6, 0.7),    # mostly majority pixels: not rebalanced
    (0.8, 6, 60, 1.0),    # a minority image that dominates the pixels: all minority
    (0.4, 6, 60, 0.4),    # 1 - lam = 0.6 >= tau
    (0.5, 60, 20, 0.5),   # ratio exactly kappa but lam == tau: not below tau
    (0.2, 60, 20, 0.0),   # ratio exactly kappa, lam < tau
])
def test_remix_label_rule(lam, n_a, n_b, expected):
    class_counts = [60, 30, 20, 6]
    aug = Remix(kappa=3.0, tau=0.5, context=Context.from_counts(class_counts))
    y_a = torch.tensor([class_counts.index(n_a)])
    y_b = torch.tensor([class_counts.index(n_b)])
    assert float(aug.label_weight(lam, y_a, y_b)[0]) == pytest.approx(expected)


# ------------------------------------------------------------------- mixed losses, by hand in numpy
def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


rng = np.random.default_rng(0)
Z = rng.normal(size=(6, 4))
Y_A = np.array([0, 1, 2, 3, 0, 2])
Y_B = np.array([3, 3, 0, 1, 0, 1])
LAM = np.array([0.2, 0.5, 0.9, 0.0, 1.0, 0.35])
N = np.array(COUNTS, dtype=np.float64)
INV = (1 / N) / (1 / N).sum() * 4  # inverse-frequency weights, normalised to sum to C


def weighted_mix(per_sample, weights):
    """sum(lam w_a l_a) / sum(w_a) + sum((1 - lam) w_b l_b) / sum(w_b)."""
    wa, wb = weights[Y_A], weights[Y_B]
    return ((LAM * wa * per_sample(Y_A)).sum() / wa.sum()
            + ((1 - LAM) * wb * per_sample(Y_B)).sum() / wb.sum())


def soft_targets():
    t = np.zeros((6, 4))
    t[np.arange(6), Y_A] += LAM
    t[np.arange(6), Y_B] += 1 - LAM
    return t


def ce_hand(y):
    return -log_softmax(Z)[np.arange(6), y]


def ldam_hand(y, max_m=0.5, s=30.0):
    margins = N ** -0.25 * (max_m / (N ** -0.25).max())
    shifted = Z.copy()
    shifted[np.arange(6), y] -= margins[y]
    return -log_softmax(s * shifted)[np.arange(6), y]


def balanced_softmax_hand(y):
    return -log_softmax(Z + np.log(N / N.sum()))[np.arange(6), y]


def sigmoid_focal_soft(gamma):
    """The per-class soft-target form: t (1 - p)^g (-log p) + (1 - t) p^g (-log (1 - p))."""
    t, p = soft_targets(), 1 / (1 + np.exp(-Z))
    pos = (1 - p) ** gamma * -log_sigmoid(Z)
    neg = p ** gamma * -log_sigmoid(-Z)
    return (t * pos + (1 - t) * neg).sum(axis=1)


CASES = {
    "ce": ({"name": "ce"}, lambda: weighted_mix(ce_hand, np.ones(4))),
    "ce_weighted": ({"name": "ce", "weights": "inverse"}, lambda: weighted_mix(ce_hand, INV)),
    "ldam": ({"name": "ldam", "max_m": 0.5, "s": 30.0},
             lambda: weighted_mix(ldam_hand, np.ones(4))),
    "balanced_softmax": ({"name": "balanced_softmax"},
                         lambda: weighted_mix(balanced_softmax_hand, np.ones(4))),
    "sigmoid_ce": ({"name": "sigmoid_focal", "gamma": 0.0},
                   lambda: sigmoid_focal_soft(0.0).mean()),
    "sigmoid_focal": ({"name": "sigmoid_focal", "gamma": 2.0},
                      lambda: sigmoid_focal_soft(2.0).mean()),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_mixed_loss_of_every_family_by_hand(name):
    cfg, expected = CASES[name]
    loss = LOSSES.build(cfg, class_counts=COUNTS, num_classes=4)
    batch = Batch(torch.zeros(6, 1), torch.as_tensor(Y_A), torch.as_tensor(Y_B),
                  torch.as_tensor(LAM, dtype=torch.float32))
    got = mixed_loss(loss, torch.as_tensor(Z, dtype=torch.float32), batch)
    assert float(got) == pytest.approx(expected(), rel=1e-5)


def test_deferred_weights_apply_to_both_targets():
    loss = LOSSES.build({"name": "ce", "weights": "inverse", "weights_start_epoch": 2},
                        class_counts=COUNTS, num_classes=4, total_epochs=4)
    batch = Batch(torch.zeros(6, 1), torch.as_tensor(Y_A), torch.as_tensor(Y_B),
                  torch.as_tensor(LAM, dtype=torch.float32))
    logits = torch.as_tensor(Z, dtype=torch.float32)
    loss.set_epoch(1)
    assert float(mixed_loss(loss, logits, batch)) == pytest.approx(
        weighted_mix(ce_hand, np.ones(4)), rel=1e-5)
    loss.set_epoch(2)
    assert float(mixed_loss(loss, logits, batch)) == pytest.approx(
        weighted_mix(ce_hand, INV), rel=1e-5)


# ------------------------------------------------------------------------------- windows and p
def test_window_and_probability():
    torch.manual_seed(6)
    aug = Mixup(p=0.3, start_epoch=2, end_epoch=4)
    batch = batch_of(4)
    mixed = {}
    for epoch in range(6):
        aug.set_epoch(epoch)
        mixed[epoch] = np.mean([aug(batch.x, batch)[1].mixed for _ in range(1000)])
    assert mixed[0] == mixed[1] == mixed[4] == mixed[5] == 0.0
    assert abs(mixed[2] - 0.3) < 0.05 and abs(mixed[3] - 0.3) < 0.05


def test_one_of_draws_each_choice_with_its_probability():
    torch.manual_seed(7)
    aug = build("one_of", choices=[{"name": "mixup"}, {"name": "cutmix"}], p=[0.5, 0.2])
    aug.set_epoch(0)
    calls = [0, 0]
    for i, choice in enumerate(aug.choices):
        real = choice.mix
        choice.mix = (lambda mix, k: lambda h, b: (calls.__setitem__(k, calls[k] + 1),
                                                   mix(h, b))[1])(real, i)
    batch = batch_of(4)
    for _ in range(2000):
        aug(batch.x, batch)
    assert abs(calls[0] / 2000 - 0.5) < 0.04 and abs(calls[1] / 2000 - 0.2) < 0.03


def test_one_of_mixes_with_a_single_point_manifold_mixup_choice():
    """one_of applies a choice through its ``mix``; manifold mixup at one point mixes there as
    mixup does: h' = lam h + (1 - lam) h[perm], targets (y, y[perm]) weighted lam."""
    torch.manual_seed(3)
    aug = build("one_of", choices=[{"name": "manifold_mixup", "point": "features"},
                                   {"name": "manifold_mixup", "point": "features", "alpha": 0.5}],
                p=[1.0, 0.0])
    aug.set_epoch(0)
    h, labels = torch.randn(6, 5), torch.arange(6)  # one label per row: y_b names the partner
    mixed, out = aug(h, Batch.plain(h.clone(), labels))
    lam = float(torch.as_tensor(out.lam).reshape(-1)[0])
    assert 0.0 < lam < 1.0 and torch.equal(out.y_a, labels)
    for i, j in enumerate(out.y_b.tolist()):
        assert torch.allclose(mixed[i], lam * h[i] + (1 - lam) * h[j], atol=1e-6)


def test_manifold_mixup_mixes_at_one_listed_point_per_batch():
    torch.manual_seed(8)
    aug = ManifoldMixup(point=["layer1", "input"],
                        context=Context(point_names=CONTEXT["point_names"]))
    assert aug.points() == ("input", "layer1")  # the model's order
    aug.set_epoch(0)
    at = {s: aug.hook(s) for s in aug.points()}
    where = []
    for _ in range(400):
        batch = batch_of(4)
        h, out = at["input"](batch.x, batch)
        first = out.mixed
        h, out = at["layer1"](h, out)
        where.append("input" if first else "layer1" if out.mixed else "none")
    assert where.count("none") == 0
    assert abs(where.count("input") / 400 - 0.5) < 0.08
    with pytest.raises(ConfigError, match="no point 'layer9'"):
        ManifoldMixup(point="layer9", context=Context(point_names=CONTEXT["point_names"]))


# ------------------------------------------------------------------------- in the trainer
DIGITS = digits(data={"crop_padding": 1, "hflip": True}, train={"epochs": 4})


@pytest.mark.parametrize("augment, key", [
    ([{"name": "mixup"}, {"name": "cutmix"}], "augment[0]"),
    ([{"name": "cmo", "start_epoch": 1}, {"name": "mixup", "end_epoch": 2}], "augment[0]"),
    ([{"name": "manifold_mixup", "point": "layer9"}], "augment[0]"),
])
def test_impossible_combinations_are_refused_before_training(tmp_path, augment, key):
    with pytest.raises(ConfigError) as err:
        train(resolve({**DIGITS, "augment": augment}), tmp_path / "run", quiet=True)
    assert str(err.value).startswith(key), str(err.value)
    assert not (tmp_path / "run").exists()


def test_disjoint_windows_or_one_of_are_accepted(tmp_path):
    train(resolve({**DIGITS, "train": {"epochs": 2, "batch_size": 64},
                   "augment": [{"name": "cmo", "end_epoch": 1},
                               {"name": "mixup", "start_epoch": 1}]}),
          tmp_path / "a", quiet=True)


@pytest.mark.long
def test_resume_inside_the_cmo_window_matches(tmp_path):

    recipe = resolve({**DIGITS, "augment": [{"name": "cmo", "p": 0.5, "start_epoch": 1,
                                             "end_epoch": 3}]})
    full = train(recipe, tmp_path / "full", quiet=True)
    # stopped inside the window
    assert_same_training(resumed_run(recipe, tmp_path / "cut", stop_after=2), full)


# ------------------------------------------------------------------------------------- recipes
AUGMENT_RECIPES = ["mixup", "manifold_mixup", "remix", "cutmix", "cmo_ce", "cmo_ce_drw",
                   "cmo_ldam_drw", "cmo_bs", "mixup_finetune"]


def on_digits_with_windows(recipe: dict) -> dict:
    """The recipe's tricks on the digits for 3 epochs (1 per later phase), every augmentation
    window opened at epoch 1 and left open, so both sides of it run."""
    from conftest import on_digits

    recipe = on_digits(recipe, epochs=3)
    for aug in recipe["augment"]:
        aug.pop("end_epoch", None)
        if aug.get("start_epoch"):
            aug["start_epoch"] = 1
    for phase in recipe.get("phases") or []:
        phase.setdefault("train", {})["epochs"] = 1
    return recipe


def first_augment(name: str) -> str:
    from lttoolbox.recipe import read_recipe
    return read_recipe(ROOT / "configs" / "cifar10_lt" / f"{name}.yaml")["augment"][0]["name"]


# README's quick set runs one recipe per augmentation; .ci/run runs every recipe.
@pytest.mark.parametrize("name", one_per_entry({name: first_augment(name)
                                                for name in AUGMENT_RECIPES}))
def test_augmentation_recipes_run(name, tmp_path):
    from pathlib import Path

    from lttoolbox.recipe import read_recipe
    root = Path(__file__).resolve().parents[1] / "configs"
    recipe = read_recipe(root / "cifar10_lt" / f"{name}.yaml")
    recipe = resolve(on_digits_with_windows(recipe))
    results = train(recipe, tmp_path / name, quiet=True)
    assert results["top1"] > 15.0  # chance is 10 %
