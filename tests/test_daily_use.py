"""Everyday verbs around a run, end to end on the digits: lteval, ltpredict, load_run, resume
from the run directory, --print-config / --version / --list, metrics.csv, loggers, plots."""
from __future__ import annotations

import csv
import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import digits, write_recipe
import lttoolbox
from lttoolbox.cli import default_run_dir
from lttoolbox.cli import main as lttrain
from lttoolbox.cli_eval import main as lteval
from lttoolbox.cli_predict import main as ltpredict
from lttoolbox.engine.evaluate import predict
from lttoolbox.engine.monitor import epoch_line
from lttoolbox.registry import DATASETS

REPO = Path(__file__).resolve().parents[1]
DIGITS = digits(train={"epochs": 3})
METRICS = ("top1", "mean_class_acc", "many", "medium", "few", "per_class_acc", "ece",
           "confusion_matrix", "train_class_counts", "test_class_counts")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """A finished two-phase digits run: (recipe file, run directory)."""
    folder = tmp_path_factory.mktemp("daily")
    recipe = write_recipe(folder / "two.yaml", {
        **DIGITS, "eval": {**DIGITS["eval"], "every": 1},
        "phases": [{"name": "joint"},
                   {"name": "crt", "train": {"epochs": 1, "freeze": ["backbone"],
                                             "reset_head": True}}]})
    out = folder / "run"
    assert lttrain([str(recipe), "--out", str(out), "--quiet"]) == 0
    return recipe, out


def read(path: Path) -> dict:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------ lteval
def test_lteval_reproduces_results_json_exactly(finished, capsys):
    _, out = finished
    assert lteval([str(out), "--quiet"]) == 0
    results, again = read(out / "results.json"), read(out / "eval-crt.json")
    for key in METRICS:
        assert again[key] == results[key], key
    assert again["weights"] == "model-crt.pt" and again["class_names"] == results["class_names"]
    assert "top1" in capsys.readouterr().out


def test_lteval_of_an_earlier_phase_and_of_other_data(finished):
    _, out = finished
    assert lteval([str(out), "--weights", "model-joint.pt", "--quiet"]) == 0
    joint = read(out / "eval-joint.json")
    assert joint["phase"] == "joint" and joint["top1"] != read(out / "results.json")["top1"]
    assert lteval([str(out), "data.test_per_class=20", "--name", "small", "--quiet"]) == 0
    small = read(out / "eval-small.json")
    assert small["test_class_counts"] == [20] * 10
    # many/medium/few keep the model's own training counts
    assert small["train_class_counts"] == read(out / "results.json")["train_class_counts"]


@pytest.fixture(scope="module")
def tau_norm_run(tmp_path_factory) -> Path:
    """A finished run whose last phase trains 0 epochs: 1 CE epoch, then tau-normalisation with
    tau chosen on a validation split."""
    folder = tmp_path_factory.mktemp("tau")
    recipe = write_recipe(folder / "tau.yaml", {
        **DIGITS, "data": {**DIGITS["data"], "val_per_class": 5},
        "train": {"epochs": 1, "batch_size": 64},
        "phases": [{"name": "joint"},
                   {"name": "tau_norm", "model": {"head": {"name": "tau_norm", "tau": "auto"}},
                    "train": {"epochs": 0}}]})
    out = folder / "run"
    assert lttrain([str(recipe), "--out", str(out), "--quiet"]) == 0
    return out


def test_lteval_and_ltpredict_on_a_run_whose_last_phase_trains_no_epoch(tau_norm_run, capsys,
                                                                        tmp_path):
    out = tau_norm_run
    assert lteval([str(out), "--quiet"]) == 0, capsys.readouterr().err
    results, again = read(out / "results.json"), read(out / "eval-tau_norm.json")
    for key in METRICS:
        assert again[key] == results[key], key
    assert again["weights"] == "model-tau_norm.pt"
    image = tmp_path / "one.png"
    from PIL import Image
    Image.new("L", (8, 8), 200).save(image)
    assert ltpredict([str(out), str(image), "--out", str(tmp_path / "p.csv")]) == 0


