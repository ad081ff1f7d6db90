"""The learning-rate schedule: the 200-epoch protocol, the scaled (per-step) warm-up, --epochs."""
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import lttoolbox.engine.loop as trainer_module  # the epoch loop sets the rate
from lttoolbox.cli import main
from lttoolbox.engine import train
from lttoolbox.engine.optim import lr_at
from lttoolbox.errors import ConfigError
from lttoolbox.recipe import (apply_overrides, load_recipe, resolve, scale_epochs,
                              squeezed_phases, unreachable_epoch_keys)

REPO = Path(__file__).resolve().parents[1]


def ldam_script_lr(epoch0: int) -> float:
    """``adjust_learning_rate`` of the LDAM-DRW script (kaidic/LDAM-DRW, cifar_train.py), written
    out again: it adds 1 to the 0-based epoch, warms up while the result is <= 5 and decays by
    0.01 after 160 and again after 180."""
    epoch = epoch0 + 1
    if epoch <= 5:
        return 0.1 * epoch / 5
    if epoch > 180:
        return 0.1 * 0.0001
    if epoch > 160:
        return 0.1 * 0.01
    return 0.1


def recipe_rate(recipe: dict, epoch: int, step: int = 0, steps: int = 1) -> float:
    return lr_at(epoch, recipe["optim"]["lr"], total_epochs=recipe["train"]["epochs"],
                 step=step, steps=steps, **recipe["schedule"])


def test_the_200_epoch_protocol_is_the_ldam_script_per_epoch():
    recipe = load_recipe(REPO / "configs/cifar10_lt/ldam_drw.yaml")
    assert recipe["schedule"]["warmup_unit"] == "epoch"
    for epoch in range(200):
        # Per epoch: every step of an epoch gets the same rate.
        for step in (0, 50, 96):
            assert recipe_rate(recipe, epoch, step, 97) == pytest.approx(ldam_script_lr(epoch),
                                                                         rel=1e-12), epoch
    assert [round(recipe_rate(recipe, e), 10) for e in range(6)] == [0.02, 0.04, 0.06, 0.08,
                                                                     0.1, 0.1]


def test_the_quick_protocol_warms_up_over_the_same_fraction_of_steps():
    quick = resolve(scale_epochs(load_recipe(REPO / "configs/cifar10_lt/ldam_drw.yaml"), 30))
    assert quick["schedule"]["warmup_unit"] == "step"
    assert quick["schedule"]["warmup_epochs"] == 0.75   # 5 of 200 epochs is 0.75 of 30
    steps = 97  # ceil(12,406 / 128): CIFAR-10-LT ratio 100 at batch 128
    # Warm-up lasts 0.75 * 97 = 72.75 steps: step s (0-based) runs at 0.1 * (s + 1) / 72.75.
    assert recipe_rate(quick, 0, 0, steps) == pytest.approx(0.1 / 72.75)
    assert recipe_rate(quick, 0, 35, steps) == pytest.approx(0.1 * 36 / 72.75)
    assert recipe_rate(quick, 0, 71, steps) == pytest.approx(0.1 * 72 / 72.75)
    assert recipe_rate(quick, 0, 72, steps) == pytest.approx(0.1)   # 73 / 72.75 > 1: capped
    assert recipe_rate(quick, 0, 96, steps) == pytest.approx(0.1)
    # After it: the full rate, then x0.01 at 24 (160 of 200) and again at 27 (180 of 200).
    assert [recipe_rate(quick, e) for e in (1, 23)] == [0.1, 0.1]
    assert recipe_rate(quick, 24) == pytest.approx(1e-3)
    assert recipe_rate(quick, 27) == pytest.approx(1e-5)


