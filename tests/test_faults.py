"""Fault tests: malformed recipes and data, broken run directories, kills, concurrent writers.

Every bad input must end with exit code 2 (1 for a diverged run), one line naming the key or the
file, no traceback, and nothing written to the run directory. Every kill must resume to the same
metrics and the same log as an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import inspect
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import digits, write_recipe
from lttoolbox.cli import main
from lttoolbox.engine import train
from lttoolbox.recipe import load_recipe, resolve
from lttoolbox.rundir import RunDirError, RunLock, check_out_dir

REPO = Path(__file__).resolve().parents[1]
DIGITS = digits()


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with a hash of its bytes (to prove nothing was touched)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def lttrain_inproc(capsys, *args) -> tuple[int, list[str]]:
    """``lttrain`` in this process (fast): exit code and the non-empty lines it printed."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    lines = [line for line in (captured.err + captured.out).splitlines() if line.strip()]
    return code, lines


# ------------------------------------------------------------------ malformed recipes and overrides
BAD_OVERRIDES = [
    ("eval.many_threshold=abc", "eval.many_threshold"),
    ("eval.many_threshold=[1, 2]", "eval.many_threshold"),
    ("eval.few_threshold=.nan", "eval.few_threshold: must be a finite number"),
    ("schedule.gamma=abc", "schedule.gamma"),
    ("schedule.min_lr=fast", "schedule.min_lr"),
    ("schedule.warmup_epochs=0.5", "schedule.warmup_epochs"),
    ("train.seed=-1", "train.seed"),
    ("train.seed=4294967296", "train.seed"),
    ("train.device=5", "train.device"),
    ("train.epochs=0", "train.epochs"),
    ("train.epochs=1.5", "train.epochs"),
    ("train.channels_last=maybe", "train.channels_last"),
    ("train.amp=fast", "train.amp"),
    ("meta=5", "meta"),
    ("optim.weight_decay=.nan", "optim.weight_decay: must be a finite number"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.momentum=1.5", "optim.momentum"),
    ("optim.momentum=5", "optim.momentum"),
    ("optim={name: adam, momentum: 0.9}", "optim.momentum"),  # an SGD key
    ("optim={name: adam, betas: [0.9]}", "optim.betas"),
    ("optim.no_decay=[head.bais]", "optim.no_decay"),
    ("loss={name: focal, gamma: 1000}", "loss"),
    ("loss={name: ldam, max_m: 5}", "loss"),
    ("loss={name: am_softmax, m: 2.5}", "loss"),
    ("loss={a: 1, a: 2}", "loss: not valid YAML"),
    ("phases=[{name: 'x/../../escaped'}]", "phases[0].name"),
    ("phases=[{name: a}, {name: a}]", "phases[1].name"),
]


@pytest.mark.parametrize("override, key", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_a_bad_override_is_one_line_naming_the_key_and_writes_nothing(tmp_path, capsys,
                                                                      override, key):
    recipe = write_recipe(tmp_path / "r.yaml")
    code, lines = lttrain_inproc(capsys, recipe, override, "--out", tmp_path / "run")
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}"), lines
    assert not (tmp_path / "run").exists()


TAU_PHASE = ("phases=[{name: joint}, {name: tau, train: {epochs: 0}, model: {head: "
             "{name: tau_norm, %s}}}]")
CAM_PHASE = "phases=[{name: joint}, {name: cam, augment: [%s]%s}]"
ONE_OF = "augment=[{name: one_of, choices: [%s, {name: cutmix}], p: [0.5, 0.5]}]"
# Messages that named a key the user never wrote, or only part of the key, or the wrong problem.
MISLEADING = [
    ((TAU_PHASE % "tau: auto, grid: 0.5", "data.val_per_class=5"),
     "phases[1].model.head.grid: must be a non-empty list of tau values"),
    ((ONE_OF % "{name: cam_resample}",),
     "augment[0].choices[0].name: cam_resample is not a mixing augmentation"),
    ((ONE_OF % "{name: mixup, p: 0.3}",), "augment[0].choices[0].p: is given by one_of's own p"),
    ((ONE_OF % "{name: one_of, choices: [mixup, cutmix], p: [0.5, 0.5]}",),
     "augment[0].choices[0].name: one_of cannot choose another one_of"),
    ((ONE_OF % "5",), "augment[0].choices[0]: must be an augmentation name or a mapping"),
    ((ONE_OF % "{name: mixup, alpha: -1}",), "augment[0].choices[0].alpha: must lie in"),
    (("generator={name: rsg, point: layer2, mv_terms: [foo]}",),
     "generator.mv_terms: must be a list of distinct terms"),
    (("generator={name: rsg, point: layer2, contrastive_kernel: 2}",),
     "generator.contrastive_kernel: must be odd"),
    (("generator={name: ftl, point: layer2, feature_shape: 5}",),
     "generator.feature_shape: must be (C, H, W) or (D,)"),
    (("generator={name: ftl, point: layer2, feature_shape: [5]}",),
     "generator.feature_shape: [5] does not match the activations at point 'layer2'"),
    (("augment=[{name: cmo, weighting: paper}]",), "augment[0].weighting: must be 'image'"),
    (("augment=[{name: cmo, r: abc}]",), "augment[0].r: must be a finite number"),
    (("augment=[{name: manifold_mixup, point: 5}]",),
     "augment[0].point: must be a model point name or a list of them, got 5"),
    (("augment=[{name: manifold_mixup, point: [layer1, layer9]}]",),
     "augment[0].point: the model has no point 'layer9'"),
    ((CAM_PHASE % ("{name: cam_resample, transforms: 5}", ""),),
     "phases[1].augment[0].transforms: must be a non-empty list"),
    (("loss={name: focal, gamma: -1}",), "loss.gamma: must lie in [0, 20]"),
    (("loss={name: cb, base: ce, gamma: 2}",), "loss.gamma: is used only by the focal bases"),
    (("loss={name: ce, weights: {name: effective_number, beta: 2}}",),
     "loss.weights.beta: must lie in [0, 1)"),
    (("phases=[{name: a}, {name: b, loss: {name: focal, gamma: -3}}]",),
     "phases[1].loss.gamma: must lie in"),
    (("sampler={name: square_root, num_samples: 0}",), "sampler.num_samples: must be an integer"),
    (("model.head={name: cosine, scale: -1}",), "model.head.scale: must be a positive number"),
    (("data.crop_padding=-1",), "data.crop_padding: must be an integer >= 0"),
]


@pytest.mark.parametrize("overrides, message", MISLEADING, ids=[m for _, m in MISLEADING])
def test_component_errors_name_the_full_key_and_the_real_problem(tmp_path, capsys, overrides,
                                                                  message):
    recipe = write_recipe(tmp_path / "r.yaml")
    code, lines = lttrain_inproc(capsys, recipe, *overrides, "--out", tmp_path / "run")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {message}"), lines
    assert not (tmp_path / "run").exists()


# Values that were accepted without a word and made a run that is not what was asked for.
ACCEPTED_SILENTLY = [
    ((TAU_PHASE % "tau: auto, grid: []", "data.val_per_class=5"),
     "phases[1].model.head.grid: must be a non-empty list"),  # was: the default grid
    ((TAU_PHASE % "tau: 1.0, grid: [0.5, 1.0]",),
     "phases[1].model.head.grid: is what tau: auto chooses from"),  # was: unused
    (("augment=[{name: cam_resample}]",),
     "augment[0]: cam_resample makes its images from the model trained so far"),
    ((CAM_PHASE % ("{name: cam_resample}", ", train: {epochs: 0}"),),
     "phases[1].augment[0]: cam_resample adds training images at the start of its phase, and "
     "this phase trains 0 epochs"),
    ((CAM_PHASE % ("{name: cam_resample}, {name: cam_resample}", ""),),
     "phases[1].augment[1]: phases[1].augment[0] and phases[1].augment[1] both add training "
     "images"),
    ((CAM_PHASE % ("{name: cam_resample, threshold: 50}", ""),),
     "phases[1].augment[0].threshold: must lie in [0, 1], got 50"),
    (("augment=[{name: cmo, r: -1}]",), "augment[0].r: must be at least 0"),
    (("sampler={name: cmo_weighted, r: -0.5}",), "sampler.r: must be at least 0"),
    (("sampler={name: instance, end_epoch: true}",), "sampler.end_epoch: must be an integer"),
    (("augment=[{name: mixup, start_epoch: true}]",), "augment[0].start_epoch: must be"),
]


@pytest.mark.parametrize("overrides, message", ACCEPTED_SILENTLY,
                         ids=[m.split(":")[0] + ":" + o[0][-40:] for o, m in ACCEPTED_SILENTLY])
def test_values_that_would_make_another_run_than_asked_are_refused(tmp_path, capsys, overrides,
                                                                   message):
    recipe = write_recipe(tmp_path / "r.yaml")
    code, lines = lttrain_inproc(capsys, recipe, *overrides, "--out", tmp_path / "run")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {message}"), lines
    assert not (tmp_path / "run").exists()


def test_a_validation_split_that_reshapes_the_profile_is_named():
    """val_per_class: 100 on the digits (ratio 10) cuts the head class from 124 to 28 images,
    below class 3 (57 -> 33); up to 32 the order holds and every class keeps 3/4."""
    from lttoolbox.registry import DATASETS

    def build(per_class):
        return DATASETS.build({"name": "digits_lt", "imbalance_ratio": 10,
                               "val_per_class": per_class})

    assert build(None).train.class_counts[:4] == [124, 96, 74, 57]
    big = build(100)
    assert big.train.class_counts[0] == 28 and big.train.class_counts[3] == 33
    assert big.warnings == [
        "data.val_per_class=100 changes the long-tail profile: class 0 trains on 28 of its 124 "
        "images (77% go to validation); class 0 (124 -> 28) ends up smaller than class 3 "
        "(57 -> 33), so the classes' order by size changes; val_per_class 32 or less keeps the "
        "order and at least 75% of every class"]
    assert build(32).warnings == [] and build(20).warnings == []
    assert "class 0 (124 -> 95) ends up smaller than class 1 (96 -> 96)" in build(33).warnings[0]


def test_the_trainer_prints_the_validation_warning_once_before_training(tmp_path, capsys):
    from lttoolbox.engine.trainer import Trainer

    Trainer(resolve({**DIGITS, "data": {**DIGITS["data"], "val_per_class": 100}}),
            tmp_path / "run", quiet=True)
    err = capsys.readouterr().err
    assert err.count("warning: data.val_per_class=100 changes the long-tail profile") == 1, err
    Trainer(resolve({**DIGITS, "data": {**DIGITS["data"], "val_per_class": 20}}),
            tmp_path / "run", quiet=True)
    assert "warning" not in capsys.readouterr().err


def test_a_phase_of_0_epochs_names_no_warm_up_it_inherited():
    from lttoolbox.recipe import unreachable_epoch_keys

    recipe = resolve({**DIGITS, "schedule": {"warmup_epochs": 1},
                      "phases": [{"name": "joint"},
                                 {"name": "tau", "model": {"head": {"name": "tau_norm"}},
                                  "train": {"epochs": 0}}]})
    assert unreachable_epoch_keys(recipe) == []
    too_long = resolve({**DIGITS, "schedule": {"warmup_epochs": 3}})  # the run has 2 epochs
    assert unreachable_epoch_keys(too_long) == [
        "schedule.warmup_epochs=3 is longer than the run's 2 epochs, so it never completes"]


def test_a_run_directory_in_use_names_no_option_of_one_command(tmp_path):
    """lteval takes the lock too, and has no --out to choose."""
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunDirError) as err:
            RunLock(tmp_path / "run").__enter__()
    assert f"in use by another run (process {os.getpid()}); wait for it to end" in str(err.value)
    assert "--out" not in str(err.value)


