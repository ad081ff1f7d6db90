"""The trainer end to end on the embedded digits: results, phases, resume, run-directory safety."""
import json

import pytest
import torch

from conftest import StopAfter
from lttoolbox.engine import Trainer, train
from lttoolbox.engine.logging import RunLogger
from lttoolbox.errors import ConfigError
from lttoolbox.recipe import apply_overrides, load_recipe, resolve


def digits_recipe(*overrides):
    base = {"data": {"name": "digits_lt", "imbalance_ratio": 10},
            "model": {"name": "digits_cnn"},
            "optim": {"lr": 0.05, "weight_decay": 5e-4},
            "schedule": {"name": "cosine", "warmup_epochs": 1},
            "train": {"epochs": 3, "batch_size": 64, "seed": 0},
            "eval": {"many_threshold": 60, "few_threshold": 25}}
    return resolve(apply_overrides(base, list(overrides)))


def test_train_writes_results_and_learns(tmp_path):
    results = train(digits_recipe("train.epochs=6"), tmp_path / "run", quiet=True)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["top1"] == results["top1"]
    for key in ("top1", "mean_class_acc", "many", "medium", "few", "per_class_acc",
                "train_class_counts", "ece", "epochs", "seconds", "images_per_second", "seed",
                "commit", "machine", "recipe_hash", "confusion_matrix"):
        assert key in saved, key
    assert saved["epochs"] == 6 and len(saved["history"]) == 6
    assert saved["top1"] > 50.0  # chance is 10 %
    assert sum(saved["train_class_counts"]) > 0
    assert sum(map(sum, saved["confusion_matrix"])) == sum(saved["test_class_counts"])
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == list(range(6))
    assert (tmp_path / "run" / "recipe.yaml").exists()


@pytest.mark.long
def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    a = train(digits_recipe(), tmp_path / "a", quiet=True)
    b = train(digits_recipe(), tmp_path / "b", quiet=True)
    c = train(digits_recipe("train.seed=1"), tmp_path / "c", quiet=True)
    assert a["per_class_acc"] == b["per_class_acc"]
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]
    assert [r["loss"] for r in a["history"]] != [r["loss"] for r in c["history"]]


@pytest.mark.long
def test_resume_reaches_the_same_final_metrics(tmp_path):
    recipe = digits_recipe("train.epochs=4")
    full = train(recipe, tmp_path / "full", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "cut", logger=StopAfter(2))
    assert not (tmp_path / "cut" / "results.json").exists()
    resumed = train(recipe, tmp_path / "cut", resume=True, quiet=True)
    assert resumed["per_class_acc"] == full["per_class_acc"]
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in full["history"]]


@pytest.mark.long
def test_results_name_the_commit_of_every_attempt(tmp_path, monkeypatch):
    """The commit is taken when training starts, not when results.json is written, and a run
    resumed on other code lists both."""
    import lttoolbox.engine.trainer as trainer_module

    recipe = digits_recipe("train.epochs=3")
    monkeypatch.setattr(trainer_module, "git_commit", lambda: "aaaa")
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "run", logger=StopAfter(1))
    monkeypatch.setattr(trainer_module, "git_commit", lambda: "bbbb-dirty")
    resumed = train(recipe, tmp_path / "run", resume=True, quiet=True)
    assert resumed["commit"] == "aaaa" and resumed["commits"] == ["aaaa", "bbbb-dirty"]
    one = train(recipe, tmp_path / "one", quiet=True)
    assert one["commit"] == "bbbb-dirty" and one["commits"] == ["bbbb-dirty"]


def test_existing_run_is_never_overwritten(tmp_path):
    train(digits_recipe("train.epochs=1"), tmp_path / "run", quiet=True)
    before = (tmp_path / "run" / "results.json").read_bytes()
    with pytest.raises(ConfigError, match="--resume"):
        train(digits_recipe("train.epochs=1"), tmp_path / "run", quiet=True)
    with pytest.raises(ConfigError, match="recipe differs"):
        train(digits_recipe("train.epochs=2"), tmp_path / "run", resume=True, quiet=True)
    assert (tmp_path / "run" / "results.json").read_bytes() == before


