"""Recipes: _base_ inheritance, overrides, defaults, validation and epoch scaling."""
from pathlib import Path

import pytest
import yaml

from lttoolbox.errors import ConfigError
from lttoolbox.recipe import (apply_overrides, deep_merge, load_recipe, recipe_hash, resolve,
                              scale_epochs, phase_recipes)

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_deep_merge_merges_mappings_and_replaces_lists():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 1}
    merged = deep_merge(base, {"a": {"y": [3]}, "c": 2})
    assert merged == {"a": {"x": 1, "y": [3]}, "b": 1, "c": 2}
    assert base["a"]["y"] == [1, 2]  # the base is not mutated


def test_base_chain_relative_to_file(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "root.yaml", {"data": {"name": "digits_lt", "imbalance_ratio": 10},
                                   "model": {"name": "digits_cnn"}, "train": {"epochs": 7}})
    write(tmp_path / "sub" / "mid.yaml", {"_base_": "../root.yaml", "loss": {"name": "focal"}})
    leaf = write(tmp_path / "sub" / "leaf.yaml", {"_base_": "mid.yaml",
                                                   "data": {"imbalance_ratio": 50}})
    recipe = load_recipe(leaf)
    assert recipe["data"] == {"name": "digits_lt", "imbalance_ratio": 50}
    assert recipe["loss"]["name"] == "focal" and recipe["train"]["epochs"] == 7
    assert recipe["train"]["batch_size"] == 128  # a default filled in
    assert recipe["augment"] == [] and recipe["generator"] is None


def test_overrides_parse_yaml_values(tmp_path):
    path = write(tmp_path / "r.yaml", {"data": {"name": "digits_lt"}, "model": {"name": "m"}})
    recipe = load_recipe(path, ["train.epochs=5", "loss.name=focal", "loss.gamma=0.5",
                                "schedule.milestones=[3, 4]", "augment=[{name: mixup}]"])
    assert recipe["train"]["epochs"] == 5
    assert recipe["loss"] == {"name": "focal", "gamma": 0.5}
    assert recipe["schedule"]["milestones"] == [3, 4]
    assert recipe["augment"] == [{"name": "mixup"}]


@pytest.mark.parametrize("override, key", [
    ("trian.epochs=3", "trian.epochs"),
    ("train.epoch=3", "train.epoch"),
    ("train.epochs=three", "train.epochs"),
    ("train.batch_size=0", "train.batch_size"),
    ("optim.name=sgdd", "optim.name"),
    ("schedule.milestones=5", "schedule.milestones"),
    ("train.amp=maybe", "train.amp"),
])
def test_bad_values_name_the_key(tmp_path, override, key):
    path = write(tmp_path / "r.yaml", {"data": {"name": "digits_lt"}, "model": {"name": "m"}})
    with pytest.raises(ConfigError) as err:
        load_recipe(path, [override])
    assert str(err.value).startswith(key), str(err.value)


def test_typo_gets_a_suggestion(tmp_path):
    path = write(tmp_path / "r.yaml", {"data": {"name": "d"}, "model": {"name": "m"},
                                       "trian": {"epochs": 1}})
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_recipe(path)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
    bad = write(tmp_path / "bad.yaml", "data: {name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*line"):
        load_recipe(bad)
    loop_a = write(tmp_path / "a.yaml", {"_base_": "b.yaml"})
    write(tmp_path / "b.yaml", {"_base_": "a.yaml"})
    with pytest.raises(ConfigError, match="loops"):
        load_recipe(loop_a)
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.epochs"])


def test_phases_are_overlays(tmp_path):
    path = write(tmp_path / "r.yaml", {
        "data": {"name": "digits_lt"}, "model": {"name": "digits_cnn"},
        "train": {"epochs": 10},
        "phases": [{"name": "joint"},
                   {"name": "crt", "sampler": {"name": "class_balanced"},
                    "train": {"epochs": 2, "freeze": ["backbone"], "reset_head": True}}]})
    recipe = load_recipe(path)
    joint, crt = phase_recipes(recipe)
    assert joint["meta"]["phase"] == "joint" and joint["train"]["epochs"] == 10
    assert crt["sampler"]["name"] == "class_balanced" and crt["train"]["freeze"] == ["backbone"]
    assert crt["data"] == joint["data"]
    # A resolved recipe resolves to itself (the trainer may resolve twice).
    assert recipe_hash(resolve(recipe)) == recipe_hash(recipe)
    assert [s["meta"]["phase"] for s in phase_recipes(resolve(recipe))] == ["joint", "crt"]


def test_scale_epochs_moves_every_switch_in_proportion():
    recipe = load_recipe(REPO / "configs/cifar10_lt/base.yaml",
                         ["loss.weights_start_epoch=160", "sampler.start_epoch=160"])
    quick = scale_epochs(recipe, 30)
    assert quick["train"]["epochs"] == 30
    assert quick["schedule"]["milestones"] == [24, 27]   # 160 and 180 of 200
    assert quick["schedule"]["warmup_epochs"] == 0.75     # 5 * 30 / 200, warmed up per step
    assert quick["schedule"]["warmup_unit"] == "step"
    assert quick["loss"]["weights_start_epoch"] == 24
    assert quick["sampler"]["start_epoch"] == 24
    assert recipe["train"]["epochs"] == 200  # not mutated


def test_hash_ignores_meta_only():
    recipe = load_recipe(REPO / "configs/quickstart.yaml")
    other = dict(recipe, meta={"note": "x"})
    assert recipe_hash(other) == recipe_hash(recipe)
    assert recipe_hash(apply_overrides(recipe, ["train.seed=1"])) != recipe_hash(recipe)


def test_the_imbalance_ratio_is_a_setting_not_a_recipe_file():
    # Ratio 50 is the override data.imbalance_ratio=50 (or a suite's setting), not a copy of
    # each recipe that sets it: no recipe file only changes the ratio of another one.
    only_ratio = [path for path in REPO.glob("configs/**/*.yaml")
                  if set(yaml.safe_load(path.read_text()) or {}) == {"_base_", "data"}
                  and set(yaml.safe_load(path.read_text())["data"]) == {"imbalance_ratio"}]
    assert not only_ratio, only_ratio[:3]
    ratio50 = load_recipe(REPO / "configs/cifar10_lt/ldam_drw.yaml", ["data.imbalance_ratio=50"])
    assert ratio50["data"]["imbalance_ratio"] == 50


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_recipe_file_is_named_as_empty(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^{path}: the recipe file is empty"):
        load_recipe(path)
    child = write(tmp_path / "child.yaml", {"_base_": "empty.yaml", "train": {"epochs": 1}})
    with pytest.raises(ConfigError, match="empty.yaml: the recipe file is empty"):
        load_recipe(child)