def test_a_suite_without_references_names_no_reference_file(tmp_path):
    from lttoolbox.leaderboard.suite import load_suite

    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "settings": [{"id": "s", "overlay": {}}],
                                    "rows": [{"id": "a", "recipe": None, "status": "later"}]}))
    assert load_suite(path).references is None  # not ../reference_numbers.yaml beside it


#: Values of the parameters some entries require (no default), by parameter name.
REQUIRED_VALUES = {"choices": "[mixup, cutmix]", "p": "[0.5, 0.5]",
                   "open": "{source: noise, size: 64}"}


def registry_cases() -> list[tuple[str, str, str]]:
    """(override, the full key it sets, entry) for every recipe parameter of every entry of the
    component registries, set to a mapping, which none of them accepts as it stands."""
    from lttoolbox import AUGMENTS, GENERATORS, LOSSES, SAMPLERS
    from lttoolbox.models.heads import HEADS
    from lttoolbox.registry import recipe_parameters

    cases = []
    for section, registry in (("sampler", SAMPLERS), ("loss", LOSSES), ("augment", AUGMENTS),
                              ("generator", GENERATORS), ("head", HEADS)):
        for name in registry.names():
            params = recipe_parameters(registry, name)
            for param in (p.name for p in params):
                entry = f"{{name: {name}, {param}: {{bad: 1}}}}"
                for other in params:  # the other parameters an entry requires, given
                    if other.name != param and other.default is inspect.Parameter.empty \
                            and other.name in REQUIRED_VALUES:
                        entry = entry[:-1] + f", {other.name}: {REQUIRED_VALUES[other.name]}}}"
                if section == "augment" and name == "cam_resample":  # a later phase only
                    cases.append((CAM_PHASE % (entry, ""), f"phases[1].augment[0].{param}",
                                  name))
                elif section == "augment":
                    cases.append((f"augment=[{entry}]", f"augment[0].{param}", name))
                elif section == "head":
                    if name == "tau_norm" and param != "tau":
                        entry = entry[:-1] + ", tau: auto}"
                    cases.append((f"phases=[{{name: a}}, {{name: b, model: {{head: {entry}}}}}]",
                                  f"phases[1].model.head.{param}", name))
                else:
                    if section == "generator" and param != "point":
                        entry = entry[:-1] + ", point: layer2}"
                    cases.append((f"{section}={entry}", f"{section}.{param}", name))
    return cases