def test_a_per_epoch_warm_up_must_be_whole_epochs():
    base = {"data": {"name": "digits_lt"}, "model": {"name": "digits_cnn"}}
    with pytest.raises(ConfigError, match="^schedule.warmup_epochs: .*warmup_unit: step"):
        resolve(apply_overrides(base, ["schedule.warmup_epochs=0.5"]))
    assert resolve(apply_overrides(base, ["schedule.warmup_epochs=0.5",
                                          "schedule.warmup_unit=step"]))
    with pytest.raises(ConfigError, match="^schedule.warmup_unit"):
        resolve(apply_overrides(base, ["schedule.warmup_unit=batch"]))
    with pytest.raises(ConfigError, match="^schedule.warmup_epochs"):
        resolve(apply_overrides(base, ["schedule.warmup_epochs=-1", "schedule.warmup_unit=step"]))


def test_the_trainer_sets_the_rate_of_every_warm_up_step(tmp_path, monkeypatch):
    seen = []
    real = trainer_module.set_lr
    monkeypatch.setattr(trainer_module, "set_lr",
                        lambda optimizer, lr: (seen.append(lr), real(optimizer, lr)))
    recipe = resolve({"data": {"name": "digits_lt", "imbalance_ratio": 10},
                      "model": {"name": "digits_cnn"},
                      "optim": {"lr": 0.05},
                      "schedule": {"name": "multistep", "warmup_epochs": 1.5,
                                   "warmup_unit": "step", "milestones": [2], "gamma": 0.1},
                      "train": {"epochs": 3, "batch_size": 64}})
    results = train(recipe, tmp_path / "run", quiet=True)
    images = sum(results["train_class_counts"])
    steps = math.ceil(images / 64)
    # By hand: epoch 0 climbs to 0.05 * (1 / 1.5), epoch 1 reaches 0.05 at step (steps / 2),
    # epoch 2 is decayed: one rate per step while warming up, then one per epoch.
    expected = [0.05 * min(1.0, (epoch + (s + 1) / steps) / 1.5)
                for epoch in range(2) for s in range(steps)] + [0.005]
    assert seen == pytest.approx(expected)
    assert seen[0] == pytest.approx(0.05 / 1.5 / steps)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [row["lr"] for row in log] == pytest.approx([0.05 / 1.5, 0.05, 0.005])


def phased_digits_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"name": "digits_lt", "imbalance_ratio": 10},
        "model": {"name": "digits_cnn"},
        "sampler": {"name": "class_balanced", "start_epoch": 16},
        "loss": {"name": "ce", "weights": {"name": "inverse"},
                 "weights_start_epoch": 16},
        "schedule": {"name": "multistep", "warmup_epochs": 1, "milestones": [16, 18]},
        "train": {"epochs": 20, "batch_size": 128}}))
    return path


