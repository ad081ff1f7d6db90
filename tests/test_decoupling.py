"""Decoupled classifier heads (tau-norm, LWS), cRT as a phase, and the held-out validation split."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import digits
from lttoolbox.data.dataset import validation_split
from lttoolbox.data.profiles import long_tail_counts, select_long_tail
from lttoolbox.engine import train
from lttoolbox.errors import ConfigError
from lttoolbox.models import LinearHead, LWSHead, TauNormHead
from lttoolbox.recipe import resolve

DIGITS = digits(data={"val_per_class": 10}, train={"epochs": 3})


# BatchNorm buffers, which a frozen block re-estimates by default
STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def trained_linear(seed: int = 0) -> LinearHead:
    torch.manual_seed(seed)
    head = LinearHead(5, 4)
    with torch.no_grad():
        head.weight.mul_(torch.tensor([[3.0], [1.0], [0.5], [0.1]]))  # unequal row norms
        head.bias.uniform_(-1, 1)
    return head


# ------------------------------------------------------------------------------------- tau-norm
@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 1.7])
def test_tau_norm_divides_each_row_by_its_norm_to_the_power_tau(tau):
    old = trained_linear()
    head = TauNormHead(5, 4, tau=tau)
    head.adopt(old)
    w = old.weight.detach().numpy().astype(np.float64)
    expected_w = w / np.linalg.norm(w, axis=1, keepdims=True) ** tau
    f = np.random.default_rng(1).normal(size=(3, 5))
    got = head(torch.as_tensor(f, dtype=torch.float32)).detach().numpy()
    assert np.allclose(got, f @ expected_w.T, atol=1e-5)


def test_tau_zero_is_the_classifier_without_its_bias_and_tau_one_equalises_norms():
    old = trained_linear()
    f = torch.randn(6, 5)
    zero = TauNormHead(5, 4, tau=0.0)
    zero.adopt(old)
    assert torch.allclose(zero(f), old(f) - old.bias, atol=1e-6)
    kept = TauNormHead(5, 4, tau=0.0, keep_bias=True)
    kept.adopt(old)
    assert torch.allclose(kept(f), old(f), atol=1e-6)
    one = TauNormHead(5, 4, tau=1.0)
    one.adopt(old)
    assert torch.allclose(one.normalised_weight().norm(dim=1), torch.ones(4), atol=1e-6)


def test_tau_auto_chooses_on_the_given_score_only():
    head = TauNormHead(5, 4, tau="auto", grid=[0.0, 0.5, 1.0, 1.5])
    head.adopt(trained_linear())
    assert head.needs_validation
    record = head.select(lambda: -abs(float(head.tau) - 1.0))  # a score that peaks at tau 1
    assert float(head.tau) == 1.0
    assert record["tau_norm"]["tau"] == 1.0
    assert [g["tau"] for g in record["tau_norm"]["grid"]] == [0.0, 0.5, 1.0, 1.5]
    assert not TauNormHead(5, 4, tau=1.0).select(lambda: 0.0)  # a fixed tau chooses nothing


# ------------------------------------------------------------------------------------------ LWS
def test_lws_scales_the_frozen_classifier_and_has_only_scales_to_train():
    old = trained_linear()
    head = LWSHead(5, 4)
    head.adopt(old)
    assert [name for name, _ in head.named_parameters()] == ["scales"]
    f = torch.randn(3, 5)
    assert torch.allclose(head(f), old(f), atol=1e-6)   # scales start at 1
    with torch.no_grad():
        head.scales.copy_(torch.tensor([2.0, 1.0, 0.5, 0.0]))
    assert torch.allclose(head(f), old(f) * torch.tensor([2.0, 1.0, 0.5, 0.0]), atol=1e-6)


# --------------------------------------------------------------------------- phases on the digits
def phases(*later):
    return resolve({**DIGITS, "phases": [{"name": "joint"}, *later]})


@pytest.mark.long
def test_lws_phase_trains_only_the_scales(tmp_path):
    train(phases({"name": "lws", "model": {"head": "lws"}, "sampler": {"name": "class_balanced"},
                  "train": {"epochs": 2, "freeze": ["backbone"]}}), tmp_path / "run", quiet=True)
    joint = torch.load(tmp_path / "run" / "model-joint.pt")
    lws = torch.load(tmp_path / "run" / "model-lws.pt")
    for name, value in joint.items():  # BatchNorm statistics move: see the tests below
        if not name.startswith("head.") and not name.endswith(STATISTICS):
            assert torch.equal(lws[name], value), name
    assert torch.equal(lws["head.weight"], joint["head.weight"])
    assert torch.equal(lws["head.bias"], joint["head.bias"])
    assert not torch.equal(lws["head.scales"], torch.ones(10))


@pytest.mark.long
def test_tau_norm_phase_takes_over_the_previous_weights_and_chooses_on_validation(tmp_path):
    results = train(phases({"name": "tau", "model": {"head": {"name": "tau_norm", "tau": "auto"}},
                            "train": {"epochs": 0}}), tmp_path / "run", quiet=True)
    joint = torch.load(tmp_path / "run" / "model-joint.pt")
    tau = torch.load(tmp_path / "run" / "model-tau.pt")
    assert torch.equal(tau["head.weight"], joint["head.weight"])  # phase chaining
    chosen = results["selection"]["tau_norm"]
    assert float(tau["head.tau"]) == pytest.approx(chosen["tau"])
    best = max(chosen["grid"], key=lambda g: g["val_top1"])
    assert best["tau"] == chosen["tau"] and len(chosen["grid"]) == 21
    assert results["val"]["top1"] == pytest.approx(best["val_top1"])
    assert results["epochs"] == 3


@pytest.mark.long
def test_crt_reinitialises_and_retrains_the_classifier_only(tmp_path):
    train(phases({"name": "crt", "sampler": {"name": "class_balanced"},
                  "train": {"epochs": 2, "freeze": ["backbone"], "reset_head": True}}),
          tmp_path / "run", quiet=True)
    joint = torch.load(tmp_path / "run" / "model-joint.pt")
    crt = torch.load(tmp_path / "run" / "model-crt.pt")
    assert all(torch.equal(crt[k], v) for k, v in joint.items()
               if not k.startswith("head.") and not k.endswith(STATISTICS))
    assert not torch.equal(crt["head.weight"], joint["head.weight"])


def short(*later):
    """A one-epoch joint phase, then ``later``."""
    return resolve({**DIGITS, "train": {**DIGITS["train"], "epochs": 1},
                    "phases": [{"name": "joint"}, *later]})


CRT = {"name": "crt", "sampler": {"name": "class_balanced"},
       "train": {"epochs": 2, "freeze": ["backbone"], "reset_head": True}}


@pytest.mark.parametrize("head, freeze_bn_stats", [("linear", False), ("lws", True)])
def test_crt_and_lws_re_estimate_the_frozen_batch_norm_statistics_unless_told(
        tmp_path, head, freeze_bn_stats):
    """As classifier-balancing (run_networks.py 115-120, 249 at f162ade) and Bag of Tricks
    (network.py 91-94, function.py 21-24 at ce7859a): the backbone's weights are frozen, the
    network trains in train mode, so its BatchNorm statistics follow the class-balanced batches
    of the second phase; ``freeze_bn_stats`` keeps the first phase's."""
    later = {**CRT, "train": {**CRT["train"], "freeze_bn_stats": freeze_bn_stats}}
    if head == "lws":
        later = {**later, "model": {"head": "lws"},
                 "train": {**later["train"], "reset_head": False}}
    train(short(later), tmp_path / "run", quiet=True)
    joint = torch.load(tmp_path / "run" / "model-joint.pt")
    crt = torch.load(tmp_path / "run" / "model-crt.pt")
    backbone = [k for k in joint if not k.startswith("head.")]
    stats = [k for k in backbone if k.endswith(STATISTICS)]
    assert stats and all(torch.equal(crt[k], joint[k]) for k in backbone if k not in stats)
    moved = [k for k in stats if not torch.equal(crt[k], joint[k])]
    assert moved == ([] if freeze_bn_stats else stats)