@pytest.mark.parametrize("override, key, entry", registry_cases(),
                         ids=[c[1] + ":" + c[2] for c in registry_cases()])
def test_a_wrong_value_of_any_registered_parameter_names_its_full_key(tmp_path, override, key,
                                                                      entry):
    from lttoolbox.engine.trainer import Trainer
    from lttoolbox.errors import ConfigError

    recipe = load_recipe(write_recipe(tmp_path / "r.yaml"), [override, "data.val_per_class=5"])
    with pytest.raises(ConfigError) as err:
        Trainer(recipe, tmp_path / "run", quiet=True)
    assert str(err.value).startswith(key), (override, str(err.value))
    assert not (tmp_path / "run").exists()


def test_a_bare_name_that_would_drop_loss_parameters_is_refused(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", {**DIGITS, "loss": {"name": "focal", "gamma": 1}})
    code, lines = lttrain_inproc(capsys, recipe, "loss=ce", "--out", tmp_path / "run")
    assert code == 2 and lines[0].startswith("error: loss: loss=ce would silently drop gamma")
    assert not (tmp_path / "run").exists()


BAD_FILES = [
    ("duplicate", "train: {epochs: 2}\ntrain: {epochs: 3}\n", "the key 'train' is given twice"),
    ("nested", "a: " + "[" * 200 + "]" * 200 + "\n", "nesting deeper than"),
    ("empty", "# nothing yet\n", "the recipe file is empty"),
    ("not_a_mapping", "- data\n- model\n", "a recipe must be a mapping"),
]


@pytest.mark.parametrize("name, text, message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_recipe_file_is_named(tmp_path, capsys, name, text, message):
    path = write_recipe(tmp_path / f"{name}.yaml", text=text)
    code, lines = lttrain_inproc(capsys, path, "--out", tmp_path / "run")
    assert code == 2 and len(lines) == 1 and str(path) in lines[0] and message in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_non_utf8_recipes_and_folder_bases_are_named(tmp_path, capsys):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("data: {name: digits_lt}  # caf\xe9\n".encode("latin-1"))
    code, lines = lttrain_inproc(capsys, latin, "--out", tmp_path / "run")
    assert code == 2 and "not UTF-8" in lines[0] and str(latin) in lines[0]
    (tmp_path / "base").mkdir()
    child = write_recipe(tmp_path / "child.yaml", text="_base_: base\n")
    code, lines = lttrain_inproc(capsys, child, "--out", tmp_path / "run")
    assert code == 2 and "is a folder, not a recipe file" in lines[0]
    assert not (tmp_path / "run").exists()


def test_yaml_numbers_and_choices_arrive_as_meant(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml"),
                         ["optim.lr=1e-3", "train.epochs=1e2", "train.amp=off",
                          "optim.weight_decay=5E-4"])
    assert recipe["optim"]["lr"] == 0.001 and recipe["optim"]["weight_decay"] == 0.0005
    assert recipe["train"]["epochs"] == 100 and isinstance(recipe["train"]["epochs"], int)
    assert recipe["train"]["amp"] == "off"


def test_an_empty_section_inherits_its_base(tmp_path):
    write_recipe(tmp_path / "base.yaml", {**DIGITS, "train": {"epochs": 7, "batch_size": 32}})
    child = write_recipe(tmp_path / "child.yaml",
                         text="_base_: base.yaml\ntrain:\n  # epochs: 3\n  # batch_size: 16\n")
    recipe = load_recipe(child)
    assert recipe["train"]["epochs"] == 7 and recipe["train"]["batch_size"] == 32
    child.write_text("_base_: base.yaml\ntrain: 5\n")
    with pytest.raises(Exception, match="^train: must be a mapping"):
        load_recipe(child)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_and_adamw_train(tmp_path, name):
    recipe = resolve({**DIGITS, "optim": {"name": name, "lr": 1e-3, "betas": [0.9, 0.99]}})
    results = train(recipe, tmp_path / name, quiet=True)
    assert results["top1"] > 20.0  # chance is 10 %


# ------------------------------------------------------------------------------ the run directory
def test_out_paths_that_cannot_hold_a_run_are_refused_before_loading(tmp_path, capsys,
                                                                    monkeypatch):
    recipe = write_recipe(tmp_path / "r.yaml")
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, message in ((afile, "is a file, not a folder"),
                         (afile / "run", "lies under")):
        code, lines = lttrain_inproc(capsys, recipe, "--out", out)
        assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert afile.read_text() == "x"
    # Permissions cannot be taken from root, who runs the CI: ask os.access directly.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(RunDirError, match="is not writable"):
        check_out_dir(tmp_path / "new" / "run")


def finished_run(tmp_path: Path, name: str = "run", **extra) -> tuple[Path, Path]:
    recipe = write_recipe(tmp_path / "r.yaml", {**DIGITS, **extra})
    out = tmp_path / name
    assert main([str(recipe), "--out", str(out), "--quiet"]) == 0
    return recipe, out


def test_broken_run_directories_are_named_and_left_alone(tmp_path, capsys):
    recipe, out = finished_run(tmp_path)
    (out / "results.json").unlink()
    checkpoint = out / "checkpoint.pt"
    good = checkpoint.read_bytes()
    cases = [(b"", "is empty"),
             (good[: len(good) // 2], "cannot be read"),
             (b"not a checkpoint at all", "cannot be read")]
    capsys.readouterr()
    for content, message in cases:
        checkpoint.write_bytes(content)
        before = snapshot(out)
        code, lines = lttrain_inproc(capsys, recipe, "--out", out, "--resume")
        assert code == 2 and len(lines) == 1 and message in lines[0], lines
        assert str(checkpoint) in lines[0] and snapshot(out) == before
    checkpoint.write_bytes(good)
    (out / "recipe.yaml").write_text("train: [unclosed\n")
    before = snapshot(out)
    code, lines = lttrain_inproc(capsys, recipe, "--out", out, "--resume")
    assert code == 2 and "recipe.yaml is corrupt" in lines[0] and snapshot(out) == before


def test_a_crafted_checkpoint_is_refused_not_executed(tmp_path, capsys):
    recipe, out = finished_run(tmp_path)
    (out / "results.json").unlink()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"phase": 0, "model": Payload()}, out / "checkpoint.pt")
    capsys.readouterr()
    code, lines = lttrain_inproc(capsys, recipe, "--out", out, "--resume")
    assert code == 2 and "was refused" in lines[0], lines
    assert not marker.exists()


def test_resume_checks_the_checkpoint_recipe_even_without_recipe_yaml(tmp_path, capsys):
    recipe, out = finished_run(tmp_path)
    (out / "results.json").unlink()
    (out / "recipe.yaml").unlink()
    capsys.readouterr()
    code, lines = lttrain_inproc(capsys, recipe, "optim.lr=0.01", "--out", out, "--resume")
    assert code == 2 and "was written by another recipe" in lines[0], lines


def test_resume_names_the_keys_that_differ(tmp_path, capsys):
    recipe, out = finished_run(tmp_path)
    capsys.readouterr()
    code, lines = lttrain_inproc(capsys, recipe, "optim.lr=0.01", "--out", out, "--resume")
    assert code == 2 and "optim.lr: 0.05 saved, 0.01 given" in lines[0], lines


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml")
    out = tmp_path / "run"
    with RunLock(out):  # another process holding the lock
        run = subprocess.run([sys.executable, "-m", "lttoolbox.cli", str(recipe), "--out",
                              str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert f"in use by another run (process {os.getpid()})" in run.stderr
    assert "Traceback" not in run.stderr
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
    # The lock went with its holder: the same command now runs.
    assert main([str(recipe), "--out", str(out), "--quiet"]) == 0


HOLDER = """
import multiprocessing, sys, time
from lttoolbox.rundir import RunLock

def work(started):
    started.set()  # the fork hooks, which run before the target, are done
    time.sleep(60)

with RunLock(sys.argv[1]):
    context = multiprocessing.get_context("fork")
    started = context.Event()
    child = context.Process(target=work, args=(started,))
    child.start()  # as a DataLoader worker is started
    started.wait(30)  # a loaded machine may not have run the child yet
    print(child.pid, flush=True)
    time.sleep(60)
"""


def test_the_lock_ends_with_its_process_not_with_its_forked_children(tmp_path):
    """kill -9 of a process whose forked children (DataLoader workers) outlive it: the run is
    free at once, not when the orphans notice and exit."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(RunDirError, match=f"process {holder.pid}"):
            RunLock(out).__enter__()  # held while the process lives
        holder.kill()
        holder.wait(timeout=30)
        os.kill(child, 0)  # the orphan still runs
        with RunLock(out):
            pass
    finally:
        holder.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_outputs_get_the_users_normal_mode(tmp_path):
    _, out = finished_run(tmp_path)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if not p.name.startswith(".")}
    assert len(set(modes.values())) == 1, modes


def test_a_diverging_run_stops_with_one_line(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", {**DIGITS, "train": {"epochs": 4, "batch_size": 64}})
    code, lines = lttrain_inproc(capsys, recipe, "optim.lr=1000", "--out", tmp_path / "run")
    assert code == 1 and len(lines) == 1 and "diverged" in lines[0] and "optim.lr" in lines[0]
    assert not (tmp_path / "run" / "results.json").exists()


# ----------------------------------------------------------------------------------- broken data
def image_tree(root: Path) -> Path:
    from PIL import Image

    for split, per_class in (("train", (6, 3)), ("test", (2, 2))):
        for c, n in enumerate(per_class):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (40 * c, 10 * i, 0)).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("damage, message", [
    ("loop", "cannot list"),
    ("empty_class", "has no .png/.jpg/.jpeg image"),
    ("corrupt", "cannot read image"),
    ("no_test", "no 'test' folder"),
])
def test_broken_data_trees_are_named(tmp_path, capsys, damage, message):
    root = image_tree(tmp_path / "data")
    if damage == "loop":
        (root / "train" / "loop").symlink_to(root / "train" / "loop")
    elif damage == "empty_class":
        for image in (root / "train" / "class1").iterdir():
            image.unlink()
    elif damage == "corrupt":
        (root / "train" / "class0" / "0.png").write_bytes(b"not a png")
    else:
        for image in (root / "test").rglob("*.png"):
            image.unlink()
        for folder in sorted((root / "test").iterdir()):
            folder.rmdir()
        (root / "test").rmdir()
    recipe = write_recipe(tmp_path / "r.yaml", {
        **DIGITS, "data": {"name": "image_folder", "root": str(root), "image_size": 8,
                           "imbalance_type": None, "cache_dir": str(tmp_path / "cache")}})
    code, lines = lttrain_inproc(capsys, recipe, "--out", tmp_path / "run")
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------- kill -9 trials
KILLER = """
import os, signal, sys
from pathlib import Path
import lttoolbox.rundir as atomic
import lttoolbox.engine.trainer as trainer

point, count = sys.argv[1], int(sys.argv[2])
seen = [0]

def kill_at(real, matches, after):
    def wrapper(*args, **kwargs):
        hit = matches(*args)
        seen[0] += hit
        if hit and seen[0] == count and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*args, **kwargs)
        if hit and seen[0] == count and after:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapper

if point == "after_checkpoint":  # the checkpoint is on disk; its log line and weights are not
    trainer.atomic_save = kill_at(trainer.atomic_save,
                                  lambda obj, path: Path(path).name == "checkpoint.pt", True)
else:                            # a temporary file is written, its rename has not happened
    name = "checkpoint.pt" if point == "before_checkpoint_rename" else "model-"
    atomic.os.replace = kill_at(os.replace, lambda src, dst: Path(dst).name.startswith(name),
                                False)

from lttoolbox.cli import main
sys.exit(main(sys.argv[3:]))
"""


def run_killer(tmp_path: Path, point: str, count: int, *args) -> subprocess.CompletedProcess:
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    return subprocess.run([sys.executable, str(script), point, str(count), *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def log_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def comparable(rows: list[dict]) -> list[tuple]:
    return [(r["phase"], r["epoch"], r["loss"], r["lr"]) for r in rows]


@pytest.fixture(scope="module")
def kill_recipe(tmp_path_factory) -> tuple[Path, dict, list[dict]]:
    """A two-phase digits recipe (the second re-trains a new head) and its uninterrupted run."""
    folder = tmp_path_factory.mktemp("kill")
    recipe = {**DIGITS, "data": {"name": "digits_lt", "imbalance_ratio": 10, "crop_padding": 1,
                                 "hflip": True},
              "train": {"epochs": 3, "batch_size": 64, "checkpoint_every": 2},
              "phases": [{"name": "joint"},
                         {"name": "crt", "sampler": {"name": "class_balanced"},
                          "train": {"epochs": 2, "freeze": ["backbone"], "reset_head": True,
                                    "checkpoint_every": 1}}]}
    path = write_recipe(folder / "two_phase.yaml", recipe)
    out = folder / "reference"
    assert main([str(path), "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    return path, results, log_rows(out)


@pytest.mark.parametrize("point, count", [
    ("before_checkpoint_rename", 1),    # epoch 1 logged but never checkpointed: logged once
    ("after_checkpoint", 1),            # phase 1, epoch 2 checkpointed, its line not logged
    ("after_checkpoint", 2),            # end of phase 1: a phase boundary, no weights file yet
    ("before_checkpoint_rename", 4),    # end of phase 2: a temporary checkpoint left behind
    ("before_final_rename", 2),         # the last phase's final weights, mid-rename
])
@pytest.mark.long
def test_kill_9_then_resume_gives_the_uninterrupted_run(tmp_path, kill_recipe, point, count):
    path, reference, reference_log = kill_recipe
    out = tmp_path / "run"
    killed = run_killer(tmp_path, point, count, path, "--out", out, "--quiet")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "results.json").exists()
    assert main([str(path), "--out", str(out), "--resume", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["per_class_acc"] == reference["per_class_acc"]
    assert results["top1"] == reference["top1"]
    assert comparable(log_rows(out)) == comparable(reference_log)      # no epoch lost or doubled
    assert comparable(results["history"]) == comparable(reference["history"])
    assert (out / "model-joint.pt").is_file() and (out / "model-crt.pt").is_file()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_kill_9_of_a_streamed_run_with_workers_then_an_immediate_resume(tmp_path, capsys):
    """Its orphaned DataLoader workers must not keep the run locked. (That the resumed run is
    the uninterrupted one: tests/test_stream.py, and benchmarks/fault_sweep.py with kill -9.)"""
    root = image_tree(tmp_path / "data")
    recipe = write_recipe(tmp_path / "r.yaml", {
        **DIGITS, "data": {"name": "image_folder", "root": str(root), "image_size": 8,
                           "imbalance_type": None, "path": "stream"},
        "augment": [{"name": "mixup"}],
        "train": {"epochs": 3, "batch_size": 2, "workers": 1}})
    out = tmp_path / "run"
    # killed where epoch 1's checkpoint is on disk and its persistent workers run: at a point of
    # the run, not of the clock (a fast machine could finish all 3 epochs between two polls)
    killed = run_killer(tmp_path, "after_checkpoint", 2, recipe, "--out", out, "--quiet")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "results.json").exists()
    before = comparable(log_rows(out))
    assert len(before) == 1  # epoch 0's line; epoch 1's is written after its checkpoint
    code, lines = lttrain_inproc(capsys, recipe, "--out", out, "--resume", "--quiet")
    assert code == 0, lines
    after = comparable(log_rows(out))
    assert len(after) == 3 and after[:len(before)] == before


# ------------------------------------------------------------------------------------- signals
def test_sighup_stops_resumably_and_the_hint_is_one_line(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", {**DIGITS, "train": {"epochs": 400}})
    out = tmp_path / "a very long folder name that a terminal would wrap" / "run"
    proc = subprocess.Popen([sys.executable, "-m", "lttoolbox.cli", str(recipe),
                             "schedule.gamma=0.5", "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGHUP)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    hint = [line for line in output.splitlines() if "--resume" in line]
    assert len(hint) == 1 and hint[0].endswith("--resume") and str(recipe) in hint[0], output
    assert "Traceback" not in output


@pytest.mark.parametrize("delay", [0.3, 1.0])
def test_an_interrupt_while_starting_is_quiet_and_writes_nothing(tmp_path, delay):
    recipe = write_recipe(tmp_path / "r.yaml", {**DIGITS, "train": {"epochs": 400}})
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "lttoolbox.cli", str(recipe), "--out",
                             str(out)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "--out None" not in output, output
    if "before the run started; nothing was written" in output:
        assert not out.exists()
    else:  # the machine was quick: training had started, so the hint to resume is printed
        assert "--resume" in output, output


SIGNALLING_MODULE = """
import os, signal, time
from dataclasses import dataclass
os.kill(os.getpid(), signal.SIGINT)  # the stop lands while this module is being imported
for _ in range(20):
    @dataclass  # builds __init__ with exec(): where a raised stop used to kill the process
    class Row:
        x: int = 0
    time.sleep(0.01)
FINISHED = True
"""


@pytest.fixture
def signalling_module(tmp_path, monkeypatch):
    (tmp_path / "lt_signalling_module.py").write_text(SIGNALLING_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "lt_signalling_module"
    sys.modules.pop("lt_signalling_module", None)


def test_a_stop_signal_inside_an_import_is_raised_when_the_import_is_over(signalling_module):
    """Raised inside an import, the stop can run through torch's C++ start-up (which aborts) or a
    string exec() (after which CPython exits by SIGINT, not 130); it waits for the import."""
    import importlib

    from lttoolbox.cli import stop_signals_interrupt

    # the handler the block must give back: Python's default, or SIG_IGN where the process was
    # started with SIGINT ignored (a background job of a non-interactive shell)
    before = signal.getsignal(signal.SIGINT)
    with stop_signals_interrupt():
        with pytest.raises(KeyboardInterrupt):
            module = importlib.import_module(signalling_module)
            time.sleep(5)  # the deferred stop is raised here, some milliseconds after the import
    assert module.FINISHED
    assert signal.getsignal(signal.SIGINT) is before


def test_a_deferred_stop_is_not_delivered_after_its_block(signalling_module):
    import importlib

    from lttoolbox.cli import stop_signals_interrupt

    before = signal.getsignal(signal.SIGINT)
    with stop_signals_interrupt():
        importlib.import_module(signalling_module)
    time.sleep(0.3)  # a late delivery would raise KeyboardInterrupt here and fail the test
    assert signal.getsignal(signal.SIGINT) is before


def test_a_full_disk_is_named_and_keeps_the_previous_file(tmp_path):
    import errno

    from lttoolbox.rundir import DiskFullError, atomic_write, atomic_write_text

    target = tmp_path / "checkpoint.pt"
    atomic_write_text(target, "previous")

    def fill_the_disk(handle):
        handle.write(b"half of the new chec")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match="no space left on the device while writing .*"
                                            "checkpoint.pt; its previous version is kept"):
        atomic_write(target, fill_the_disk, binary=True)
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def torch_like_save(real_save):
    """``torch.save`` as it behaves on a full disk: the file goes out in one write, and a failed
    write comes back as torch's C++ writer reports it, a RuntimeError without the OSError."""
    def save(obj, handle, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        failed = False
        try:
            handle.write(buffer.getvalue())
        except OSError:
            failed = True  # swallowed, as the C++ writer does
        if failed:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 "
                               "vs 598")
    return save


def redirect_to_dev_full(monkeypatch, name: str, which: int = 1) -> None:
    """The ``which``-th temporary file of ``name`` is opened on /dev/full: a real ENOSPC."""
    real_open, seen = os.open, [0]

    def open_(path, flags, mode=0o777, **kwargs):
        if Path(path).name.startswith(f".{name}.") and str(path).endswith(".tmp"):
            seen[0] += 1
            if seen[0] == which:
                return real_open("/dev/full", os.O_WRONLY)
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", open_)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("saver", ["torch_like", "torch"])
def test_a_full_disk_under_torch_save_is_named_and_keeps_the_previous_file(tmp_path,
                                                                           monkeypatch, saver):
    from lttoolbox.rundir import DiskFullError
    from lttoolbox.engine.checkpoint import atomic_save, load_checkpoint

    target = tmp_path / "checkpoint.pt"
    atomic_save({"epoch": 1}, target)
    if saver == "torch_like":
        monkeypatch.setattr(torch, "save", torch_like_save(torch.save))
    redirect_to_dev_full(monkeypatch, "checkpoint.pt")
    with pytest.raises(DiskFullError, match="no space left on the device while writing "
                                            ".*checkpoint.pt; its previous version is kept"):
        atomic_save({"epoch": 2, "weights": torch.zeros(100_000)}, target)
    assert load_checkpoint(target) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_stops_training_with_one_line_and_resumes_exactly(tmp_path, capsys,
                                                                      monkeypatch, kill_recipe):
    path, reference, reference_log = kill_recipe
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", torch_like_save(torch.save))
        redirect_to_dev_full(patch, "checkpoint.pt", which=2)  # the first one is written
        code, lines = lttrain_inproc(capsys, path, "--out", out, "--quiet")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: no space left on the device while writing {out}")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1  # epoch 2 kept
    assert main([str(path), "--out", str(out), "--resume", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["per_class_acc"] == reference["per_class_acc"]
    assert comparable(log_rows(out)) == comparable(reference_log)


def test_a_stop_request_swallowed_by_a_library_still_stops_the_run(tmp_path):
    """A signal's KeyboardInterrupt can be caught by code it interrupts (an import, a reader);
    the request is recorded too, and the trainer ends at the next step."""
    from lttoolbox import stop

    recipe = resolve(DIGITS)
    stop.request()
    try:
        with pytest.raises(KeyboardInterrupt):
            train(recipe, tmp_path / "run", quiet=True)
    finally:
        stop.clear()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    train(recipe, tmp_path / "run", resume=True, quiet=True)  # and it resumes
