"""Run directories as the code before the rename of stages to phases and points wrote them.

Until commit 257e3a6 a training phase was a *stage* and a component's model point was its
*stage* too. :func:`to_old_format` rewrites a run directory written today into that spelling,
file by file, so tests can check that such a directory stays readable. It is written apart from
``lttoolbox.upgrade`` on purpose (a test of the upgrade must not use the upgrade's own inverse),
from what 257e3a6 writes:

* ``recipe.yaml``: ``stages:`` (each resolved stage names itself in ``meta.stage``), and
  ``stage:`` in a component (``augment`` entries, ``generator``);
* ``results.json``: ``stages`` (name, epochs, final loss per stage), ``stage`` in every row of
  ``history``;
* ``log.jsonl``: ``stage`` in every row; ``metrics.csv``: a ``stage`` column first;
* ``checkpoint.pt``: ``stage`` (the index) and ``stage_done``, ``stage`` in every history row;
* ``eval-<name>.json``: ``stage`` (the name).

A run of the old code and a run of today's code of the same recipe (the two-phase recipe of
tests/test_upgrade.py), the second passed through :func:`to_old_format`, were compared file by
file when this was written: the same ``recipe.yaml`` text, the same keys in the same order in
``results.json``, ``eval-crt.json``, ``log.jsonl``, ``checkpoint.pt`` and its history, the same
``metrics.csv`` header, and the same values and weights apart from timings and the commit.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml


def _rename(mapping: dict, old: str, new: str) -> dict:
    return {(new if key == old else key): value for key, value in mapping.items()}


def _old_component(value):
    if isinstance(value, list):
        return [_old_component(v) for v in value]
    if isinstance(value, dict):
        return {("stage" if key == "point" else key): _old_component(v)
                for key, v in value.items()}
    return value


def old_recipe(recipe: dict) -> dict:
    """A resolved recipe spelled as before: ``stages``, ``meta.stage``, a component's ``stage``."""
    out = _rename(recipe, "phases", "stages")
    out["meta"] = _rename(out.get("meta") or {}, "phase", "stage")
    for section in ("augment", "generator"):
        if out.get(section) is not None:
            out[section] = _old_component(out[section])
    if out.get("stages"):
        out["stages"] = [old_recipe(stage) for stage in out["stages"]]
    return out


def old_row(row: dict) -> dict:
    return _rename(row, "phase", "stage")


def old_record(record: dict) -> dict:
    """results.json, a checkpoint or an eval record as before."""
    out = _rename(_rename(_rename(record, "phase", "stage"), "phase_done", "stage_done"),
                  "phases", "stages")
    if isinstance(out.get("history"), list):
        out["history"] = [old_row(r) for r in out["history"]]
    return out


def to_old_format(run: Path) -> None:
    """Rewrite the run directory ``run`` in place as the code before the rename wrote it."""
    run = Path(run)
    recipe = run / "recipe.yaml"
    if recipe.is_file():
        recipe.write_text(yaml.safe_dump(old_recipe(yaml.safe_load(recipe.read_text())),
                                         sort_keys=False))
    for path in [run / "results.json", *run.glob("eval-*.json")]:
        if path.is_file():
            path.write_text(json.dumps(old_record(json.loads(path.read_text())), indent=2) + "\n")
    log = run / "log.jsonl"
    if log.is_file():
        log.write_text("".join(json.dumps(old_row(json.loads(line))) + "\n"
                               for line in log.read_text().splitlines() if line.strip()))
    csv = run / "metrics.csv"
    if csv.is_file():
        header, _, rest = csv.read_text().partition("\n")
        assert header.startswith("phase,")
        csv.write_text("stage," + header[len("phase,"):] + "\n" + rest)
    checkpoint = run / "checkpoint.pt"
    if checkpoint.is_file():
        torch.save(old_record(torch.load(checkpoint, weights_only=True)), checkpoint)