@pytest.mark.long
def test_crt_resumed_inside_the_phase_ends_with_the_same_statistics(tmp_path):
    """The running statistics are buffers of the state dict: a cRT phase interrupted after its
    first epoch and resumed ends bit for bit where the uninterrupted run ends."""
    from test_engine import StopAfter

    recipe = short(CRT)
    train(recipe, tmp_path / "full", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "cut", logger=StopAfter(2))  # joint 1 epoch, crt 1
    train(recipe, tmp_path / "cut", resume=True, quiet=True)
    full = torch.load(tmp_path / "full" / "model-crt.pt")
    cut = torch.load(tmp_path / "cut" / "model-crt.pt")
    joint = torch.load(tmp_path / "full" / "model-joint.pt")
    assert any(not torch.equal(full[k], joint[k]) for k in full if k.endswith(STATISTICS))
    assert full.keys() == cut.keys()
    for k in full:
        assert torch.equal(full[k], cut[k]), k


def test_freeze_bn_stats_needs_a_frozen_phase_and_counts_in_the_hash_only_where_it_acts():
    from lttoolbox.recipe import recipe_hash

    with pytest.raises(ConfigError, match=r"^phases\[1\]\.train\.freeze_bn_stats: .*names none"):
        phases({"name": "joint2", "train": {"freeze_bn_stats": True}})
    with pytest.raises(ConfigError, match=r"train\.freeze_bn_stats: must be true or false"):
        phases({**CRT, "train": {**CRT["train"], "freeze_bn_stats": "yes"}})
    fixed = phases({**CRT, "train": {**CRT["train"], "freeze_bn_stats": True}})
    assert recipe_hash(fixed) != recipe_hash(phases(CRT))
    # a recipe that freezes nothing hashes as if the key did not exist
    plain = resolve(DIGITS)
    without = {**plain, "train": {k: v for k, v in plain["train"].items()
                                  if k != "freeze_bn_stats"}}
    assert "freeze_bn_stats" in plain["train"]
    assert recipe_hash(plain) == recipe_hash(without)


CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"
RETRAINING = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")
                    if "reset_head: true" in p.read_text())


@pytest.mark.parametrize("name", RETRAINING)
def test_every_crt_recipe_retrains_an_nn_linear_initialised_as_pytorch_does(name):
    from lttoolbox.recipe import load_recipe

    assert len(RETRAINING) >= 8  # the CIFAR, ImageNet-LT, Places-LT and iNaturalist cRT rows
    retrained = [s for s in load_recipe(CONFIGS / name)["phases"] if s["train"]["reset_head"]]
    assert retrained
    for phase in retrained:
        assert phase["model"]["head"] == {"name": "linear", "init": "pytorch"}


def test_the_crt_phase_starts_from_nn_linears_init(tmp_path):
    from lttoolbox.engine import Trainer

    recipe = short({**CRT, "model": {"head": {"name": "linear", "init": "pytorch"}}})
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    trainer._enter_phase(1)
    head = trainer.model.head
    assert head.init == "pytorch" and head.weight.abs().max() <= 1 / 64 ** 0.5


@pytest.mark.parametrize("later, message", [
    ({"name": "tau", "model": {"head": "tau_norm"}, "train": {"epochs": 0}},
     None),  # accepted: a linear head before it
    ({"name": "tau", "model": {"head": {"name": "tau_norm", "tau": "auto"}},
      "train": {"epochs": 0}}, "chooses on the validation split"),
])
def test_tau_auto_needs_a_validation_split(tmp_path, later, message):
    recipe = {**DIGITS, "data": {"name": "digits_lt", "imbalance_ratio": 10},
              "phases": [{"name": "joint"}, later]}
    if message is None:
        train(resolve(recipe), tmp_path / "run", quiet=True)
        return
    with pytest.raises(ConfigError, match=f"^phases\\[1\\].model.head: .*{message}"):
        train(resolve(recipe), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_tau_norm_refuses_to_follow_a_cosine_head(tmp_path):
    recipe = {**DIGITS, "model": {"name": "digits_cnn", "head": "cosine"},
              "phases": [{"name": "joint"},
                         {"name": "tau", "model": {"head": "tau_norm"}, "train": {"epochs": 0}}]}
    with pytest.raises(ConfigError, match="must be one of linear.*got cosine"):
        train(resolve(recipe), tmp_path / "run", quiet=True)


def test_only_a_later_phase_may_train_zero_epochs():
    with pytest.raises(ConfigError, match="^train.epochs"):
        resolve({**DIGITS, "train": {"epochs": 0}})
    assert resolve({**DIGITS, "phases": [{"name": "a"}, {"name": "b", "train": {"epochs": 0}}]})


# ------------------------------------------------------------------------------ validation split
def cifar10_like():
    labels = np.repeat(np.arange(10), 5000)
    counts = long_tail_counts(5000, 10, "exp", 100)
    return labels, select_long_tail(labels, counts, "protocol", 0), counts


def test_validation_split_is_disjoint_balanced_and_takes_from_kept_only_when_short():
    labels, kept, counts = cifar10_like()
    new_kept, val, given_up = validation_split(labels, kept, 10, 20, seed=0)
    assert not set(val.tolist()) & set(new_kept.tolist())
    assert np.bincount(labels[val], minlength=10).tolist() == [20] * 10
    # CIFAR-10-LT at ratio 100: class 0 keeps all 5,000 images, so it gives up 20 (trains on
    # 4,980); every other class has unused images to spare
    assert given_up == [20] + [0] * 9
    assert np.bincount(labels[new_kept], minlength=10).tolist() == [counts[0] - 20] + counts[1:]
    # seeded: the same every time, another seed another split
    assert np.array_equal(validation_split(labels, kept, 10, 20, seed=0)[1], val)
    assert not np.array_equal(validation_split(labels, kept, 10, 20, seed=1)[1], val)


def test_without_a_validation_split_the_profile_is_unchanged():
    from lttoolbox.data import digits

    plain, split = digits.digits_lt(), digits.digits_lt(val_per_class=10)
    assert plain.val is None and "val_per_class" not in plain.meta
    assert split.val.class_counts == [10] * 10
    assert split.meta["val_from_kept"][0] > 0   # digits' head class keeps nearly everything
    drop = split.meta["val_from_kept"]
    assert [a - b for a, b in zip(plain.train.class_counts, split.train.class_counts)] == drop
    with pytest.raises(ConfigError, match="val_per_class"):
        digits.digits_lt(val_per_class=0)


@pytest.mark.long
@pytest.mark.parametrize("name", ["ce_crt", "ce_lws", "ce_tau_norm", "ldam_drw_crt", "cmo_ce_crt",
                                  "cmo_ce_lws", "cmo_ce_tau_norm"])
def test_decoupling_recipes_run(tmp_path, name):
    from pathlib import Path

    from lttoolbox.recipe import read_recipe
    root = Path(__file__).resolve().parents[1] / "configs"
    recipe = read_recipe(root / "cifar10_lt" / f"{name}.yaml")
    val = recipe["data"].get("val_per_class")
    recipe.update(data={"name": "digits_lt", **({"val_per_class": 10} if val else {})},
                  model={"name": "digits_cnn"}, train={**recipe["train"], "epochs": 2},
                  schedule={**recipe["schedule"], "warmup_epochs": 0, "milestones": []})
    for phase in recipe["phases"]:
        if phase.get("train", {}).get("epochs"):
            phase["train"]["epochs"] = 1
    results = train(resolve(recipe), tmp_path / name, quiet=True)
    second = recipe["phases"][1]["name"]
    assert [s["name"] for s in results["phases"]] == ["joint", second]
    trained = 2 + (0 if second == "tau_norm" else 1)
    assert len(results["history"]) == trained == results["epochs"]
    assert all(np.isfinite(r["loss"]) for r in results["history"])


def test_replace_in_an_overlay_drops_the_base_mapping():
    from lttoolbox.recipe import deep_merge

    base = {"loss": {"name": "ldam", "max_m": 0.5}, "optim": {"lr": 0.1}}
    assert deep_merge(base, {"loss": {"name": "ce"}})["loss"] == {"name": "ce", "max_m": 0.5}
    assert deep_merge(base, {"loss": {"_replace_": True, "name": "ce"}})["loss"] == {"name": "ce"}
