"""Optimizer construction: weight-decay exemptions (optim.no_decay), and values checked before
anything is written."""
from pathlib import Path

import pytest
import torch

from lttoolbox.engine import Trainer
from lttoolbox.engine.optim import build_optimizer
from lttoolbox.errors import ConfigError
from lttoolbox.recipe import load_recipe, resolve
from lttoolbox.registry import MODELS

REPO = Path(__file__).resolve().parents[1]


def digits_model():
    torch.manual_seed(0)
    return MODELS.build({"name": "digits_cnn", "head": {"name": "linear", "prior": "uniform"}},
                        key="model", num_classes=10, in_channels=1, image_size=8)


def one_decay_step(model, no_decay):
    """One SGD step with zero gradients: only weight decay moves a parameter."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, {"name": "sgd", "lr": 0.1, "momentum": 0.0,
                                        "weight_decay": 0.5, "no_decay": no_decay})
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return {n: torch.allclose(p.detach(), before[n] * 0.95) and not torch.equal(p, before[n])
            for n, p in model.named_parameters() if before[n].abs().sum() > 0}


def test_no_decay_exempts_exactly_the_named_parameters():
    model = digits_model()
    # p <- p - lr * wd * p = 0.95 p for a decayed parameter; an exempt one does not move.
    decayed = one_decay_step(model, [])
    assert decayed and all(decayed.values())
    decayed = one_decay_step(model, ["head.bias"])
    assert decayed.pop("head.bias") is False and all(decayed.values())
    norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    decayed = one_decay_step(model, ["bias", "norm"])
    for name, moved in decayed.items():
        exempt = name.endswith(".bias") or name.rsplit(".", 1)[0] in norms
        assert moved is not exempt, name


@pytest.mark.parametrize("spec, match", [
    (["head.bais"], "'head.bais' matches no parameter"),
    ("head.bias", "must be a list"),
])
def test_no_decay_names_are_checked_before_anything_is_written(tmp_path, spec, match):
    recipe = {"data": {"name": "digits_lt"}, "model": {"name": "digits_cnn"},
              "optim": {"no_decay": spec}, "train": {"epochs": 1}}
    with pytest.raises(ConfigError, match=f"^optim.no_decay: .*{match}"):
        Trainer(resolve(recipe), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["sigmoid_focal", "cb_focal", "sigmoid_focal_drw",
                                  "cb_focal_drw"])
def test_sigmoid_recipes_exempt_the_prior_bias_only(name):
    for data in ("cifar10_lt", "cifar100_lt"):
        recipe = load_recipe(REPO / "configs" / data / f"{name}.yaml")
        assert recipe["optim"]["no_decay"] == ["head.bias"]
        assert recipe["model"]["head"]["prior"] == "uniform"
    assert load_recipe(REPO / "configs/cifar10_lt/ce.yaml")["optim"]["no_decay"] == []


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_update_on_cuda_only(name):
    model = digits_model()
    optimizer = build_optimizer(model, {"name": name, "lr": 0.1})
    assert not optimizer.defaults.get("fused")  # CPU: torch's default implementation
    if torch.cuda.is_available():  # CI has no GPU; a GPU machine checks the fast path
        cuda = build_optimizer(model.cuda(), {"name": name, "lr": 0.1})
        assert cuda.defaults["fused"] is True


def toy_poly(epoch, base_lr, total_epochs, warmup_epochs, power=0.9):
    """Polynomial decay, a schedule with a parameter of its own."""
    return base_lr * (1 - epoch / total_epochs) ** power


def test_a_schedule_with_a_parameter_of_its_own_is_one_registered_function(tmp_path):
    """Its parameter is a recipe key of ``schedule`` (default from its signature) only when it is
    the chosen schedule; the rate each epoch trains at is the formula's."""
    from conftest import digits
    from lttoolbox.engine import train
    from lttoolbox.registry import SCHEDULES

    with SCHEDULES.scoped():
        SCHEDULES.register("toy_poly")(toy_poly)
        assert resolve(digits(schedule={"name": "toy_poly"}))["schedule"]["power"] == 0.9
        with pytest.raises(ConfigError, match=r"schedule\.power"):  # not multistep's
            resolve(digits(schedule={"name": "multistep", "power": 2}))
        recipe = resolve(digits(schedule={"name": "toy_poly", "power": 2},
                                optim={"lr": 0.08}, train={"epochs": 3}))
        results = train(recipe, tmp_path / "run", quiet=True)
    lrs = [row["lr"] for row in results["history"]]
    assert lrs == pytest.approx([0.08 * (1 - e / 3) ** 2 for e in range(3)], rel=1e-12)
    assert "power" not in resolve(digits())["schedule"]  # other recipes are unchanged


@pytest.mark.parametrize("optim, match", [
    # a value only torch checks: refused by the trial build, with the section's key
    ({"name": "sgd", "momentum": 0.0, "nesterov": True}, r"^optim: .*Nesterov momentum requires"),
    # null is a value only where the entry's default is null (sam: the base's default)
    ({"name": "sgd", "momentum": None}, r"^optim\.momentum: must be a number"),
    ({"name": "sgd", "nesterov": None}, r"^optim\.nesterov: must be true or false"),
])
def test_values_only_the_optimizer_checks_stop_before_anything_is_written(tmp_path, optim,
                                                                         match):
    from lttoolbox.engine import train

    recipe = {"data": {"name": "digits_lt"}, "model": {"name": "digits_cnn"}, "optim": optim,
              "train": {"epochs": 1}}
    with pytest.raises(ConfigError, match=match):
        train(recipe, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
