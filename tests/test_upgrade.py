"""Training stages became phases and a component's model stage its point: old keys in a recipe
someone writes are refused with one line naming the new key, and run directories written before
the rename (tests/old_runs.py writes them from a real run) stay readable by lteval, ltpredict,
load_run, lttrain --resume (exactly) and lttrain --from-run."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import lttoolbox
from conftest import StopAfter
from lttoolbox.cli import main as lttrain
from lttoolbox.cli_eval import main as lteval
from lttoolbox.cli_predict import main as ltpredict
from lttoolbox.engine import train
from lttoolbox.errors import ConfigError
from lttoolbox.recipe import recipe_hash, resolve
from lttoolbox.upgrade import earlier_spelling, upgrade_record, upgrade_recipe
from old_runs import to_old_format

ROOT = Path(__file__).resolve().parents[1]

# Two phases, a component at a model point, an evaluation every epoch: every renamed key.
RECIPE = {
    "data": {"name": "digits_lt", "imbalance_ratio": 10},
    "model": {"name": "digits_cnn"},
    "augment": [{"name": "manifold_mixup", "alpha": 1.0, "point": "layer1", "end_epoch": 1}],
    "optim": {"lr": 0.05},
    "train": {"epochs": 2, "batch_size": 64, "seed": 0},
    "eval": {"every": 1, "many_threshold": 60, "few_threshold": 25},
    "phases": [{"name": "joint"},
               {"name": "crt", "augment": [], "sampler": {"name": "class_balanced"},
                "train": {"epochs": 1, "freeze": ["backbone"], "reset_head": True}}],
}
TIMING = ("seconds", "images_per_second", "compile_seconds")


def trained(history: list) -> list:
    """A history without what depends on the machine's speed."""
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def same_weights(a: Path, b: Path) -> bool:
    x, y = weights(a), weights(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run of today's code, and the same run directory as the code before the rename wrote
    it: ``(recipe file, run, old run, results)``."""
    root = tmp_path_factory.mktemp("renamed")
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    run = root / "run"
    results = train(resolve(RECIPE), run, quiet=True)
    old = root / "old"
    shutil.copytree(run, old)
    to_old_format(old)
    return path, run, old, results


# ------------------------------------------------------------------------------ old keys refused
WRITTEN = [
    ({"stages": [{"name": "a"}]}, "stages: renamed to phases (training phases); a component's "
                                  "model stage is now 'point'"),
    ({"augment": [{"name": "mixup", "stage": "input"}]},
     "augment[0].stage: renamed to point (the model point it acts at)"),
    ({"augment": ["cutmix", {"name": "manifold_mixup", "stage": ["input", "layer1"]}]},
     "augment[1].stage: renamed to point (the model point it acts at)"),
    ({"augment": [{"name": "one_of", "p": [0.5, 0.5],
                   "choices": ["cutmix", {"name": "mixup", "stage": "input"}]}]},
     "augment[0].choices[1].stage: renamed to point (the model point it acts at)"),
    ({"generator": {"name": "rsg", "stage": "layer1"}},
     "generator.stage: renamed to point (the model point it acts at)"),
    ({"meta": {"stage": "main"}}, "meta.stage: renamed to phase (the name of the training phase)"),
    ({"phases": [{"name": "a"}, {"name": "b", "generator": {"name": "rsg", "stage": "layer1"}}]},
     "phases[1].generator.stage: renamed to point (the model point it acts at)"),
    ({"phases": [{"name": "a", "meta": {"stage": "a"}}]},
     "phases[0].meta.stage: renamed to phase (the name of the training phase)"),
    ({"phases": [{"name": "a", "stages": []}]},
     "phases[0].stages: renamed to phases (training phases); a component's model stage is now "
     "'point'"),
]


@pytest.mark.parametrize("written,line", WRITTEN, ids=[w[1].split(":")[0] for w in WRITTEN])
def test_an_old_key_in_a_written_recipe_is_one_line_naming_the_new_key(tmp_path, capsys, written,
                                                                       line):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"_base_": str(ROOT / "configs/quickstart.yaml"), **written}))
    out = tmp_path / "run"
    assert lttrain([str(path), "--out", str(out)]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert lines == [f"error: {line}"]
    assert not out.exists()
    with pytest.raises(ConfigError, match=r"renamed to"):  # the library refuses it too
        resolve({"data": {"name": "digits_lt"}, "model": {"name": "digits_cnn"}, **written})


@pytest.mark.parametrize("override,line", [
    ("stages=[{name: a}]", "stages: renamed to phases (training phases); a component's model "
                           "stage is now 'point'"),
    ("generator={name: rsg, stage: layer1}", "generator.stage: renamed to point (the model point "
                                             "it acts at)"),
    ("generator.stage=layer1", "generator.stage: renamed to point (the model point it acts at)"),
    ("augment=[{name: manifold_mixup, stage: layer1}]",
     "augment[0].stage: renamed to point (the model point it acts at)"),
    ("meta.stage=x", "meta.stage: renamed to phase (the name of the training phase)"),
])
def test_an_old_key_in_an_override_is_one_line_naming_the_new_key(tmp_path, capsys, override,
                                                                   line):
    out = tmp_path / "run"
    assert lttrain([str(ROOT / "configs/quickstart.yaml"), override, "--out", str(out)]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert lines == [f"error: {line}"]
    assert not out.exists()


def test_a_top_level_stage_override_is_an_unknown_section_not_a_renamed_one(tmp_path, capsys):
    """Only ``stages`` was a section: ``stage`` was a key inside a component, never at the top,
    so ``stage=...`` is an unknown section (pointing to ``point=...`` would send the user to
    another unknown section)."""
    out = tmp_path / "run"
    assert lttrain([str(ROOT / "configs/quickstart.yaml"), "stage=layer1", "--out", str(out)]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: stage: unknown recipe section 'stage'")
    assert "point" not in lines[0]
    assert not out.exists()


# ------------------------------------------------------------------------- the two upgrades
def test_the_recipe_upgrade_renames_exactly_the_old_keys():
    old = {"data": {"name": "d", "stage": "kept: not a component"}, "meta": {"stage": "joint"},
           "augment": [{"name": "one_of", "choices": [{"name": "mixup", "stage": "input"}]},
                       "cutmix"],
           "generator": {"name": "rsg", "stage": "layer2"},
           "stages": [{"meta": {"stage": "a"}, "generator": None},
                      {"meta": {"stage": "b", "note": 1}}]}
    assert upgrade_recipe(old) == {
        "data": {"name": "d", "stage": "kept: not a component"}, "meta": {"phase": "joint"},
        "augment": [{"name": "one_of", "choices": [{"name": "mixup", "point": "input"}]},
                    "cutmix"],
        "generator": {"name": "rsg", "point": "layer2"},
        "phases": [{"meta": {"phase": "a"}, "generator": None},
                   {"meta": {"phase": "b", "note": 1}}]}
    new = upgrade_recipe(old)
    assert upgrade_recipe(new) == new  # today's spelling is left as it is
    assert earlier_spelling(new) == old
    assert list(upgrade_recipe({"a": 1, "stages": [], "z": 2})) == ["a", "phases", "z"]
    assert upgrade_recipe(["not", "a", "recipe"]) == ["not", "a", "recipe"]


def test_the_record_upgrade_renames_results_checkpoints_and_rows():
    old = {"stage": 1, "epoch": 4, "stage_done": False, "stages": [{"name": "a", "epochs": 2}],
           "history": [{"stage": "a", "epoch": 0, "eval": {"top1": 1.0}}],
           "reused": {"phase": "a"}}
    assert upgrade_record(old) == {
        "phase": 1, "epoch": 4, "phase_done": False, "phases": [{"name": "a", "epochs": 2}],
        "history": [{"phase": "a", "epoch": 0, "eval": {"top1": 1.0}}], "reused": {"phase": "a"}}
    assert upgrade_record({"stage": "a", "epoch": 0}) == {"phase": "a", "epoch": 0}
    new = upgrade_record(old)
    assert upgrade_record(new) == new
    assert upgrade_record(None) is None and upgrade_record([1]) == [1]


# --------------------------------------------------------------------- an old run directory
def test_the_old_run_directory_is_spelled_as_before(finished):
    """What the tests below read really is the old spelling."""
    _, _, old, _ = finished
    assert "stages" in yaml.safe_load((old / "recipe.yaml").read_text())
    assert "stage: layer1" in (old / "recipe.yaml").read_text()
    results = json.loads((old / "results.json").read_text())
    assert "stages" in results and "phases" not in results
    assert all("stage" in row for row in results["history"])
    assert (old / "metrics.csv").read_text().startswith("stage,epoch,")
    assert '"stage": "joint"' in (old / "log.jsonl").read_text()
    state = torch.load(old / "checkpoint.pt", weights_only=True)
    assert state["stage"] == 1 and state["stage_done"] and "phase" not in state


def test_load_run_lteval_and_ltpredict_read_an_old_run(finished, tmp_path, capsys):
    from PIL import Image

    _, run, old, results = finished
    model, recipe = lttoolbox.load_run(old)
    assert [p["meta"]["phase"] for p in recipe["phases"]] == ["joint", "crt"]
    assert recipe["augment"][0]["point"] == "layer1"
    assert recipe_hash(recipe) == results["recipe_hash"]
    assert all(torch.equal(v, weights(run / "model-crt.pt")[k])
               for k, v in model.state_dict().items())
    assert lteval([str(old), "--quiet"]) == 0, capsys.readouterr().err
    again = json.loads((old / "eval-crt.json").read_text())
    assert again["phase"] == "crt" and again["top1"] == results["top1"]
    assert again["per_class_acc"] == results["per_class_acc"]
    assert lteval([str(old), "--weights", "model-joint.pt", "--quiet"]) == 0
    assert json.loads((old / "eval-joint.json").read_text())["phase"] == "joint"
    image = tmp_path / "one.png"
    Image.new("L", (8, 8), 200).save(image)
    for where in (run, old):
        out = tmp_path / f"{where.name}.csv"
        assert ltpredict([str(where), str(image), "--out", str(out)]) == 0
    assert ((tmp_path / "run.csv").read_text() == (tmp_path / "old.csv").read_text())


def test_an_interrupted_old_run_resumes_exactly(finished, tmp_path, capsys):
    """Interrupted inside its first phase by the code before the rename, resumed by today's
    (the recipe read from the run directory): the uninterrupted run's every loss, result and
    weight, and logs rewritten in today's spelling."""
    _, run, _, results = finished
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(resolve(RECIPE), out, logger=StopAfter(1))
    to_old_format(out)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (state["stage"], state["epoch"], state["stage_done"]) == (0, 0, False)
    assert lttrain(["--resume", "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    resumed = json.loads((out / "results.json").read_text())
    assert trained(resumed["history"]) == trained(results["history"])
    for key in ("top1", "per_class_acc", "confusion_matrix", "recipe_hash", "selection"):
        assert resumed[key] == results[key], key
    assert resumed["phases"] == results["phases"]
    for name in ("model-joint.pt", "model-crt.pt"):
        assert same_weights(out / name, run / name), name
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log == resumed["history"]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [(r["phase"], int(r["epoch"])) for r in rows] == [("joint", 0), ("joint", 1),
                                                             ("crt", 0)]
    assert "phases" in yaml.safe_load((out / "recipe.yaml").read_text())


def test_an_old_run_lends_its_first_phase(finished, tmp_path, capsys):
    path, run, old, results = finished
    out = tmp_path / "reused"
    assert lttrain([str(path), "--from-run", str(old), "--out", str(out), "--quiet"]) == 0, \
        capsys.readouterr().err
    reused = json.loads((out / "results.json").read_text())
    assert reused["reused"]["from"] == str(old.resolve())
    assert reused["reused"]["donor_phase"] == "joint"
    assert trained(reused["history"]) == trained(results["history"])
    for key in ("top1", "per_class_acc", "confusion_matrix", "recipe_hash"):
        assert reused[key] == results[key], key
    assert same_weights(out / "model-crt.pt", run / "model-crt.pt")


def test_an_old_run_resumed_with_its_recipe_file_keeps_its_phase_names(finished, tmp_path,
                                                                       capsys):
    """Unnamed phases were ``stage0``, ``stage1``, ... before the rename and are ``phase0``,
    ``phase1``, ... now. Names are not hashed, so the recipe file of an old run with unnamed
    phases resumes it; the run keeps the names it wrote (history rows, ``model-<phase>.pt``)
    rather than mixing the two."""
    _, _, _, results = finished
    unnamed = {**RECIPE, "phases": [{k: v for k, v in p.items() if k != "name"}
                                    for p in RECIPE["phases"]]}
    as_before = {**unnamed, "phases": [{**p, "name": f"stage{i}"}  # what 257e3a6 named them
                                       for i, p in enumerate(unnamed["phases"])]}
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(resolve(as_before), out, logger=StopAfter(1))
    to_old_format(out)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(unnamed, sort_keys=False))
    assert lttrain([str(path), "--resume", "--out", str(out), "--quiet"]) == 0, \
        capsys.readouterr().err
    resumed = json.loads((out / "results.json").read_text())
    assert [p["name"] for p in resumed["phases"]] == ["stage0", "stage1"]
    assert [r["phase"] for r in resumed["history"]] == ["stage0", "stage0", "stage1"]
    assert sorted(p.name for p in out.glob("model-*.pt")) == ["model-stage0.pt",
                                                               "model-stage1.pt"]
    assert [(r["loss"], r["lr"]) for r in resumed["history"]] == \
        [(r["loss"], r["lr"]) for r in results["history"]]  # names aside, the same training
    assert resumed["per_class_acc"] == results["per_class_acc"]
    assert lteval([str(out), "--quiet"]) == 0  # the last phase's weights, found by its name
