"""Suites (rows x settings), protocols (recipe overlays) and the plan of runs.

A suite file lists recipes as rows and long-tail settings as columns::

    name: cifar10_lt_core
    title: "CIFAR-10-LT: core rebalancing tricks"
    baseline: ce                       # row the differences are taken against
    metric: top1                       # the primary metric (default top1; mAP: multi-label)
    references: ../reference_numbers.yaml
    reference_priority: [bot, cb, ldam, bot_repo]
    notes: ["shown under the table"]
    overlay: {}                        # applied to every run
    settings:
      - id: exp100
        label: "LT, ratio 100"
        overlay: {data: {imbalance_type: exp, imbalance_ratio: 100}}
    rows:
      - {id: ce, label: CE, recipe: ../../configs/cifar10_lt/ce.yaml}
      - {id: mixup, label: mixup, recipe: null, status: not yet available}

Paths are relative to the suite file. A row may also carry ``overlay`` (a recipe overlay),
``overrides`` (``key=value`` strings), ``settings`` (the ids of the columns it runs in; all by
default) and ``reference`` (the method name in the reference file; its id by default).

``metric`` names the suite's primary metric (:mod:`lttoolbox.leaderboard.metrics`): ``top1``
(the default) or ``mAP`` for a suite of multi-label runs. A run whose data set is of the other
kind (a single-label set in a ``mAP`` suite) is refused as an invalid recipe before it runs.

The recipe of one run is composed in this order, all before the recipe is resolved so that the
phases of a multi-phase recipe inherit every change: the recipe file, the suite's overlay, the
setting's overlay, the row's overlay and overrides, the protocol's overlay, the command line's
``--set`` overrides, then ``train.seed`` and ``meta.protocol``. Finally the protocol's epoch
count rescales every epoch-valued key (:func:`lttoolbox.recipe.scale_epochs`).

A protocol with ``epochs`` and ``per`` scales every recipe's *own* budget by ``epochs / per``
(``quick``: 30 per 200, so a 200-epoch recipe trains 30 epochs and a 400-epoch one 60): rows
keep the budget ratio their papers compare. A protocol with ``epochs`` alone gives every recipe's
first phase that many epochs (``smoke``: 1). See :func:`scaled_length` for the rounding.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..recipe import load_recipe, phase_recipes, recipe_hash, resolve, scale_epochs
from ..yamlio import load_yaml
from .metrics import METRICS, MetricSpec, metric_spec

# Built-in protocols; a suite may replace one by name under ``protocols:``.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "paper": {
        "epochs": None,
        "per": None,
        "overlay": {},
        "description": "the published protocol, as written in each recipe (CIFAR-LT: ResNet-32, "
                       "200 epochs, batch 128, the papers' schedules)",
    },
    "quick": {
        "epochs": 30,
        "per": 200,
        "overlay": {},
        "description": "the published protocol with every recipe's own budget scaled by 30/200: "
                       "a 200-epoch recipe trains 30 epochs, a 400-epoch one (input mixup, Remix) "
                       "60, and every phase of a multi-phase recipe is scaled by the same factor "
                       "(cRT's 30 epochs after a 200-epoch CE phase: 4); learning-rate milestones "
                       "and every epoch-based switch (DRW, DRS, RSG, CMO, ...) scaled in "
                       "proportion (a switch at 160 of 200 epochs lands at 24 of 30), rounded to "
                       "the nearest whole epoch (a half to the even one), every phase that trains "
                       "at least 1 epoch; the warm-up kept as a per-step warm-up over the same "
                       "fraction of all steps (5 of 200 epochs: 0.75 of 30)",
        "caveat": "The quick regime is under-trained: tail classes learn little in 30 epochs, so "
                  "its numbers sit well below the papers' and are comparable with them in "
                  "direction only (does a trick help or hurt against the baseline?), never in "
                  "value.",
    },
    "smoke": {
        "epochs": 1,
        "per": None,
        "overlay": {"data": {"max_per_class": 200, "test_max_per_class": 20}},
        "description": "one short epoch (every recipe's first phase; later phases in "
                       "proportion, at least 1 epoch each) on a small slice of the data (at most "
                       "200 training and 20 test images per class), for tests only",
        "caveat": "Smoke numbers only show that the pipeline runs; they mean nothing.",
    },
}

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ROW_KEYS = {"id", "label", "recipe", "status", "overlay", "overrides", "settings", "reference",
            "note"}
SETTING_KEYS = {"id", "label", "overlay", "rows"}
PROTOCOL_KEYS = {"epochs", "per", "overlay", "description", "caveat"}
SUITE_KEYS = {"name", "title", "baseline", "references", "reference_priority", "notes", "overlay",
              "settings", "rows", "protocols", "description", "metric"}


@dataclass
class Setting:
    """One column: a long-tail setting given as a recipe overlay (``rows``: the only rows it
    runs, for a setting that only some papers report)."""

    id: str
    label: str
    overlay: dict
    rows: list[str] | None = None


@dataclass
class Row:
    """One row: a recipe (or ``None`` with a status saying why not)."""

    id: str
    label: str
    recipe: Path | None
    status: str | None = None
    overlay: dict = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    settings: list[str] | None = None
    reference: str | None = None
    note: str | None = None

    def runs_in(self, setting_id: str) -> bool:
        return self.settings is None or setting_id in self.settings

    @property
    def available(self) -> bool:
        return self.recipe is not None and self.recipe.is_file()

    @property
    def unavailable_reason(self) -> str | None:
        if self.recipe is None:
            return self.status or "not yet available"
        if not self.recipe.is_file():
            return f"recipe not found: {self.recipe}"
        return None


@dataclass
class Suite:
    """A parsed suite file."""

    path: Path
    name: str
    title: str
    baseline: str | None
    references: Path | None
    reference_priority: list[str]
    notes: list[str]
    overlay: dict
    settings: list[Setting]
    rows: list[Row]
    protocols: dict[str, dict]
    metric: MetricSpec = field(default_factory=metric_spec)

    def row(self, row_id: str) -> Row:
        return next(r for r in self.rows if r.id == row_id)

    def setting(self, setting_id: str) -> Setting:
        return next(s for s in self.settings if s.id == setting_id)

    def protocol(self, name: str) -> dict:
        if name not in self.protocols:
            raise ConfigError(f"unknown protocol '{name}'; this suite knows "
                              f"{', '.join(sorted(self.protocols))}", key="--protocol")
        return self.protocols[name]


def _check_mapping(value: Any, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"must be a mapping, got {value!r}", key=key)
    return value


def _check_id(value: Any, key: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise ConfigError(f"must be a name of letters, digits, '_', '-' or '.', got {value!r}",
                          key=key)
    return value


def _unknown_keys(entry: dict, known: set[str], key: str) -> None:
    extra = sorted(set(entry) - known)
    if extra:
        raise ConfigError(f"unknown key '{extra[0]}'; known: {', '.join(sorted(known))}",
                          key=f"{key}.{extra[0]}")


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file.

    Raises:
        ConfigError: a missing file, bad YAML, an unknown key, a duplicate id, a row that names an
            unknown setting, or a baseline that is not a row.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"suite file not found: {path}")
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a suite must be a mapping")
    _unknown_keys(data, SUITE_KEYS, "suite")
    here = path.parent
    settings = []
    for i, raw in enumerate(data.get("settings") or []):
        key = f"settings[{i}]"
        raw = _check_mapping(raw, key)
        _unknown_keys(raw, SETTING_KEYS, key)
        sid = _check_id(raw.get("id"), f"{key}.id")
        only = raw.get("rows")
        if only is not None and (not isinstance(only, list)
                                 or not all(isinstance(r, str) for r in only)):
            raise ConfigError(f"must be a list of row ids, got {only!r}", key=f"{key}.rows")
        settings.append(Setting(sid, str(raw.get("label", sid)),
                                _check_mapping(raw.get("overlay"), f"{key}.overlay"), only))
    if not settings:
        raise ConfigError("a suite needs at least one setting (column)", key="settings")
    setting_ids = [s.id for s in settings]
    if len(set(setting_ids)) != len(setting_ids):
        raise ConfigError(f"setting ids must be unique, got {setting_ids}", key="settings")
    rows = []
    for i, raw in enumerate(data.get("rows") or []):
        key = f"rows[{i}]"
        raw = _check_mapping(raw, key)
        _unknown_keys(raw, ROW_KEYS, key)
        rid = _check_id(raw.get("id"), f"{key}.id")
        recipe = raw.get("recipe")
        if recipe is not None and not isinstance(recipe, str):
            raise ConfigError(f"must be a path or null, got {recipe!r}", key=f"{key}.recipe")
        overrides = raw.get("overrides") or []
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ConfigError("must be a list of key=value strings", key=f"{key}.overrides")
        only = raw.get("settings")
        if only is not None:
            if not isinstance(only, list) or not all(s in setting_ids for s in only):
                raise ConfigError(f"must be a list of setting ids ({', '.join(setting_ids)}), "
                                  f"got {only!r}", key=f"{key}.settings")
        rows.append(Row(rid, str(raw.get("label", rid)),
                        (here / recipe) if recipe is not None else None,
                        raw.get("status"), _check_mapping(raw.get("overlay"), f"{key}.overlay"),
                        list(overrides), only, raw.get("reference"), raw.get("note")))
    if not rows:
        raise ConfigError("a suite needs at least one row", key="rows")
    row_ids = [r.id for r in rows]
    if len(set(row_ids)) != len(row_ids):
        dup = next(r for r in row_ids if row_ids.count(r) > 1)
        raise ConfigError(f"row id '{dup}' is used twice", key="rows")
    for i, setting in enumerate(settings):
        unknown = [r for r in setting.rows or [] if r not in row_ids]
        if unknown:
            raise ConfigError(f"'{unknown[0]}' is not a row id", key=f"settings[{i}].rows")
    for row in rows:  # fold the settings' row lists into each row's own list of settings
        allowed = [s.id for s in settings if (row.settings is None or s.id in row.settings)
                   and (s.rows is None or row.id in s.rows)]
        row.settings = None if allowed == setting_ids else allowed
    baseline = data.get("baseline")
    if baseline is not None and baseline not in row_ids:
        raise ConfigError(f"'{baseline}' is not a row id", key="baseline")
    protocols = copy.deepcopy(PROTOCOLS)
    for name, proto in _check_mapping(data.get("protocols"), "protocols").items():
        proto = _check_mapping(proto, f"protocols.{name}")
        _unknown_keys(proto, PROTOCOL_KEYS, f"protocols.{name}")
        for key in ("epochs", "per"):
            value = proto.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ConfigError(f"must be a positive integer or null, got {value!r}",
                                  key=f"protocols.{name}.{key}")
        epochs, per = proto.get("epochs"), proto.get("per")
        if per is not None and epochs is None:
            raise ConfigError("needs 'epochs' (the length a recipe of 'per' epochs gets)",
                              key=f"protocols.{name}.per")
        protocols[name] = {"epochs": epochs, "per": per,
                           "overlay": _check_mapping(proto.get("overlay"),
                                                     f"protocols.{name}.overlay"),
                           "description": proto.get("description", f"suite protocol '{name}'"),
                           **({"caveat": proto["caveat"]} if proto.get("caveat") else {})}
    metric = metric_spec(data.get("metric", "top1"))
    references = data.get("references")  # none named: no paper numbers, no file to look for
    notes = data.get("notes") or []
    if not isinstance(notes, list):
        raise ConfigError("must be a list of strings", key="notes")
    return Suite(path=path, name=str(data.get("name", path.stem)),
                 title=str(data.get("title", data.get("name", path.stem))), baseline=baseline,
                 references=(here / references) if references else None,
                 reference_priority=list(data.get("reference_priority") or []),
                 notes=[str(n).strip() for n in notes],
                 overlay=_check_mapping(data.get("overlay"), "overlay"), settings=settings,
                 rows=rows, protocols=protocols, metric=metric)


def flatten_overlay(overlay: dict, prefix: str = "") -> list[str]:
    """A recipe overlay as ``key=value`` overrides, so it is applied before resolution.

    Values are written as JSON, which YAML reads back unchanged; lists (and empty mappings) are
    replaced as a whole, mappings are merged key by key: the semantics of ``deep_merge``.

    Example:
        >>> flatten_overlay({"data": {"imbalance_ratio": 50}, "schedule": {"milestones": [3, 4]}})
        ['data.imbalance_ratio=50', 'schedule.milestones=[3, 4]']
    """
    out = []
    for key, value in overlay.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += flatten_overlay(value, path + ".")
        else:
            out.append(f"{path}={json.dumps(value)}")
    return out


@dataclass
class Run:
    """One planned training run: a (row, setting, seed) cell and its resolved recipe."""

    row: str
    setting: str
    seed: int
    recipe: dict
    hash: str
    dir: Path
    warnings: list[str] = field(default_factory=list)
    written_epochs: list[int] = field(default_factory=list)  # per phase, before the protocol

    @property
    def key(self) -> str:
        return f"{self.setting}/{self.row}/seed{self.seed}"

    @property
    def epochs(self) -> list[int]:
        """The epochs of each phase as this run trains them."""
        return phase_epochs(self.recipe)


def phase_epochs(recipe: dict) -> list[int]:
    """The epochs of each phase of a resolved recipe; one entry for a single phase."""
    return [int(phase["train"]["epochs"]) for phase in phase_recipes(recipe)]


def scaled_length(proto: dict, recipe: dict) -> int:
    """The ``train.epochs`` a protocol gives a resolved recipe (its first or only phase).

    With ``per``, the recipe's own length ``E`` is scaled by ``epochs / per`` and rounded to the
    nearest whole epoch (Python's ``round``: a half goes to the even neighbour, as
    :func:`~lttoolbox.recipe.scale_epochs` rounds every switch and later phase), at least 1.
    ``scale_epochs`` then scales every later phase and switch by the ratio of the new length to
    ``E``, which is exactly ``epochs / per`` whenever ``E * epochs / per`` is whole (every shipped
    CIFAR recipe: 200 → 30, 400 → 60); otherwise the planner warns. Without ``per``, every
    recipe's first phase gets ``epochs``.

    Example:
        >>> quick = {"epochs": 30, "per": 200}
        >>> [scaled_length(quick, {"train": {"epochs": e}}) for e in (200, 400, 10, 1)]
        [30, 60, 2, 1]
        >>> scaled_length({"epochs": 1, "per": None}, {"train": {"epochs": 400}})
        1
    """
    if proto.get("per") is None:
        return int(proto["epochs"])
    return max(1, int(round(recipe["train"]["epochs"] * proto["epochs"] / proto["per"])))


def unscaled_epoch_keys(recipe: dict, path: str = "") -> list[str]:
    """Integer keys that look epoch-valued but that ``scale_epochs`` would not rescale."""
    found = []
    if isinstance(recipe, dict):
        for key, value in recipe.items():
            where = f"{path}.{key}" if path else str(key)
            if where == "meta" or where.endswith(".meta"):  # free-form notes, never trained on
                continue
            if isinstance(value, (dict, list)):
                found += unscaled_epoch_keys(value, where)
            elif ("epoch" in str(key).lower() and isinstance(value, int)
                  and not isinstance(value, bool) and where != "train.epochs"
                  and not where.endswith(".train.epochs")
                  and not (str(key).endswith("_epoch") or str(key).endswith("_epochs"))):
                found.append(where)
    elif isinstance(recipe, list):
        for i, value in enumerate(recipe):
            found += unscaled_epoch_keys(value, f"{path}[{i}]")
    return found


def compose_recipe(suite: Suite, row: Row, setting: Setting, protocol: str, seed: int,
                   extra_overrides: list[str] = ()) -> dict:
    """The fully resolved recipe of one run (see the module docstring for the order).

    Raises:
        ConfigError: the recipe, an overlay or an override is invalid.
    """
    return apply_protocol(suite.protocol(protocol),
                          written_recipe(suite, row, setting, protocol, seed, extra_overrides))


def apply_protocol(proto: dict, written: dict) -> dict:
    """The protocol's epochs applied to a recipe from :func:`written_recipe`, canonical."""
    recipe = written
    if proto["epochs"] is not None:
        recipe = resolve(scale_epochs(written, scaled_length(proto, written)))
    return canonical(recipe)


