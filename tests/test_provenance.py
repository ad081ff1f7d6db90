"""Recipe provenance: the ``meta`` schema, and each shipped recipe's published number.

A CIFAR-LT recipe's ``meta.reference`` is the published number the leaderboard shows for it at
the recipe's own setting (exponential profile, ratio 100): the entry of
``benchmarks/reference_numbers.yaml`` that the suite's ``reference_priority`` picks, for the
suite row that runs the recipe (its ``reference`` or ``id``; a recipe no row runs is looked up by
its file name). A recipe with no such number has no ``meta.reference``. The recipes and rows are
read from ``configs/`` and ``benchmarks/suites/``, so a new recipe is checked without an edit here.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import OUTDATED_NUMBERS, ROOT
from lttoolbox.errors import ConfigError
from lttoolbox.recipe import load_recipe, read_recipe, recipe_hash
from lttoolbox.recipe_checks import META_KEYS, check_meta

CIFAR = ("cifar10_lt", "cifar100_lt")
RECIPES = [p for ds in CIFAR for p in sorted((ROOT / "configs" / ds).glob("*.yaml"))
           if p.name != "base.yaml"]
EVERY_RECIPE = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.fixture(scope="module")
def published():
    """``recipe path -> (reference entry or None)`` as the leaderboard shows it."""
    from lttoolbox.leaderboard.suite import load_suite

    entries = yaml.safe_load((ROOT / "benchmarks/reference_numbers.yaml").read_text())["entries"]
    expected = {}
    for ds in CIFAR:
        suite = load_suite(ROOT / f"benchmarks/suites/{ds}_core.yaml")
        rank = {name: i for i, name in enumerate(suite.reference_priority)}
        methods = {row.recipe.resolve(): row.reference or row.id for row in suite.rows
                   if row.available}
        for path in RECIPES:
            if path.parent.name != ds:
                continue
            method = methods.get(path.resolve(), path.stem)
            found = [e for e in entries if (e["method"], e["dataset"], e["imbalance_type"],
                                            e["imbalance_ratio"]) == (method, ds, "exp", 100)]
            # the source the suite ranks first, then file order (as the leaderboard picks)
            found.sort(key=lambda e: rank.get(e["source"], len(rank)))
            expected[path] = found[0] if found else None
    return expected


def id_of(path: Path) -> str:
    return path.relative_to(ROOT / "configs").as_posix()


@pytest.mark.parametrize("path", RECIPES, ids=id_of)
def test_meta_reference_is_the_number_the_leaderboard_shows(published, path):
    reference = (read_recipe(path).get("meta") or {}).get("reference")
    entry = published[path]
    if entry is None:
        assert reference is None, f"{path}: no published number for this recipe and setting"
        return
    value = "top1_error" if "top1_error" in entry else "top1_accuracy"
    assert reference == {"source": entry["source"], "table": entry["table"],
                         value: entry[value]}, path


@pytest.mark.parametrize("path", EVERY_RECIPE, ids=id_of)
def test_every_recipe_loads_with_its_meta_and_cites_no_outdated_number(path):
    recipe = load_recipe(path)  # checks meta against the schema
    assert set(recipe["meta"]) <= set(META_KEYS)
    assert not [n for n in OUTDATED_NUMBERS if n in path.read_text()], path


@pytest.mark.parametrize("meta, message", [
    ({"papr": "x"}, "meta.papr: unknown meta key; did you mean 'paper'?"),
    ({"paper": ""}, "meta.paper: must be a non-empty string"),
    ({"code": "https://github.com/kaidic/LDAM-DRW"}, "meta.code: must be an https URL pinned"),
    ({"reference": {"source": "ldam", "table": "Table 2"}},
     "meta.reference: needs exactly one of top1_error, top1_accuracy"),
    ({"reference": {"source": "ldam", "top1_error": 22.97}}, "meta.reference.table: is required"),
    ({"reference": {"source": "ldam", "table": "Table 2", "top1_eror": 1}},
     "meta.reference.top1_eror: unknown key; did you mean 'top1_error'?"),
    ({"reference": {"source": "ldam", "table": "Table 2", "top1_error": 122.97}},
     "meta.reference.top1_error: must be a percentage"),
    ("LDAM", "meta: must be a mapping"),
])
def test_a_bad_meta_is_refused_in_one_line_naming_the_key(tmp_path, meta, message):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"_base_": str(ROOT / "configs/quickstart.yaml"),
                                    "meta": meta}))
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="^phases\\[0\\]\\.meta\\.papr: unknown meta key"):
        check_meta({"papr": "x"}, "phases[0].")


def test_provenance_changes_no_hash_and_a_saved_meta_is_not_checked(tmp_path):
    plain = load_recipe(ROOT / "configs/quickstart.yaml")
    cited = load_recipe(ROOT / "configs/quickstart.yaml", [
        "meta.paper=Cao et al., NeurIPS 2019, arXiv:1906.07413v2",
        "meta.code=https://github.com/kaidic/LDAM-DRW/blob/2536330f2afdaa65618323cb5a5850efccce762a/cifar_train.py",
        "meta.reference={source: ldam, table: Table 2, top1_error: 22.97}"])
    assert cited["meta"]["reference"]["top1_error"] == 22.97
    assert recipe_hash(cited) == recipe_hash(plain)
    # a run saved before the schema existed may carry any note; it still loads
    saved = tmp_path / "recipe.yaml"
    saved.write_text(yaml.safe_dump({**plain, "meta": {"author": "me"}}))
    assert load_recipe(saved, saved=True)["meta"] == {"author": "me"}
    with pytest.raises(ConfigError, match="^meta.author: unknown meta key"):
        load_recipe(saved)