def test_epochs_flag_rescales_and_train_epochs_warns_once_per_key(tmp_path, capsys):
    path = phased_digits_recipe(tmp_path)
    assert main([str(path), "--epochs", "5", "--out", str(tmp_path / "scaled"), "--quiet"]) == 0
    saved = yaml.safe_load((tmp_path / "scaled" / "recipe.yaml").read_text())
    assert saved["train"]["epochs"] == 5
    assert saved["schedule"]["milestones"] == [4, 4]                   # 16 * 0.25, 18 * 0.25
    assert saved["sampler"]["start_epoch"] == 4
    assert saved["loss"]["weights_start_epoch"] == 4
    assert saved["schedule"]["warmup_epochs"] == 0.25
    assert saved["schedule"]["warmup_unit"] == "step"
    # 16 and 18 both land on 4: the epochs between the two decays are lost, and said so
    assert [line for line in capsys.readouterr().err.splitlines() if line.strip()] == [
        "warning: --epochs 5 squeezes the run from 20 epochs to 5, fewer than its schedule "
        "needs: loss.weights_start_epoch=16 becomes 4; sampler.start_epoch=16 becomes 4; "
        "schedule.milestones [16, 18] become [4, 4], so its epochs 16-17 are lost"]

    assert main([str(path), "train.epochs=5", "--out", str(tmp_path / "cut"), "--quiet"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith("warning: ") for line in warnings), err
    named = sorted(line.split()[1].split("=")[0] for line in warnings)
    assert named == ["loss.weights_start_epoch", "sampler.start_epoch", "schedule.milestones"]
    assert "UserWarning" not in err and ".py:" not in err


def test_unreachable_keys_are_found_in_every_phase():
    recipe = resolve({"data": {"name": "digits_lt"}, "model": {"name": "digits_cnn"},
                      "schedule": {"warmup_epochs": 4, "milestones": [1, 3]},
                      "augment": [{"name": "x", "start_epoch": 0, "end_epoch": 3}],
                      "train": {"epochs": 3},
                      "phases": [{"name": "a"},
                                 {"name": "b", "train": {"epochs": 5},
                                  "schedule": {"warmup_epochs": 0}}]})
    found = unreachable_epoch_keys(recipe)
    # augment[0].end_epoch=3 of 3 epochs: the window lasts to the end of the run, nothing lost
    assert [m.split(" ")[0].split("=")[0] for m in found] == [
        "phases[0].schedule.warmup_epochs", "phases[0].schedule.milestones"]
    assert "[3]" in found[1]
    assert unreachable_epoch_keys(load_recipe(REPO / "configs/cifar10_lt/ldam_drw.yaml")) == []


@pytest.mark.parametrize("end, named", [(4, True), (5, True), (3, False), (2, False)])
def test_a_window_that_ends_with_the_run_is_not_named(end, named):
    recipe = resolve({"data": {"name": "digits_lt"}, "model": {"name": "digits_cnn"},
                      "augment": [{"name": "mixup", "end_epoch": end}],
                      "sampler": {"name": "class_balanced", "start_epoch": 3},
                      "train": {"epochs": 3}})
    found = [m.split("=")[0] for m in unreachable_epoch_keys(recipe)]
    # a start at 3 of 3 epochs never happens; an end at 3 is the run's own end
    assert sorted(found) == [*(["augment[0].end_epoch"] if named else []), "sampler.start_epoch"]


# ------------------------------------------------------------- warm-up and milestones together
def test_milestones_apply_inside_a_per_step_warm_up():
    """lr = decayed(epoch) * warm(epoch, step); by hand with 4 steps per epoch, lr 0.1,
    gamma 0.1, a warm-up of 1.5 epochs and a milestone at epoch 1."""
    def rate(epoch, step):
        return lr_at(epoch, 0.1, warmup_epochs=1.5, warmup_unit="step", milestones=[1],
                     gamma=0.1, step=step, steps=4)

    # epoch 0, undecayed: 0.1 * (s + 1) / 4 / 1.5
    assert [rate(0, s) for s in range(4)] == pytest.approx([0.1 / 6, 0.2 / 6, 0.3 / 6, 0.4 / 6])
    # epoch 1, decayed to 0.01, still warming up: 0.01 * (1 + (s + 1) / 4) / 1.5, capped at 1
    assert [rate(1, s) for s in range(4)] == pytest.approx([0.0125 / 1.5, 0.015 / 1.5, 0.01,
                                                           0.01])
    assert rate(2, 0) == pytest.approx(0.01)


def test_a_squeezed_phase_warms_up_to_its_decayed_rate():
    """cRT (30 epochs, milestones [10, 20], lr 0.1, gamma 0.1, warm-up 5) after a 200-epoch
    phase, scaled with --epochs 3: 1 epoch, milestones [0, 0], a warm-up of 0.075 epochs."""
    recipe = resolve(scale_epochs(load_recipe(REPO / "configs/cifar10_lt/ldam_drw_crt.yaml"), 3))
    crt = recipe["phases"][1]
    assert crt["train"]["epochs"] == 1 and crt["schedule"]["milestones"] == [0, 0]
    assert crt["schedule"]["warmup_epochs"] == 0.075
    steps = 97  # 0.075 * 97 = 7.275 warm-up steps towards 0.1 * 0.1 ** 2 = 0.001
    expected = [0.001 * (s + 1) / 7.275 for s in range(7)] + [0.001] * 90
    assert [recipe_rate(crt, 0, s, steps) for s in range(steps)] == pytest.approx(expected)
    # per epoch too: a 2-epoch warm-up over a milestone at 1 reaches 0.1 * 0.1, not 0.1
    assert lr_at(1, 0.1, warmup_epochs=2, milestones=[1], gamma=0.1) == pytest.approx(0.01)
    assert lr_at(0, 0.1, warmup_epochs=2, milestones=[1], gamma=0.1) == pytest.approx(0.05)


def test_squeezed_phases_are_named_with_what_they_lose():
    crt = load_recipe(REPO / "configs/cifar10_lt/ldam_drw_crt.yaml")
    assert squeezed_phases(crt, 3) == [
        "--epochs 3 squeezes phase 'joint' from 200 epochs to 3, fewer than its schedule needs: "
        "schedule.milestones [160, 180] become [2, 3], so its epochs 180-199 are lost",
        "--epochs 3 squeezes phase 'crt' from 30 epochs to 1, fewer than its schedule needs: "
        "schedule.milestones [10, 20] become [0, 0], so its epochs 0-19 are lost"]
    # the quick protocol's 30 epochs keep every period of both phases: [24, 27] and [2, 3] of 4
    assert squeezed_phases(crt, 30) == []
    assert squeezed_phases(crt, 200) == [] and squeezed_phases(crt, 400) == []
    # a window that ends with the phase ends with the scaled phase: nothing lost
    windowed = resolve({"data": {"name": "digits_lt"}, "model": {"name": "digits_cnn"},
                        "augment": [{"name": "mixup", "start_epoch": 100, "end_epoch": 200}],
                        "train": {"epochs": 200}})
    assert squeezed_phases(windowed, 3) == []
    one = squeezed_phases(resolve({**windowed, "augment": [{"name": "mixup", "end_epoch": 197}]}),
                          30)
    assert one == ["--epochs 30 squeezes the run from 200 epochs to 30, fewer than its schedule "
                   "needs: augment[0].end_epoch=197 becomes 30, so its epochs 197-199 are lost"]


def test_epochs_flag_warns_about_a_squeezed_phase_and_trains_it_at_its_rate(tmp_path, capsys):
    """What a new user met: a later phase squeezed to milestones [0, 0] trained at the full
    rate, silently. It now trains at its decayed rate, with one warning line."""
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"name": "digits_lt", "imbalance_ratio": 10}, "model": {"name": "digits_cnn"},
        "optim": {"lr": 0.1}, "train": {"epochs": 20, "batch_size": 128},
        "phases": [{"name": "joint"},
                   {"name": "crt", "sampler": {"name": "class_balanced"},
                    "schedule": {"warmup_epochs": 1, "milestones": [2, 4], "gamma": 0.1},
                    "train": {"epochs": 10, "freeze": ["backbone"], "reset_head": True}}]}))
    assert main([str(path), "--epochs", "2", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert warnings == ["warning: --epochs 2 squeezes phase 'crt' from 10 epochs to 1, fewer "
                        "than its schedule needs: schedule.milestones [2, 4] become [0, 0], so "
                        "its epochs 0-3 are lost"]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [row["phase"] for row in log] == ["joint", "joint", "crt"]
    assert log[2]["lr"] == pytest.approx(0.1 * 0.1 ** 2)  # the epoch's last step, warmed up


# ------------------------------------------------------------------------------- cosine decay
def decoupling_cosine(base: float, total: int) -> list[float]:
    """The decoupling code's rates (classifier-balancing f162ade, run_networks.py 159-160 and
    247-255): torch's CosineAnnealingLR(T_max=total, eta_min=0) stepped at the start of every
    epoch, before its batches, replayed with torch's own scheduler."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total, eta_min=0.0)
    rates = []
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": as the code
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(total):
            scheduler.step()
            rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_the_cosine_decay_is_the_decoupling_codes():
    # By hand, 0.2 * (1 + cos(pi * (e + 1) / 10)) / 2 for the 0-based epoch e: the cRT phase of
    # configs/imagenet_lt/ce_crt.yaml (10 epochs, lr 0.2, min_lr 0).
    by_hand = [0.195106, 0.180902, 0.158779, 0.130902, 0.1, 0.069098, 0.041221, 0.019098,
               0.004894, 0.0]
    crt = load_recipe(REPO / "configs/imagenet_lt/ce_crt.yaml")["phases"][1]
    rates = [recipe_rate(crt, e) for e in range(10)]
    assert rates == pytest.approx(by_hand, abs=1e-6)
    assert rates == pytest.approx(decoupling_cosine(0.2, 10), abs=1e-12)
    # min_lr lifts the floor: epoch e at 0.01 + 0.19 * (1 + cos(pi * (e + 1) / 4)) / 2
    assert [lr_at(e, 0.2, name="cosine", total_epochs=4, min_lr=0.01) for e in range(4)] == \
        pytest.approx([0.172175, 0.105, 0.037825, 0.01], abs=1e-6)


def test_a_cosine_decay_after_a_warm_up_spans_the_remaining_epochs():
    # warm-up of 2 of 6 epochs, lr 1: 1/2, 2/2, then (1 + cos(pi * k / 4)) / 2 for k = 1..4
    assert [lr_at(e, 1.0, name="cosine", warmup_epochs=2, total_epochs=6) for e in range(6)] == \
        pytest.approx([0.5, 1.0, 0.853553, 0.5, 0.146447, 0.0], abs=1e-6)
    # per step, 0.5 epoch of warm-up over 4 steps, 4 epochs: epoch 0's decayed rate is the
    # cosine at (1 - 0.5) / 3.5, warmed up by (s + 1) / 4 / 0.5
    first = (1 + math.cos(math.pi * 0.5 / 3.5)) / 2
    assert [lr_at(0, 1.0, name="cosine", warmup_epochs=0.5, warmup_unit="step", total_epochs=4,
                  step=s, steps=4) for s in range(4)] == pytest.approx(
        [first * 0.5, first, first, first])
    assert first == pytest.approx(0.950484, abs=1e-6)


def test_a_cosine_phase_squeezed_to_one_epoch_is_named():
    crt = load_recipe(REPO / "configs/imagenet_lt/ce_crt.yaml")
    assert squeezed_phases(crt, 9) == [
        "--epochs 9 squeezes phase 'crt' from 10 epochs to 1, fewer than its schedule needs: "
        "its cosine decay runs in 1 epoch, at or near its final rate (schedule.min_lr=0.0)"]
    assert squeezed_phases(crt, 30) == []   # 90 -> 30 and 10 -> 3


def test_a_warm_up_from_a_fraction_of_the_rate():
    """mmcv's linear warm-up with warmup_ratio 1/3 (the distribution-balanced loss's configs):
    the rate ramps from a third of its value; by hand: s + (1 - s) * (i + 1) / W times the rate
    at warm-up step i of W, then the plain rate."""
    from lttoolbox.engine.optim import lr_at

    s, base, steps = 1 / 3, 0.02, 10
    warm = 2.5  # epochs of 10 steps: 25 steps
    for epoch, step in [(0, 0), (0, 9), (1, 4), (2, 4), (2, 5), (3, 0)]:
        i = epoch * steps + step
        expected = base * (s + (1 - s) * min(1.0, (i + 1) / 25)) if epoch < warm else base
        got = lr_at(epoch, base, warmup_epochs=warm, warmup_unit="step", step=step,
                    steps=steps, warmup_start=s, milestones=[5, 7])
        assert got == pytest.approx(expected, rel=1e-12)
    # per epoch, and a milestone inside the warm-up decays the ramp's target too
    assert lr_at(0, 0.1, warmup_epochs=4, warmup_start=0.5) == pytest.approx(0.1 * (0.5 + 0.125))
    assert lr_at(1, 0.1, warmup_epochs=4, warmup_start=0.5, milestones=[1]) == pytest.approx(
        0.01 * (0.5 + 0.5 * 0.5))


@pytest.mark.parametrize("value", [1.0, -0.1, "third", True])
def test_warmup_start_must_be_a_fraction_below_one(value):
    from lttoolbox.errors import ConfigError
    from lttoolbox.recipe import apply_overrides, resolve

    with pytest.raises(ConfigError) as err:
        resolve(apply_overrides({"data": {"name": "digits_lt"}, "model": {"name": "digits_cnn"}},
                                [f"schedule.warmup_start={value}"]))
    assert err.value.key == "schedule.warmup_start"