def written_recipe(suite: Suite, row: Row, setting: Setting, protocol: str, seed: int,
                   extra_overrides: list[str] = ()) -> dict:
    """The run's recipe before the protocol rescales it: the row's own budget (what the paper
    protocol trains), with every overlay and override applied."""
    proto = suite.protocol(protocol)
    overrides = (flatten_overlay(suite.overlay) + flatten_overlay(setting.overlay)
                 + flatten_overlay(row.overlay) + list(row.overrides)
                 + flatten_overlay(proto["overlay"]) + list(extra_overrides)
                 + [f"train.seed={int(seed)}", f"meta.protocol={json.dumps(protocol)}"])
    return load_recipe(row.recipe, overrides)


def canonical(recipe: dict) -> dict:
    """The recipe as ``lttrain`` will see it after a YAML round trip (so the hashes agree)."""
    return resolve(load_yaml(yaml.safe_dump(recipe, sort_keys=False)))


def run_dir(out: Path, setting: str, row: str, seed: int) -> Path:
    return out / "runs" / setting / row / f"seed{seed}"


def plan_run(suite: Suite, row: Row, setting: Setting, protocol: str, seed: int, out: Path,
             extra_overrides: list[str] = ()) -> Run:
    """Compose one run's recipe and where it lives."""
    proto = suite.protocol(protocol)
    written = written_recipe(suite, row, setting, protocol, seed, extra_overrides)
    recipe = apply_protocol(proto, written)
    check_data_kind(suite.metric, recipe)
    warnings = [f"{key} looks epoch-valued but is not rescaled by the protocol (name it *_epoch "
                f"or *_epochs)" for key in unscaled_epoch_keys(recipe)]
    if proto["epochs"] is not None and proto.get("per") is not None:
        length, own = scaled_length(proto, written), written["train"]["epochs"]
        if length * proto["per"] != own * proto["epochs"]:
            warnings.append(f"train.epochs={own} scales to {own * proto['epochs'] / proto['per']:g}"
                            f" epochs, rounded to {length}: its phases and switches are scaled "
                            f"by {length}/{own} instead of {proto['epochs']}/{proto['per']}")
    return Run(row.id, setting.id, int(seed), recipe, recipe_hash(recipe),
               run_dir(out, setting.id, row.id, seed), warnings, phase_epochs(written))