@pytest.mark.long
def test_two_phase_recipe_freezes_backbone_and_retrains_head(tmp_path):
    recipe = digits_recipe("train.epochs=2")
    recipe["phases"] = [{"name": "joint"},
                        {"name": "crt", "sampler": {"name": "class_balanced"},
                         "train": {"epochs": 2, "freeze": ["backbone"], "reset_head": True}}]
    recipe = resolve(recipe)
    full = train(recipe, tmp_path / "run", quiet=True)
    joint = torch.load(tmp_path / "run" / "model-joint.pt")
    final = torch.load(tmp_path / "run" / "model-crt.pt")
    head = {k for k in final if k.startswith("head.")}
    assert head, "the model has a 'head' submodule"
    statistics = {k for k in final if k.endswith(("running_mean", "running_var",
                                                    "num_batches_tracked"))}
    assert statistics
    for name, value in final.items():
        if name not in head | statistics:
            assert torch.equal(value, joint[name]), f"{name} changed while frozen"
    # the frozen backbone's BatchNorm statistics are re-estimated (LTModel.freeze)
    assert all(not torch.equal(final[k], joint[k]) for k in statistics)
    assert any(not torch.equal(final[k], joint[k]) for k in head)
    assert [s["name"] for s in full["phases"]] == ["joint", "crt"] and full["epochs"] == 4
    # Interrupted inside the second phase, the run resumes there and ends the same way.
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "cut", logger=StopAfter(3))
    resumed = train(recipe, tmp_path / "cut", resume=True, quiet=True)
    assert resumed["per_class_acc"] == full["per_class_acc"]


@pytest.mark.long
def test_each_phase_freezes_exactly_its_own_list_also_after_resume(tmp_path):
    """A backbone frozen in phase 1 trains again in phase 2 when phase 2 freezes nothing."""
    recipe = digits_recipe("train.epochs=2")
    recipe["phases"] = [{"name": "probe", "train": {"freeze": ["backbone"]}},
                        {"name": "joint", "train": {"freeze": []}}]
    recipe = resolve(recipe)
    full = train(recipe, tmp_path / "run", quiet=True)
    start = {k: v.clone() for k, v in Trainer(recipe, tmp_path / "init").model.state_dict().items()}
    probe = torch.load(tmp_path / "run" / "model-probe.pt")
    joint = torch.load(tmp_path / "run" / "model-joint.pt")
    backbone = [k for k in joint if not k.startswith("head.") and joint[k].is_floating_point()]
    assert backbone
    weights = [k for k in backbone if not k.endswith(("running_mean", "running_var"))]
    assert all(torch.equal(probe[k], start[k]) for k in weights)      # frozen in phase 1
    moved = [k for k in backbone if not torch.equal(joint[k], probe[k])]
    assert len(moved) == len(backbone), f"still frozen in phase 2: {set(backbone) - set(moved)}"
    # Interrupted in phase 2 and resumed: the same phase-2 training, so the same result.
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "cut", logger=StopAfter(3))
    resumed = train(recipe, tmp_path / "cut", resume=True, quiet=True)
    assert resumed["per_class_acc"] == full["per_class_acc"]
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in full["history"]]


def test_a_one_process_group_trains_as_one_process(tmp_path):
    # (Several processes: tests/test_distributed.py.)
    import torch.distributed as dist

    alone = train(digits_recipe("train.epochs=1"), tmp_path / "alone", quiet=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        grouped = train(digits_recipe("train.epochs=1"), tmp_path / "run", quiet=True)
    finally:
        dist.destroy_process_group()
    assert grouped["processes"] == 1
    assert grouped["history"][0]["loss"] == alone["history"][0]["loss"]
    assert grouped["per_class_acc"] == alone["per_class_acc"]


@pytest.mark.parametrize("override, key", [
    ("loss.name=focl", "loss.name"),
    ("loss.gama=2", "loss.gama"),
    ("sampler.name=balanced", "sampler.name"),
    ("model.head=cosin", "model"),
    ("train.freeze=[layer9]", "train.freeze"),
    ("data.imbalance_ratio=0.5", "data"),
])
def test_bad_recipes_stop_before_training(tmp_path, override, key):
    with pytest.raises(ConfigError) as err:
        train(digits_recipe(override), tmp_path / "run", quiet=True)
    assert str(err.value).startswith(key), str(err.value)
    assert not (tmp_path / "run").exists()


def test_impossible_hook_point_is_refused(tmp_path):
    from lttoolbox.api import Component
    from lttoolbox.registry import AUGMENTS

    class AtNowhere(Component):
        def points(self):
            return ("layer9",)

        def __call__(self, h, batch):
            return h, batch

    with AUGMENTS.scoped(), pytest.raises(ConfigError, match=r"augment\[0\]\.point.*layer9"):
        AUGMENTS.register("test_nowhere")(AtNowhere)
        train(digits_recipe("augment=[test_nowhere]"), tmp_path / "run", quiet=True)


def test_quickstart_recipe_loads():
    recipe = load_recipe("configs/quickstart.yaml")
    assert recipe["data"]["name"] == "digits_lt"


def test_a_visible_progress_bar_with_a_per_step_warm_up(tmp_path):
    # The status line (every 25 steps) once overwrote the learning-rate function's name with
    # the img/s figure, so the next step's per-step warm-up called a float.
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    recipe = digits_recipe("train.epochs=1", "train.batch_size=16", "schedule.warmup_epochs=1",
                           "schedule.warmup_unit=step")
    results = train(recipe, tmp_path / "run", logger=RunLogger(console=console))
    assert len(results["history"]) == 1  # 32 steps: past the status line at step 25
    assert "img/s" in console.file.getvalue()