def test_load_run_gives_the_trained_model_and_recipe(finished):
    _, out = finished
    model, recipe = lttoolbox.load_run(out)
    assert not model.training and recipe["phases"][1]["meta"]["phase"] == "crt"
    data = DATASETS.build(recipe["data"])
    from lttoolbox.runs import open_run
    run = open_run(out)
    pred, _ = predict(model, data.test.images, run.eval_transform)
    per_class = read(out / "results.json")["per_class_acc"]
    labels = data.test.labels.numpy()
    for c in range(10):  # the loaded model makes the predictions results.json was built from
        assert 100.0 * np.mean(pred[labels == c] == c) == pytest.approx(per_class[c], abs=1e-3)


@pytest.mark.parametrize("args, message", [
    (["nowhere"], "is not a run directory"),
    (["--weights", "model-nope.pt"], "weights file not found"),
    (["train.epochs=5"], "only data.* and eval.* can change"),
    (["--name", "../x"], "--name"),
])
def test_lteval_bad_input_is_one_line(finished, capsys, tmp_path, args, message):
    _, out = finished
    argv = [str(tmp_path / "nowhere")] if args == ["nowhere"] else [str(out), *args]
    before = sorted(p.name for p in out.iterdir())
    assert lteval(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    assert sorted(p.name for p in out.iterdir()) == before


def test_an_unreadable_weights_file_is_named_with_what_to_do(finished, tmp_path, capsys):
    _, out = finished
    bad = tmp_path / "model-crt.pt"
    bad.write_bytes(b"not weights")
    capsys.readouterr()
    assert lteval([str(out), "--weights", str(bad)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: {bad} cannot be read") and "give another --weights file" in line
    assert "start the run afresh" not in line  # the run is finished; the file is not its own


def test_unfinished_runs_and_foreign_weights_are_named(finished, tmp_path, capsys):
    recipe, out = finished
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("recipe.yaml", "data.json", "model-joint.pt"):
        (copy / name).write_bytes((out / name).read_bytes())
    assert lteval([str(copy)]) == 2
    err = capsys.readouterr().err
    assert "holds no finished weights" in err and "model-joint.pt" in err
    other = torch.nn.Linear(3, 2).state_dict()
    torch.save(other, copy / "model-crt.pt")
    assert lteval([str(copy)]) == 2
    assert "does not fit the recipe's model: it has no tensor 'stem." in capsys.readouterr().err


def test_evaluating_a_one_channel_model_on_an_image_folder_is_refused(finished, tmp_path, capsys):
    from PIL import Image

    _, out = finished
    root = tmp_path / "two_classes"
    for split in ("train", "test"):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True)
            Image.new("L", (8, 8), 40 * c).save(root / split / f"c{c}" / "0.png")
    code = lteval([str(out), f"data={{name: image_folder, root: {root}, image_size: 8, "
                             f"imbalance_type: null}}"])
    assert code == 2
    assert "image_folder reads RGB images; the model takes 1 channel" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- ltpredict
def test_ltpredict_agrees_with_the_evaluation(finished, tmp_path, capsys):
    from PIL import Image

    _, out = finished
    model, recipe = lttoolbox.load_run(out)
    data = DATASETS.build(recipe["data"])
    from lttoolbox.runs import open_run
    pick = list(range(0, len(data.test), 37))
    pred, _ = predict(model, data.test.images[pick], open_run(out).eval_transform)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in pick:  # 8x8 grey PNGs hold the digits' uint8 pixels exactly
        Image.fromarray(data.test.images[i, 0].numpy(), mode="L").save(folder / f"{i:04d}.png")
    (folder / "9999.png").write_bytes(b"not an image")
    csv_path = tmp_path / "predictions.csv"
    assert ltpredict([str(out), str(folder), "--topk", "3", "--out", str(csv_path)]) == 1
    err = capsys.readouterr().err
    assert "skipped 1 file(s)" in err and "9999.png" in err
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == len(pick)
    classes = read(out / "results.json")["class_names"]
    assert [row["class_1"] for row in rows] == [classes[p] for p in pred]
    probs = [[float(row[f"prob_{k}"]) for k in (1, 2, 3)] for row in rows]
    assert all(p[0] >= p[1] >= p[2] for p in probs)


def unwritable_by_root() -> Path | None:
    """A folder that even root cannot create files in (sysfs refuses new files), or None."""
    import os
    probe = Path("/sys") / ".lttoolbox-probe.tmp"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError:
        return Path("/sys")
    probe.unlink()
    return None


@pytest.mark.parametrize("case, message", [
    ("existing_folder", "--out: {dir} is a folder; name the CSV file"),
    ("under_a_file", "lies under {file}, which is a file"),
    ("not_writable", "is not writable (a read-only file system, or no permission)"),
    ("read_only_at_write", "cannot write {csv}: Read-only file system"),
    ("refused_by_the_kernel", "cannot write /sys/predictions.csv: Permission denied"),
])
def test_ltpredict_out_paths_that_cannot_be_written_are_one_line(finished, tmp_path, capsys,
                                                                monkeypatch, case, message):
    """Root ignores chmod, so a read-only file system is simulated: os.access answering no (the
    check before predicting), os.open failing with EROFS (at the write), and /sys, where the
    kernel refuses new files even to root."""
    import errno
    import os
    from PIL import Image

    _, out = finished
    image = tmp_path / "one.png"
    Image.new("L", (8, 8), 200).save(image)
    afile = tmp_path / "afile"
    afile.write_text("x")
    csv_path = tmp_path / "p.csv"
    target = {"existing_folder": tmp_path, "under_a_file": afile / "p.csv"}.get(case, csv_path)
    if case == "not_writable":
        monkeypatch.setattr(os, "access", lambda path, mode: False)
    elif case == "read_only_at_write":
        real_open = os.open

        def read_only(path, flags, *args, **kwargs):
            if str(path).endswith(".tmp"):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, flags, *args, **kwargs)
        monkeypatch.setattr(os, "open", read_only)
    elif case == "refused_by_the_kernel":
        if unwritable_by_root() is None:
            pytest.skip("/sys accepts new files here")
        target = Path("/sys/predictions.csv")
    capsys.readouterr()
    assert ltpredict([str(out), str(image), "--out", str(target)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    expected = message.format(dir=tmp_path, file=afile, csv=csv_path)
    assert len(lines) == 1 and expected in lines[0], lines
    assert afile.read_text() == "x" and not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_logit_adjustment_moves_predictions_towards_rare_classes(finished, tmp_path, capsys):
    from PIL import Image

    _, out = finished
    _, recipe = lttoolbox.load_run(out)
    data = DATASETS.build(recipe["data"])
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(0, len(data.test), 5):
        Image.fromarray(data.test.images[i, 0].numpy(), mode="L").save(folder / f"{i:04d}.png")
    counts = read(out / "data.json")["train_class_counts"]
    rare = int(np.argmin(counts))

    def share_of_rare(*extra):
        assert ltpredict([str(out), str(folder), "--topk", "1", *extra]) == 0
        rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
        return np.mean([row["class_1"] == str(rare) for row in rows])

    assert share_of_rare("--tau", "2") > share_of_rare()


# ----------------------------------------------------------------------------- lttrain extensions
@pytest.mark.long
def test_resume_from_the_run_directory_alone(tmp_path):
    from test_engine import StopAfter

    from lttoolbox.engine import train
    from lttoolbox.recipe import resolve

    recipe = resolve(DIGITS)
    full = train(recipe, tmp_path / "full", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "cut", logger=StopAfter(1))
    assert lttrain(["--resume", "--out", str(tmp_path / "cut"), "--quiet"]) == 0
    resumed = read(tmp_path / "cut" / "results.json")
    assert resumed["per_class_acc"] == full["per_class_acc"]


def test_print_config_version_and_list(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", DIGITS)
    assert lttrain([str(recipe), "optim.lr=1e-3", "--epochs", "6", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 0.001 and printed["train"]["epochs"] == 6
    assert not (REPO / "runs" / "r").exists()
    assert lttrain(["--version"]) == 0
    assert capsys.readouterr().out.startswith(f"lttoolbox {lttoolbox.__version__} (commit ")
    assert lttrain(["--list", "loss"]) == 0
    listing = capsys.readouterr().out
    assert "ldam(max_m=0.5, s=30.0" in listing and "Label-distribution-aware" in listing
    rows = [line for line in listing.splitlines() if not line.startswith("  filled in by")]
    assert "class_counts" not in "\n".join(rows) and "sampler" not in listing
    assert "  filled in by the trainer: class_counts, context, num_classes, total_epochs" in listing


# --------------------------------------------------------------------------------- --print-config
def multi_phase_configs() -> list[Path]:
    from lttoolbox.recipe import read_recipe

    return [p for p in sorted((REPO / "configs").rglob("*.yaml")) if read_recipe(p).get("phases")]


@pytest.mark.parametrize("path", multi_phase_configs(), ids=lambda p: str(p.relative_to(REPO)))
def test_the_compact_form_is_the_same_recipe(path):
    from lttoolbox.recipe import compact_recipe, dump_recipe_text, load_recipe, recipe_hash, resolve

    recipe = load_recipe(path)
    compact = yaml.safe_load(dump_recipe_text(compact_recipe(recipe)))
    assert resolve(compact) == recipe and recipe_hash(resolve(compact)) == recipe_hash(recipe)
    names = [s["meta"]["phase"] for s in recipe["phases"]]
    assert [s["name"] for s in compact["phases"]] == names
    for overlay in compact["phases"]:
        for section, value in overlay.items():   # only what the phase changes is written
            assert section == "name" or value != {k: v for k, v in recipe.items()}.get(section)


def test_print_config_shows_phases_as_differences_and_full_on_request(tmp_path, capsys):
    path = write_recipe(tmp_path / "two.yaml", {
        **DIGITS, "loss": {"name": "ldam", "max_m": 0.5, "s": 30},
        "phases": [{"name": "joint"},
                   {"name": "crt", "loss": {"_replace_": True, "name": "ce"},
                    "sampler": {"name": "class_balanced"},
                    "train": {"epochs": 30, "freeze": ["backbone"], "reset_head": True}}]})
    assert lttrain([str(path), "--print-config"]) == 0
    compact = capsys.readouterr().out
    assert lttrain([str(path), "--print-config", "--full"]) == 0
    full = capsys.readouterr().out
    from lttoolbox.recipe import load_recipe

    assert yaml.safe_load(full) == load_recipe(path)
    crt = yaml.safe_load(compact)["phases"][1]
    assert crt["loss"] == {"_replace_": True, "name": "ce"} and crt["train"]["epochs"] == 30
    assert "max_m" not in yaml.safe_dump(crt)   # the base's loss is not repeated
    assert len(compact.splitlines()) < 0.5 * len(full.splitlines())


def test_print_config_refuses_what_training_refuses(tmp_path, capsys):
    """mixup alpha -1 resolves (the recipe's shape is fine) but its constructor refuses it."""
    recipe = write_recipe(tmp_path / "r.yaml", {**DIGITS, "augment": [{"name": "mixup",
                                                                       "alpha": -1}]})
    assert lttrain([str(recipe), "--print-config"]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert captured.out == "" and len(lines) == 1
    assert lines[0].startswith("error: augment[0].alpha: must lie in (0, inf]"), lines
    # and what training warns about, it warns about too (on standard error only)
    recipe = write_recipe(tmp_path / "w.yaml", {**DIGITS, "schedule": {"milestones": [5]}})
    assert lttrain([str(recipe), "--print-config"]) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out)["schedule"]["milestones"] == [5]
    assert captured.err.startswith("warning: schedule.milestones [5] lies at or beyond")


def test_print_config_writes_nothing(tmp_path, capsys, monkeypatch):
    """Not the run directory, and not the decode cache an image folder's first load writes."""
    from PIL import Image

    root = tmp_path / "folder"
    for split, count in (("train", 4), ("test", 2)):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8), (40 * c + i, 10 * i, 5 * i + c)).save(
                    root / split / f"c{c}" / f"{i}.png")
    cache = tmp_path / "cache"
    recipe = write_recipe(tmp_path / "r.yaml", {
        "data": {"name": "image_folder", "root": str(root), "image_size": 8,
                 "imbalance_type": None, "cache_dir": str(cache)},
        "model": {"name": "digits_cnn"}, "train": {"epochs": 1, "batch_size": 4}})
    monkeypatch.chdir(tmp_path)   # the default run directory would be under ./runs
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert lttrain([str(recipe), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["root"] == str(root)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    # training itself does write that cache (so the check above could fail)
    assert lttrain([str(recipe), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert list(cache.glob("*.npy"))


def test_list_shows_every_parameter_of_every_entry_and_the_heads(capsys):
    import inspect

    from lttoolbox.cli import FAMILIES, registries

    assert set(registries()) == set(FAMILIES) and "head" in FAMILIES
    for family, registry in registries().items():
        assert lttrain(["--list", family]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == family and registry.names()
        filled = [line for line in lines if line.startswith("  filled in by ")]
        for name in registry.names():
            factory = registry.get(name)
            row = next(line for line in lines if line.startswith(f"  {name}("))
            # an __init__ that takes **kwargs passes them to its base: the base's are its too
            targets = ([c.__dict__["__init__"] for c in factory.__mro__
                        if "__init__" in c.__dict__ and c is not object]
                       if inspect.isclass(factory) else [factory])
            params = {}
            for target in targets:
                own = inspect.signature(target).parameters.values()
                params = {**{p.name: p for p in own}, **params}  # the nearest declaration wins
                if not any(p.kind is p.VAR_KEYWORD for p in own):
                    break
            fixed = getattr(factory, "fixed_parameters", ())  # set by the class itself
            for param in params.values():
                if param.name in ("self", *fixed) or param.kind in (param.VAR_POSITIONAL,
                                                                     param.VAR_KEYWORD):
                    continue
                if param.name in registry.context:   # filled in, named once per family
                    assert param.name not in row.split("(", 1)[1].split(")  ")[0], (name, param)
                    assert param.name in filled[0], (family, param.name)
                else:
                    shown = (param.name if param.default is param.empty
                             else f"{param.name}={param.default!r}")
                    assert shown in row, (family, name, shown)
    # a loss lists the parameters its base class gives it (class weights, DRW)
    assert lttrain(["--list", "loss"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    from lttoolbox.registry import LOSSES
    # (the losses on multi-hot rows weigh their classes themselves: no class weights, no DRW)
    rows = [row for row in rows if row.startswith("  filled")
            or LOSSES.get(row.split("(")[0].strip()).single_label]
    deferring = [row for row in rows if not row.startswith("  filled")
                 and "weights_start_epoch" not in getattr(LOSSES.get(row.split("(")[0].strip()),
                                                          "fixed_parameters", ())]
    assert len(deferring) >= len(rows) - 3 and all("weights_start_epoch=0" in row
                                                   for row in deferring)
    # what a newcomer missed: the data sets' own imbalance_type and image_size
    assert lttrain(["--list", "data"]) == 0
    listing = capsys.readouterr().out
    assert "imbalance_type='exp'" in listing and "image_size=" in listing
    # and how to run another imbalance ratio: an override, not a recipe file of its own
    assert "data.imbalance_ratio=50" in listing


def test_the_listed_context_is_what_the_trainer_passes(tmp_path, monkeypatch):
    """The names --list leaves to the trainer are exactly those it gives each family."""
    from lttoolbox.cli import registries
    from lttoolbox.engine import Trainer
    from lttoolbox.recipe import resolve
    from lttoolbox.registry import Registry

    offered: dict[str, set] = {}
    real = Registry.build

    def spy(self, cfg, key=None, **context):
        offered.setdefault(self.kind, set()).update(context)
        return real(self, cfg, key, **context)

    monkeypatch.setattr(Registry, "build", spy)
    Trainer(resolve({**DIGITS, "augment": [{"name": "mixup", "start_epoch": 1}],
                     "generator": {"name": "rsg", "point": "layer1", "end_epoch": 1}}),
            tmp_path / "run")
    # The optimizer is built when a phase starts to train, a schedule is read per epoch.
    from lttoolbox.engine.optim import build_optimizer
    build_optimizer(torch.nn.Linear(2, 2), {"name": "sgd", "lr": 0.1})
    built = {r.kind: r for f, r in registries().items() if f != "schedule"}
    assert set(offered) == set(built)
    for family, registry in built.items():
        # a data set hears of the run it evaluates from lteval alone (tests/test_lteval.py)
        given_elsewhere = {"run_data"} if family == "data" else set()
        assert offered[family] == registry.context - given_elsewhere, family


def test_default_run_directory_keeps_the_data_set_in_the_path():
    a = default_run_dir(str(REPO / "configs/cifar10_lt/ce.yaml"), resume=False)
    b = default_run_dir(str(REPO / "configs/cifar100_lt/ce.yaml"), resume=False)
    assert a.parent == Path("runs/cifar10_lt/ce")
    assert b.parent == Path("runs/cifar100_lt/ce")
    assert default_run_dir("/tmp/mine.yaml", resume=False).parent == Path("runs/mine")


# ---------------------------------------------------------------------------------- logs and plots
def test_metrics_csv_rows_equal_the_log(finished):
    _, out = finished
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == len(log) == 4
    for row, entry in zip(rows, log):
        assert row["phase"] == entry["phase"] and int(row["epoch"]) == entry["epoch"]
        assert float(row["loss"]) == entry["loss"] and float(row["lr"]) == entry["lr"]
        evaluation = entry.get("eval") or {}
        for key in ("top1", "many", "medium", "few"):
            assert row[f"eval_{key}"] == ("" if evaluation.get(key) is None
                                          else str(evaluation[key]))
    assert log[0]["eval"]["top1"] > 0 and "eval" not in log[2]  # the last epoch of a phase


def test_the_epoch_line_shows_the_evaluation_and_the_eta():
    row = {"phase": "main", "epoch": 4, "loss": 0.5, "lr": 0.1, "images_per_second": 1234.0,
           "eval": {"top1": 61.25, "many": 80.0, "medium": 50.5, "few": None}}
    line = epoch_line(row, "", 30, 3725)
    assert "epoch   5/30" in line and "top-1 61.25 (many/med/few 80.0/50.5/-)" in line
    assert line.endswith("ETA 1:02:05")
    row["loss_terms"] = {"ldam": 0.25, "rsg": 0.25}
    assert "loss 0.5000 (ldam 0.2500, rsg 0.2500)  lr" in epoch_line(row, "", 30, 0)


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("torch.utils.tensorboard", reason="the [tb] extra is not installed")
    recipe = write_recipe(tmp_path / "r.yaml", {**DIGITS, "train": {"epochs": 2,
                                                                    "loggers": ["tensorboard"]}})
    assert lttrain([str(recipe), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_loggers_are_checked_before_anything_runs(tmp_path, capsys, monkeypatch):
    recipe = write_recipe(tmp_path / "r.yaml", DIGITS)
    assert lttrain([str(recipe), "train.loggers=[neptune]", "--out", str(tmp_path / "a")]) == 2
    assert "train.loggers: unknown logger 'neptune'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the extra is missing
    assert lttrain([str(recipe), "train.loggers=[tensorboard]", "--out",
                    str(tmp_path / "b")]) == 2
    assert 'needs the [tb] extra: pip install -e ".[tb]"' in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_loggers_do_not_change_the_recipe_hash():
    from lttoolbox.recipe import recipe_hash, resolve

    assert recipe_hash(resolve({**DIGITS, "train": {**DIGITS["train"],
                                                    "loggers": ["tensorboard"]}})) == \
        recipe_hash(resolve(DIGITS))


def test_run_plots_or_the_hint_to_get_them(tmp_path, capsys, monkeypatch):
    import lttoolbox.engine.trainer as trainer

    recipe = write_recipe(tmp_path / "r.yaml", {**DIGITS, "train": {"epochs": 1}})
    monkeypatch.setattr(trainer, "plots_available", lambda: False)
    assert lttrain([str(recipe), "--out", str(tmp_path / "a")]) == 0
    assert 'per-run plots need matplotlib: pip install -e ".[plot]"' in capsys.readouterr().out
    assert not list((tmp_path / "a").glob("*.png"))
    pytest.importorskip("matplotlib", reason="the [plot] extra is not installed")
    monkeypatch.undo()
    assert lttrain([str(recipe), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    from lttoolbox.engine.plots import PLOTS
    for name in PLOTS:
        assert (tmp_path / "b" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_first_decode_is_announced(capsys):
    from lttoolbox.data.folder_io import POOL_MIN_FILES, decode_progress

    with decode_progress(POOL_MIN_FILES, Path("/data/train")) as advance:
        advance(10)
    assert "decoding 2,048 images of /data/train, first run only" in capsys.readouterr().err
    with decode_progress(10, Path("/data/train")):
        pass
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------- benchmarks
# The benchmark script with its timers replaced by made-up figures, run in this process as a
# script (runpy: the tests import nothing of benchmarks/, and a Python with torch per test costs
# seconds on a busy machine).
def throughput_here(monkeypatch, capsys, fakes: dict, argv: list[str]) -> tuple[int, str, str]:
    """``benchmarks/throughput.py``'s ``main(argv)`` from the repository root with ``fakes``
    in place of its timers: exit code, stdout, stderr."""
    monkeypatch.chdir(REPO)
    main = runpy.run_path("benchmarks/throughput.py")["main"]
    main.__globals__.update(fakes)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def fake_trainer_on_cpu():
    return type("T", (), {"device": torch.device("cpu")})()


def test_throughput_repeats_and_flags_a_noisy_machine(monkeypatch, capsys):
    figures = iter([(100.0, 200.0), (150.0, 210.0), (110.0, 205.0)])
    current = []

    def fake_trainer(recipe, steps):
        current[:] = next(figures)
        return current[0], fake_trainer_on_cpu()

    code, out, err = throughput_here(monkeypatch, capsys, {
        "time_trainer": fake_trainer,
        "time_bare": lambda trainer, recipe, steps, warmup: (current[1], 300.0)},
        ["--recipes", "configs/quickstart.yaml", "--repeats", "3"])
    assert code == 0, err
    assert "| configs/quickstart.yaml | 100 / 110 / 150 | 200 / 205 / 210 | " in out
    assert "0.500 / 0.537 / 0.714" in out
    assert "the trainer's img/s varied 1.50x" in err
    assert "bare loop's img/s varied" not in err


def test_throughput_reads_an_override_after_recipes_as_an_override(monkeypatch, capsys):
    """``--recipes`` takes every word after it; ``key=value`` there is an override, not a recipe
    path that is then skipped as not found (the ABSGD window override was lost that way)."""
    seen = []

    def fake_trainer(recipe, steps):
        seen.append(recipe["train"]["epochs"])
        return 100.0, fake_trainer_on_cpu()

    code, out, err = throughput_here(monkeypatch, capsys, {
        "time_trainer": fake_trainer,
        "time_bare": lambda trainer, recipe, steps, warmup: (100.0, 100.0)},
        ["--repeats", "1", "--recipes", "configs/quickstart.yaml", "train.epochs=7"])
    assert code == 0, err
    assert "not found" not in err
    assert seen == [7]


def test_throughput_phase_ratio_is_against_the_bare_step_of_that_phase_batch(tmp_path,
                                                                              monkeypatch,
                                                                              capsys):
    """Each phase's img/s is divided by the bare loop timed at that phase's batch size:
    320 / (10 x 64) = 0.5 and 40 / (10 x 16) = 0.25 (a bare loop at the first phase's batch
    would give 40 / 640 = 0.0625)."""
    recipe = tmp_path / "two_phases.yaml"
    recipe.write_text(f"_base_: {REPO / 'configs/quickstart.yaml'}\n"
                      "phases:\n  - name: joint\n  - name: retrain\n"
                      "    train: {epochs: 3, batch_size: 16}\n")
    trainer = fake_trainer_on_cpu()
    code, out, err = throughput_here(monkeypatch, capsys, {
        "time_trainer": lambda recipe, steps: (100.0, trainer),
        # the bare loop's img/s depends on the batch it is given: 10 per image of the batch
        "time_bare": lambda t, recipe, steps, warmup: (10.0 * recipe["train"]["batch_size"],
                                                        1.0),
        "time_phases": lambda recipe, steps: [("joint", 64, 320.0), ("retrain", 16, 40.0)]},
        ["--repeats", "2", "--phases", "--recipes", str(recipe)])
    assert code == 0, err
    assert "joint (batch 64) 0.500 / 0.500 / 0.500" in out, out
    assert "retrain (batch 16) 0.250 / 0.250 / 0.250" in out, out


@pytest.mark.parametrize("sampler, retrain", [
    # a cRT-like re-training at batch 16: the main figure alone sees only the first phase
    ("instance", "{name: class_balanced}"),
    # the random resamplers' epoch is their definition's (no num_samples): the benchmark times
    # their own epoch instead of setting one the registry refuses, in the main figure (the
    # recipe's sampler) and in --phases (a phase's)
    pytest.param("random_undersample", "{name: random_oversample}", marks=pytest.mark.long),
])
def test_throughput_times_each_phase_at_its_own_batch_size(tmp_path, sampler, retrain):
    """--phases times every phase from one real run, each against a bare step of its own batch
    size."""
    recipe = tmp_path / "two_phases.yaml"
    recipe.write_text(f"_base_: {REPO / 'configs/quickstart.yaml'}\n"
                      f"sampler: {{name: {sampler}}}\n"
                      "phases:\n  - name: joint\n  - name: retrain\n"
                      f"    sampler: {retrain}\n"
                      "    train: {epochs: 3, batch_size: 16, freeze: [backbone]}\n")
    done = subprocess.run([sys.executable, "benchmarks/throughput.py", "--recipes", str(recipe),
                           "--steps", "3", "--warmup", "1", "--repeats", "1", "--phases"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if "each phase's step" in x)
    figures = dict(re.findall(r"(\w+ \(batch \d+\)) ([\d.]+) / ", line))
    assert set(figures) == {"joint (batch 64)", "retrain (batch 16)"}, line
    assert all(float(v) > 0 for v in figures.values())


# ------------------------------------------------------------------------------------ CPU threads
def test_train_threads_sets_torch_threads_and_auto_leaves_them(tmp_path):
    from lttoolbox.engine import Trainer
    from lttoolbox.recipe import recipe_hash, resolve

    previous = torch.get_num_threads()
    wanted = 2 if previous == 1 else 1
    with_threads = resolve({**DIGITS, "train": {**DIGITS["train"], "threads": wanted}})
    try:
        Trainer(with_threads, tmp_path / "a")
        assert torch.get_num_threads() == wanted
        torch.set_num_threads(previous)
        Trainer(resolve(DIGITS), tmp_path / "b")   # auto: torch's own choice, untouched
        assert torch.get_num_threads() == previous
    finally:
        torch.set_num_threads(previous)
    assert resolve(DIGITS)["train"]["threads"] == "auto"
    # a way of running, like train.compile: a run may resume with another thread count
    assert recipe_hash(with_threads) == recipe_hash(resolve(DIGITS))


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "many", "true", "null"])
def test_bad_train_threads_is_one_line_before_anything_is_written(tmp_path, capsys, value):
    recipe = write_recipe(tmp_path / "r.yaml", DIGITS)
    previous = torch.get_num_threads()
    assert lttrain([str(recipe), f"train.threads={value}", "--out", str(tmp_path / "run")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "error: train.threads: must be auto (torch's own choice) or a number of CPU threads"), lines
    assert not (tmp_path / "run").exists() and torch.get_num_threads() == previous


def test_a_phase_cannot_change_the_process_threads(tmp_path):
    from lttoolbox.engine import Trainer
    from lttoolbox.errors import ConfigError
    from lttoolbox.recipe import resolve

    recipe = resolve({**DIGITS, "phases": [{"name": "a"},
                                           {"name": "b", "train": {"epochs": 1, "threads": 1}}]})
    previous = torch.get_num_threads()
    with pytest.raises(ConfigError, match=r"^phases\[1\].train.threads: the CPU threads"):
        Trainer(recipe, tmp_path / "run")
    assert torch.get_num_threads() == previous and not (tmp_path / "run").exists()


def test_resume_without_out_continues_the_run_of_this_recipe(tmp_path, monkeypatch):
    """Two unfinished runs of one recipe file, with other overrides: --resume picks the newest
    one trained with this recipe, not the newest one."""
    from lttoolbox.errors import LTError
    from lttoolbox.recipe import dump_recipe, resolve
    from lttoolbox.rundir import RunDir

    monkeypatch.chdir(tmp_path)
    ratio = {r: resolve(digits(data={"imbalance_ratio": r})) for r in (10, 20, 30)}
    for name, r in (("20260101-000000", 20), ("20260102-000000", 10)):
        run = RunDir(tmp_path / "runs" / "mine" / name)
        run.path.mkdir(parents=True)
        dump_recipe(ratio[r], run.recipe)
        run.checkpoint.write_bytes(b"")
    assert default_run_dir("mine.yaml", resume=True, recipe=ratio[20]).name == "20260101-000000"
    assert default_run_dir("mine.yaml", resume=True, recipe=ratio[10]).name == "20260102-000000"
    assert default_run_dir("mine.yaml", resume=True).name == "20260102-000000"
    with pytest.raises(LTError, match="another recipe"):
        default_run_dir("mine.yaml", resume=True, recipe=ratio[30])