def check_data_kind(spec: MetricSpec, recipe: dict) -> None:
    """Refuse a run whose data set does not report the suite's metric (a single-label set
    reports no mAP, a multi-label one no top-1), before it runs: its row would stay empty.

    Raises:
        ConfigError: naming the suite's ``metric``.
    """
    from ..registry import DATASETS

    name = (recipe.get("data") or {}).get("name")
    if not isinstance(name, str) or name not in DATASETS:
        return  # building the data set names an unknown one
    multilabel = bool(getattr(DATASETS.get(name), "multilabel", False))
    if multilabel != spec.multilabel:
        kind = "multi-label" if multilabel else "single-label"
        fits = sorted(k for k, s in METRICS.items() if s.multilabel == multilabel)
        raise ConfigError(f"data set '{name}' is {kind} and reports no {spec.key}; a suite of "
                          f"{kind} runs declares metric: {' or '.join(fits)}", key="metric")


class Planner:
    """Plans runs once per (row, setting, seed) and remembers recipe errors.

    Args:
        suite: The suite.
        protocol: Protocol name.
        out: Leaderboard output folder.
        extra_overrides: ``--set`` overrides applied to every run.
    """

    def __init__(self, suite: Suite, protocol: str, out: Path, extra_overrides: list[str] = ()):
        suite.protocol(protocol)  # fail early on an unknown protocol
        self.suite = suite
        self.protocol = protocol
        self.out = Path(out)
        self.extra_overrides = list(extra_overrides)
        self._cache: dict[tuple[str, str, int], Run | ConfigError] = {}

    def plan(self, row_id: str, setting_id: str, seed: int) -> Run | ConfigError:
        """The planned run, or the ``ConfigError`` its recipe raised."""
        key = (row_id, setting_id, int(seed))
        if key not in self._cache:
            try:
                self._cache[key] = plan_run(self.suite, self.suite.row(row_id),
                                            self.suite.setting(setting_id), self.protocol, seed,
                                            self.out, self.extra_overrides)
            except ConfigError as err:
                self._cache[key] = err
        return self._cache[key]

    def seeds_on_disk(self, row_id: str, setting_id: str) -> list[int]:
        """Seeds with a run directory for this cell (stale copies excluded)."""
        cell = self.out / "runs" / setting_id / row_id
        if not cell.is_dir():
            return []
        seeds = []
        for child in cell.iterdir():
            match = re.fullmatch(r"seed(\d+)", child.name)
            if match and child.is_dir():
                seeds.append(int(match.group(1)))
        return sorted(seeds)
