"""``lteval`` around a finished run: a test-only image folder, a run another process is training,
a run it cannot write to, and its help text."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lttoolbox.cli import main as lttrain
from lttoolbox.cli_eval import main as lteval

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["bird", "cat", "dog"]
METRICS = ("top1", "top5", "mean_class_acc", "many", "medium", "few", "per_class_acc", "ece",
           "confusion_matrix", "train_class_counts", "test_class_counts")


def write_images(folder: Path, per_class: dict[str, int], seed: int) -> None:
    """``folder/<class>/NNNN.png``: 8 x 8 RGB images, each class with its own mean colour, so a
    model trained one epoch tells them apart better than chance."""
    rng = np.random.default_rng(seed)
    for name, count in per_class.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        base = np.zeros(3)
        base[CLASSES.index(name)] = 160
        for i in range(count):
            pixels = np.clip(base + rng.normal(40, 30, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i:04d}.png")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> dict:
    """A one-epoch digits_cnn run on an RGB image folder whose training split the default-style
    exp profile re-samples (ratio 2)."""
    tmp = tmp_path_factory.mktemp("folder_run")
    root = tmp / "data"
    write_images(root / "train", dict.fromkeys(CLASSES, 12), seed=0)
    write_images(root / "test", dict.fromkeys(CLASSES, 6), seed=1)
    recipe = {"data": {"name": "image_folder", "root": str(root), "image_size": 8,
                       "imbalance_ratio": 2, "cache_dir": str(tmp / "cache")},
              "model": {"name": "digits_cnn"}, "optim": {"lr": 0.05},
              "train": {"epochs": 1, "batch_size": 8},
              "eval": {"many_threshold": 10, "few_threshold": 7}}
    (tmp / "r.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp / "run"
    assert lttrain([str(tmp / "r.yaml"), "--out", str(out), "--quiet"]) == 0
    return {"tmp": tmp, "root": root, "out": out, "cache": tmp / "cache",
            "results": json.loads((out / "results.json").read_text())}


def folder_override(root: Path, cache: Path, extra: str = "") -> str:
    return f"data={{name: image_folder, root: {root}, cache_dir: {cache}{extra}}}"


@pytest.mark.long
def test_a_test_only_folder_is_evaluated_without_a_training_folder(folder_run, tmp_path):
    # the run's test images, copied to a folder of class folders: no train/, no test/ level
    only = tmp_path / "my_test"
    shutil.copytree(folder_run["root"] / "test", only)
    # the docs' own example; a profile in the override shapes no evaluation data
    assert lteval([str(folder_run["out"]), folder_override(only, folder_run["cache"],
                                                           ", imbalance_ratio: 100"),
                   "--name", "only", "--quiet"]) == 0
    doc = json.loads((folder_run["out"] / "eval-only.json").read_text())
    for key in METRICS:  # the same images as the run's own test split: the same numbers
        assert doc[key] == folder_run["results"][key], key
    assert doc["test_class_counts"] == [6, 6, 6]
    assert doc["data"]["evaluation_only"] and doc["data"]["test_folder"] == str(only)


def test_a_root_holding_test_is_read_there_and_needs_no_train(folder_run, tmp_path):
    root = tmp_path / "archive"
    shutil.copytree(folder_run["root"] / "test", root / "test")
    assert lteval([str(folder_run["out"]), folder_override(root, folder_run["cache"]),
                   "--name", "archive", "--quiet"]) == 0
    doc = json.loads((folder_run["out"] / "eval-archive.json").read_text())
    assert doc["confusion_matrix"] == folder_run["results"]["confusion_matrix"]


def test_a_long_tailed_folder_of_some_classes_is_evaluated_as_it_is(folder_run, tmp_path):
    # class ids follow the run's class names, not the folder's own sorted order
    only = tmp_path / "tail"
    write_images(only, {"cat": 1, "dog": 5}, seed=2)
    assert lteval([str(folder_run["out"]), folder_override(only, folder_run["cache"]),
                   "--name", "tail", "--quiet"]) == 0
    doc = json.loads((folder_run["out"] / "eval-tail.json").read_text())
    assert doc["test_class_counts"] == [0, 1, 5]
    assert doc["per_class_acc"][0] is None and doc["class_names"] == CLASSES


def test_a_folder_of_other_classes_is_refused_naming_them(folder_run, tmp_path, capsys):
    only = tmp_path / "other"
    write_images(only, {"cat": 2}, seed=3)
    shutil.copytree(only / "cat", only / "horse")
    before = sorted(p.name for p in folder_run["out"].iterdir())
    assert lteval([str(folder_run["out"]), folder_override(only, folder_run["cache"])]) == 2
    err = capsys.readouterr().err
    assert "class folder(s) horse of" in err and "bird, cat, dog" in err
    assert sorted(p.name for p in folder_run["out"].iterdir()) == before


def test_data_with_another_class_count_is_refused(folder_run, capsys):
    assert lteval([str(folder_run["out"]), "data={name: digits_lt}"]) == 2
    assert "the data has 10 classes, the model" in capsys.readouterr().err


# ------------------------------------------------------------------ a run in use, a run read-only
def unfinished_copy(run: Path, dest: Path) -> Path:
    """The run as it looks while its only phase trains: no final weights yet."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("model-*.pt", "results.json",
                                                             "eval-*.json"))
    return dest


