"""The papers' numbers: ``benchmarks/reference_numbers.yaml``.

Each entry holds the number as the source prints it, in percent: top-1 error or top-1 accuracy
(``top1_error`` / ``top1_accuracy``), which :class:`Reference` turns into top-1 accuracy, the
leaderboard's unit for a ``top1`` suite; or a multi-label mean average precision (``map``, with
``head_map`` / ``medium_map`` / ``tail_map`` where the source gives them) for a ``mAP`` suite.
Exactly one kind per entry; a suite looks up the entries of its own metric only.

Example:
    >>> refs = References.load("benchmarks/reference_numbers.yaml")  # doctest: +SKIP
    >>> refs.lookup("ce", "cifar10_lt", "exp", 100, ["ldam"]).top1  # doctest: +SKIP
    70.36
    >>> refs.lookup("db", "voc_mlt", None, None, metric="mAP").value  # doctest: +SKIP
    78.94

``imbalance_type`` and ``imbalance_ratio`` are null for a data set that is long-tailed as given
(VOC-MLT, COCO-MLT): such an entry matches a column whose recipe sets neither.

A source says in ``selection`` how its code picks the reported epoch (the papers' numbers are
mostly best-epoch numbers, the toolbox's are final-epoch); the leaderboard prints it under every
table that shows one of its numbers. A source whose number is a final-epoch one says
``final_epoch: true``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import ConfigError
from ..yamlio import load_yaml
from .metrics import METRICS

# The keys that give an entry's number: key -> (the metric it is, converted from an error?,
# the word printed after it).
VALUE_KEYS = {"top1_error": ("top1", True, "error"), "top1_accuracy": ("top1", False, "accuracy"),
              "map": ("mAP", False, "mAP")}
# Group numbers an entry may give besides its number: key -> (its metric, results.json key).
GROUP_KEYS = {file_key: (spec.key, key) for spec in METRICS.values()
              for key, file_key in spec.reference_groups}
ENTRY_KEYS = {"method", "source", "table", "dataset", "imbalance_type", "imbalance_ratio",
              "approximate", "note", *VALUE_KEYS, *GROUP_KEYS}


@dataclass(frozen=True)
class Reference:
    """One published number."""

    method: str
    source: str
    table: str
    dataset: str
    imbalance_type: str | None    # None with imbalance_ratio: long-tailed as given
    imbalance_ratio: float | None
    value: float             # in the metric's unit: top-1 accuracy or mAP, in percent
    printed: str             # what the source prints, e.g. "29.64 % error"
    approximate: bool
    paper: str
    url: str | None
    note: str | None
    selection: str | None = None
    metric: str = "top1"     # a key of lttoolbox.leaderboard.metrics.METRICS
    groups: tuple[tuple[str, float], ...] = ()  # e.g. (("head_mAP", 73.22), ...)
    final_epoch: bool = False  # the source reports its final epoch, as the toolbox does

    @property
    def top1(self) -> float | None:
        """Top-1 accuracy in percent (None for an entry of another metric)."""
        return self.value if self.metric == "top1" else None

    def label(self) -> str:
        """``≈77.50`` for approximate numbers, else ``70.36``."""
        return f"{'≈' if self.approximate else ''}{self.value:.2f}"


class References:
    """All reference numbers, looked up by method and setting."""

    def __init__(self, entries: list[Reference], sources: dict[str, dict]):
        self.entries = entries
        self.sources = sources

    @classmethod
    def empty(cls) -> "References":
        return cls([], {})

    @classmethod
    def load(cls, path: str | Path) -> "References":
        """Read and check the reference file.

        Raises:
            ConfigError: a missing file, an entry with an unknown key or source, an entry with
                none or more than one of ``top1_error``, ``top1_accuracy`` and ``map``, a group
                number of another metric, a percentage outside [0, 100], or only one of
                ``imbalance_type`` and ``imbalance_ratio`` null.
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"reference file not found: {path}")
        data = load_yaml(path.read_text()) or {}
        sources = data.get("sources") or {}
        entries = []
        for i, raw in enumerate(data.get("entries") or []):
            key = f"{path.name}: entries[{i}]"
            if not isinstance(raw, dict):
                raise ConfigError("must be a mapping", key=key)
            extra = sorted(set(raw) - ENTRY_KEYS)
            if extra:
                raise ConfigError(f"unknown key '{extra[0]}'", key=key)
            for needed in ("method", "source", "table", "dataset"):
                if raw.get(needed) in (None, ""):
                    raise ConfigError(f"'{needed}' is required", key=key)
            for needed in ("imbalance_type", "imbalance_ratio"):
                if needed not in raw or raw[needed] == "":
                    raise ConfigError(f"'{needed}' is required (null for a data set that is "
                                      f"long-tailed as given)", key=key)
            if (raw["imbalance_type"] is None) != (raw["imbalance_ratio"] is None):
                raise ConfigError("give both imbalance_type and imbalance_ratio, or null for "
                                  "both (a data set that is long-tailed as given)", key=key)
            if raw["source"] not in sources:
                raise ConfigError(f"unknown source '{raw['source']}'; add it under 'sources'",
                                  key=key)
            given = [k for k in VALUE_KEYS if k in raw]
            if len(given) != 1:
                raise ConfigError(f"give exactly one of {', '.join(VALUE_KEYS)}", key=key)
            metric, is_error, word = VALUE_KEYS[given[0]]
            values = {given[0]: raw[given[0]], **{k: raw[k] for k in GROUP_KEYS if k in raw}}
            for name, value in values.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) \
                        or not 0.0 <= value <= 100.0:
                    raise ConfigError(f"{name}: a percentage must lie in [0, 100], got {value!r}",
                                      key=key)
            wrong = [k for k in values if k in GROUP_KEYS and GROUP_KEYS[k][0] != metric]
            if wrong:
                raise ConfigError(f"'{wrong[0]}' is a number of {GROUP_KEYS[wrong[0]][0]}, and "
                                  f"this entry gives {given[0]}", key=key)
            value = float(raw[given[0]])
            src = sources[raw["source"]]
            ratio = raw["imbalance_ratio"]
            entries.append(Reference(
                method=str(raw["method"]), source=str(raw["source"]), table=str(raw["table"]),
                dataset=str(raw["dataset"]),
                imbalance_type=None if raw["imbalance_type"] is None
                else str(raw["imbalance_type"]),
                imbalance_ratio=None if ratio is None else float(ratio),
                value=round(100.0 - value, 4) if is_error else value,
                printed=f"{value:g} % {word}",
                approximate=bool(raw.get("approximate", False)),
                paper=" ".join(str(src.get("paper", raw["source"])).split()),
                url=src.get("url"), note=raw.get("note"),
                selection=" ".join(str(src["selection"]).split()) if src.get("selection")
                else None,
                metric=metric,
                groups=tuple((GROUP_KEYS[k][1], float(raw[k])) for k in GROUP_KEYS if k in raw),
                final_epoch=bool(src.get("final_epoch", False))))
        return cls(entries, sources)

    def matching(self, method: str, dataset: str | None, imbalance_type: str | None,
                 imbalance_ratio: float | None, metric: str = "top1") -> list[Reference]:
        """Every entry of ``metric`` for ``method`` in this setting, in file order (a setting
        without a ratio matches the entries that give none: the data set as given)."""
        if dataset is None or (imbalance_ratio is None) != (imbalance_type is None):
            return []
        return [e for e in self.entries
                if e.metric == metric and e.method == method and e.dataset == dataset
                and e.imbalance_type == imbalance_type
                and (e.imbalance_ratio == imbalance_ratio if imbalance_ratio is None
                     or e.imbalance_ratio is None
                     else abs(e.imbalance_ratio - float(imbalance_ratio)) < 1e-9)]

    def lookup(self, method: str, dataset: str | None, imbalance_type: str | None,
               imbalance_ratio: float | None, priority: Iterable[str] = (),
               metric: str = "top1") -> Reference | None:
        """The entry to show: the first source in ``priority``, then file order."""
        found = self.matching(method, dataset, imbalance_type, imbalance_ratio, metric)
        if not found:
            return None
        rank = {name: i for i, name in enumerate(priority)}
        return min(found, key=lambda e: (rank.get(e.source, len(rank)), found.index(e)))

    def baseline_for(self, ref: Reference, baseline_method: str) -> Reference | None:
        """The baseline's number from the same table of the same source (else the same source),
        in the same setting, so a direction is computed within one table, never across tables
        with different runs of the baseline."""
        same_source = [e for e in self.matching(baseline_method, ref.dataset, ref.imbalance_type,
                                                ref.imbalance_ratio, ref.metric)
                       if e.source == ref.source]
        return next((e for e in same_source if e.table == ref.table),
                    same_source[0] if same_source else None)
