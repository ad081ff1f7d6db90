"""`lttrain` as a user runs it."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def lttrain(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "lttoolbox.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_quickstart_end_to_end(tmp_path):
    run = lttrain("configs/quickstart.yaml", "train.epochs=3", "--out", tmp_path / "q")
    assert run.returncode == 0, run.stderr
    results = json.loads((tmp_path / "q" / "results.json").read_text())
    assert results["epochs"] == 3 and results["top1"] > 30.0
    assert "top-1" in run.stdout and "Per-class accuracy" in run.stdout


def test_bad_override_is_one_clear_line(tmp_path):
    run = lttrain("configs/quickstart.yaml", "loss.name=focl", "--out", tmp_path / "bad")
    assert run.returncode == 2
    assert "loss.name" in run.stderr and "did you mean" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "bad").exists()


def test_missing_recipe_and_data_name_the_file(tmp_path):
    run = lttrain(tmp_path / "nope.yaml")
    assert run.returncode == 2 and "nope.yaml" in run.stderr and "Traceback" not in run.stderr
    missing = tmp_path / "no-such-cifar"
    run = lttrain("configs/cifar10_lt/ce.yaml", f"data.root={missing}", "--out", tmp_path / "r")
    assert run.returncode == 2 and str(missing) in run.stderr and "Traceback" not in run.stderr


def test_list_names_registries():
    run = lttrain("--list")
    assert run.returncode == 0 and "resnet32" in run.stdout and "digits_lt" in run.stdout
