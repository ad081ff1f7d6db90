"""Recipe hashes stay what they were when recipes said ``stages:`` and ``stage:``.

Finished runs on disk, leaderboard packs and interrupted runs are matched to their recipe by
``recipe_hash``, so renaming the training *stages* to *phases* and a component's model *stage*
to its *point* must not change any hash: ``recipe_hash`` hashes the recipe in its canonical
(earlier) spelling.

``recipe_hashes.json`` holds the hashes of every recipe under ``configs/`` (resolved as written,
and rescaled as ``lttrain --epochs 3`` and the leaderboard's quick protocol rescale it) and of
its first phase (what ``lttrain --from-run`` matches donors by), computed by the code at commit
257e3a6, the last one before the rename. To record it again at that commit (this file only uses
names that exist there):

    git archive 257e3a6 | tar -x -C /tmp/old
    cd /tmp/old && PYTHONPATH=$PWD python /path/to/tests/test_recipe_hashes.py --record OUT.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parent / "recipe_hashes.json"


VARIANTS = ("recipe", "epochs3", "quick30", "first_phase")

# The imbalance ratio 50 was once 124 two-line overlay files, ``configs/<data>/ratio50/<x>.yaml``
# (``_base_: ../<x>.yaml`` plus ``data: {imbalance_ratio: 50}``); it is now the override
# ``data.imbalance_ratio=50`` of ``configs/<data>/<x>.yaml``, which must find the runs those
# files trained: the fixture keeps their hashes and the override is checked against them.
RATIO50 = "ratio50"


def hashes(recipe: dict) -> list[str]:
    """The hash of each of VARIANTS for a loaded recipe."""
    from lttoolbox.engine.reuse import first_phase_hash
    from lttoolbox.recipe import recipe_hash, resolve, scale_epochs

    return [recipe_hash(recipe), recipe_hash(resolve(scale_epochs(recipe, 3))),
            recipe_hash(resolve(scale_epochs(recipe, 30))), first_phase_hash(recipe)]


def hash_table(root: Path) -> dict[str, list[str]]:
    """``{config path: [hash of each of VARIANTS]}`` for every recipe under ``root/configs``."""
    from lttoolbox.recipe import load_recipe

    return {path.relative_to(root).as_posix(): hashes(load_recipe(path))
            for path in sorted((root / "configs").rglob("*.yaml"))}


def ratio50_table(root: Path, names) -> dict[str, list[str]]:
    """The hashes of the former ratio-50 overlay files ``names``, as the override
    ``data.imbalance_ratio=50`` of the recipe each one extended gives them."""
    from lttoolbox.recipe import load_recipe

    table = {}
    for name in names:
        path = Path(name)
        if path.parent.name == RATIO50:
            base = root / path.parent.parent / path.name
            table[name] = hashes(load_recipe(base, ["data.imbalance_ratio=50"]))
    return table


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def today(recorded) -> dict:
    return {**hash_table(ROOT), **ratio50_table(ROOT, recorded["hashes"])}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_recipe_keeps_its_hash(recorded, today, variant):
    assert recorded["commit"] == "257e3a6" and recorded["variants"] == list(VARIANTS)
    old, new = recorded["hashes"], today
    # A recipe added since has no earlier hash to keep; one recorded must still exist.
    assert not sorted(set(old) - set(new)), "a recorded recipe file was removed"
    assert sum(1 for name in old if Path(name).parent.name == RATIO50) == 124
    column = VARIANTS.index(variant)
    changed = [name for name in old if old[name][column] != new[name][column]]
    assert not changed, f"{len(changed)} recipes hash differently, e.g. {changed[:3]}"


def test_the_fixture_covers_both_renamed_keys(recorded):
    """The table must include recipes that wrote ``stages:`` and ``stage:`` (else it proves
    nothing about the rename)."""
    from lttoolbox.recipe import read_recipe

    names = [name for name in recorded["hashes"] if Path(name).parent.name != RATIO50]
    raw = [read_recipe(ROOT / n) for n in names]
    assert sum(1 for r in raw if "phases" in r) >= 10
    assert any((r.get("generator") or {}).get("point") for r in raw)
    assert any(isinstance(a, dict) and "point" in a for r in raw for a in r.get("augment") or [])


def test_the_canonical_spelling_is_the_one_hashed():
    """A hand-written check of the rule: the new spelling hashes as the old one would."""
    import hashlib

    from lttoolbox.recipe import load_recipe, recipe_hash

    recipe = load_recipe(ROOT / "configs/cifar10_lt/ce_crt.yaml",
                         ["generator={name: rsg, point: layer2}"])
    old = json.loads(json.dumps(recipe))
    old["stages"] = old.pop("phases")
    for r in (old, *old["stages"]):
        r.pop("meta")
        r["generator"] = {"name": "rsg", "stage": "layer2"}
        r["train"] = {k: v for k, v in r["train"].items()
                      if k not in ("loggers", "mlflow", "wandb", "workers", "sync_bn", "compile",
                                   "threads")
                      and (k != "freeze_bn_stats" or r["train"]["freeze"])
                      # keys added later count only where set
                      and not (k in ("ema", "clip_grad_norm") and v is None)
                      and not (k == "accumulate" and v == 1)}
        r["schedule"] = {k: v for k, v in r["schedule"].items()
                         if not (k == "warmup_start" and v == 0.0)}
    blob = json.dumps(old, sort_keys=True, default=str).encode()
    assert recipe_hash(recipe) == hashlib.sha1(blob).hexdigest()[:12]


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--record":
        sys.exit("usage: python tests/test_recipe_hashes.py --record OUT.json")
    here = Path.cwd()
    table = hash_table(here)
    lines = ",\n".join(f"  {json.dumps(name)}: {json.dumps(hashes)}"
                       for name, hashes in sorted(table.items()))
    Path(sys.argv[2]).write_text(f'{{"commit": "257e3a6", "variants": {json.dumps(VARIANTS)},\n'
                                 f' "hashes": {{\n{lines}\n}}}}\n')
    print(f"{len(table)} recipes recorded in {sys.argv[2]}")
