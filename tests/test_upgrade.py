"""Training stages became phases and a component's model stage its point: old keys in a recipe
someone writes are refused with one line naming the new key, and a recipe converts between the
two spellings exactly."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lttoolbox.cli import main as lttrain
from lttoolbox.errors import ConfigError
from lttoolbox.recipe import resolve
from lttoolbox.upgrade import earlier_spelling, upgrade_recipe

ROOT = Path(__file__).resolve().parents[1]


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