@pytest.mark.long
def test_a_run_another_process_trains_is_named_with_its_pid(folder_run, tmp_path, capsys):
    run = unfinished_copy(folder_run["out"], tmp_path / "training")
    holder = subprocess.Popen(  # the trainer's own lock, held by another live process
        [sys.executable, "-c", "import sys\nfrom lttoolbox.rundir import RunLock\n"
         f"with RunLock({str(run)!r}):\n    print('held', flush=True)\n    sys.stdin.read()"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(p.name for p in run.iterdir())
        assert lteval([str(run)]) == 2
        err = capsys.readouterr().err
        assert f"is being trained by process {holder.pid}; evaluate it when it finishes" in err
        assert "resume" not in err
        assert sorted(p.name for p in run.iterdir()) == before
    finally:
        holder.communicate("", timeout=60)
    # once the trainer is gone, the same run is an interrupted one: resume it
    assert lteval([str(run)]) == 2
    assert "resume it with lttrain --resume" in capsys.readouterr().err


def test_evaluation_takes_no_lock_and_a_read_only_run_is_still_evaluated(folder_run, tmp_path,
                                                                        capsys, monkeypatch):
    run = tmp_path / "archived"
    shutil.copytree(folder_run["out"], run, ignore=shutil.ignore_patterns(".lock", "eval-*"))
    real_access = os.access

    def read_only(path, mode, *args, **kwargs):  # what access(2) says on a read-only mount
        if Path(path).absolute() == run.absolute() and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", read_only)
    before = sorted(p.name for p in run.iterdir())
    assert lteval([str(run), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("top1 ")
    assert "cannot be written (a read-only archive?): the evaluation was not saved" in captured.err
    assert sorted(p.name for p in run.iterdir()) == before  # no .lock, no eval file
    saved = tmp_path / "elsewhere" / "eval.json"
    assert lteval([str(run), "--quiet", "--out", str(saved)]) == 0
    assert json.loads(saved.read_text())["top1"] == folder_run["results"]["top1"]
    assert sorted(p.name for p in run.iterdir()) == before


# ------------------------------------------------------------------------------------------ --help
def console_scripts() -> dict[str, str]:
    """The installed commands, read from setup.cfg: name -> module."""
    import configparser
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return {name.strip(): target.split(":")[0].strip()
            for name, target in (line.split("=") for line in lines)}


@pytest.mark.parametrize("command", sorted(console_scripts()))
def test_help_is_plain_text(command, capsys):
    import importlib
    main = importlib.import_module(console_scripts()[command]).main
    with pytest.raises(SystemExit) as exit_code:
        main(["--help"])
    assert exit_code.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {command}")
    for markup in ("``", ":func:", ":mod:", ":class:", "::\n"):
        assert markup not in text, markup
