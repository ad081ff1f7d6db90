"""Recipe provenance: the ``meta`` schema, and each shipped recipe's published number.

A CIFAR-LT recipe's ``meta.reference`` is the published number the leaderboard shows for it at
the recipe's own setting (exponential profile, ratio 100): the entry of
``benchmarks/reference_numbers.yaml`` that the suite's ``reference_priority`` picks, for the
suite row that runs the recipe (its ``reference`` or ``id``; a recipe no row runs is looked up by
its file name). A recipe with no such number has no ``meta.reference``. The recipes and rows are
read from ``configs/`` and ``benchmarks/suites/``, so a new recipe is checked without an edit here.

Every recipe whose loss, sampler, augmentations, generator or head is not the plain default in
some phase (read from the loaded recipe) names its paper in ``meta.paper``; its ``meta.code``, if
any, is a repository at a commit that ``benchmarks/reference_numbers.yaml`` or ``docs/`` cite.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import OUTDATED_NUMBERS, ROOT
from lttoolbox.errors import ConfigError
from lttoolbox.recipe import DEFAULTS, load_recipe, phase_recipes, read_recipe, recipe_hash
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


def _at_defaults(registry, config: dict, name: str) -> bool:
    """``config`` is the entry ``name`` with every parameter at its constructor's default."""
    from lttoolbox.registry import recipe_parameters

    defaults = {p.name: p.default for p in recipe_parameters(registry, name)}
    return config["name"] == name and all(
        key in defaults and value == defaults[key] for key, value in config.items()
        if key != "name")


def tricks(phase: dict) -> list[str]:
    """The sections of a resolved phase that are not the plain default: CE, the instance
    sampler, no augmentation, no generator, the model's own default head (a linear one)."""
    from lttoolbox.models import head_config
    from lttoolbox.registry import LOSSES, MODELS, SAMPLERS, recipe_parameters

    head_default = {p.name: p.default for p in recipe_parameters(MODELS, phase["model"]["name"])
                    }["head"]
    head = phase["model"].get("head", head_default)
    found = {
        "loss": not _at_defaults(LOSSES, phase["loss"], DEFAULTS["loss"]["name"]),
        "sampler": not _at_defaults(SAMPLERS, phase["sampler"], DEFAULTS["sampler"]["name"]),
        "augment": bool(phase["augment"]),
        "generator": phase["generator"] is not None,
        "head": head_config(head)["name"] != head_config(head_default)["name"],
    }
    return [section for section, differs in found.items() if differs]


GITHUB = r"(?:https://)?github\.com/([\w.-]+/[\w.-]+)/(?:blob|tree|commit)/([0-9a-f]{7,40})"
HASH_OF = r"\b([0-9a-f]{7,40}) of (?:github\.com/)?([\w-]+/[\w.-]+?)[.,;:)`]*(?:\s|$)"
AT_HASH = r"\b([\w-]+/[\w.-]+?)`? at ([0-9a-f]{7,40})\b"


@pytest.fixture(scope="module")
def cited_code():
    """``(owner/repo, commit)`` of every repository that the reference numbers' ``sources``
    or ``docs/`` cite at a commit: as a URL, as 'COMMIT of OWNER/REPO' or 'OWNER/REPO at
    COMMIT'."""
    sources = yaml.safe_load((ROOT / "benchmarks/reference_numbers.yaml").read_text())["sources"]
    texts = [yaml.safe_dump(sources, width=10 ** 6)]
    texts += [p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))]
    text = " ".join(" ".join(t.split()) for t in texts)  # a citation may wrap a line
    cited = {(repo.lower(), commit) for repo, commit in re.findall(GITHUB, text)}
    cited |= {(repo.lower(), commit) for commit, repo in re.findall(HASH_OF, text)}
    cited |= {(repo.lower(), commit) for repo, commit in re.findall(AT_HASH, text)}
    return cited


def is_cited(url: str, cited: set) -> bool:
    """The URL's repository is cited at the same commit (one hash a prefix of the other)."""
    found = re.match(GITHUB, url)
    if not found:
        return False
    repo, commit = found.group(1).lower(), found.group(2)
    return any(repo == r and (commit.startswith(c) or c.startswith(commit)) for r, c in cited)


@pytest.mark.parametrize("path", EVERY_RECIPE, ids=id_of)
def test_a_recipe_with_a_trick_names_its_paper_and_code_the_repository_cites(path, cited_code):
    recipe = load_recipe(path)
    for phase in phase_recipes(recipe):
        meta = phase["meta"]  # the recipe's meta, with what the phase overlay adds
        changed = tricks(phase)
        if changed:
            assert meta.get("paper"), (f"{path}: phase {meta['phase']!r} changes "
                                       f"{', '.join(changed)} but names no meta.paper")
        if "code" in meta:
            check_meta({"code": meta["code"]})  # an https URL pinned by a commit
            assert is_cited(meta["code"], cited_code), (
                f"{path}: meta.code {meta['code']} is not a repository and commit that "
                f"benchmarks/reference_numbers.yaml sources or docs/ cite")


def test_the_plain_default_and_the_citation_check_can_both_fail(cited_code):
    """The two predicates the test above relies on, on recipes and URLs made here."""
    plain = ROOT / "configs/cifar10_lt/ce.yaml"
    assert [tricks(p) for p in phase_recipes(load_recipe(plain))] == [[]]
    assert tricks(phase_recipes(load_recipe(plain, ["loss.label_smoothing=0.0",
                                                    "model.head={name: linear}"]))[0]) == []
    for override, section in [("loss.weights={name: effective_number}", "loss"),
                              ("loss.name=focal", "loss"),
                              ("sampler.name=class_balanced", "sampler"),
                              ("augment=[{name: mixup}]", "augment"),
                              ("generator={name: ftl, point: layer2}", "generator"),
                              ("model.head=cosine", "head")]:
        assert tricks(load_recipe(plain, [override])) == [section], override
    two_phases = load_recipe(ROOT / "configs/cifar10_lt/ce_crt.yaml")
    assert [tricks(p) for p in phase_recipes(two_phases)] == [[], ["sampler"]]

    ldam = "https://github.com/kaidic/LDAM-DRW/blob/2536330f2afdaa65618323cb5a5850efccce762a/x.py"
    assert is_cited(ldam, cited_code)
    assert is_cited("https://github.com/kaidic/LDAM-DRW/tree/2536330", cited_code)
    assert not is_cited(ldam.replace("2536330f", "1536330f"), cited_code)  # another commit
    assert not is_cited(ldam.replace("kaidic", "someone"), cited_code)     # another repository
