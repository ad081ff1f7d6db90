"""The papers' numbers: ``benchmarks/reference_numbers.yaml``.

Each entry holds the number as the source prints it (top-1 error or top-1 accuracy, in percent);
:class:`Reference` turns it into top-1 accuracy, the leaderboard's unit.

Example:
    >>> refs = References.load("benchmarks/reference_numbers.yaml")  # doctest: +SKIP
    >>> refs.lookup("ce", "cifar10_lt", "exp", 100, ["ldam"]).top1  # doctest: +SKIP
    70.36

A source says in ``selection`` how its code picks the reported epoch (the papers' numbers are
best-epoch numbers, the toolbox's are final-epoch); the leaderboard prints it under every table
that shows one of its numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import ConfigError
from ..yamlio import load_yaml

ENTRY_KEYS = {"method", "source", "table", "dataset", "imbalance_type", "imbalance_ratio",
              "top1_error", "top1_accuracy", "approximate", "note"}


@dataclass(frozen=True)
class Reference:
    """One published number."""

    method: str
    source: str
    table: str
    dataset: str
    imbalance_type: str
    imbalance_ratio: float
    top1: float              # accuracy in percent
    printed: str             # what the source prints, e.g. "29.64 % error"
    approximate: bool
    paper: str
    url: str | None
    note: str | None
    selection: str | None = None

    def label(self) -> str:
        """``≈77.50`` for approximate numbers, else ``70.36``."""
        return f"{'≈' if self.approximate else ''}{self.top1:.2f}"


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
            ConfigError: a missing file, an entry with an unknown key or source, or an entry with
                both or neither of ``top1_error`` and ``top1_accuracy``.
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
            for needed in ("method", "source", "table", "dataset", "imbalance_type",
                           "imbalance_ratio"):
                if raw.get(needed) in (None, ""):
                    raise ConfigError(f"'{needed}' is required", key=key)
            if raw["source"] not in sources:
                raise ConfigError(f"unknown source '{raw['source']}'; add it under 'sources'",
                                  key=key)
            has_err, has_acc = "top1_error" in raw, "top1_accuracy" in raw
            if has_err == has_acc:
                raise ConfigError("give exactly one of top1_error and top1_accuracy", key=key)
            value = float(raw["top1_error"] if has_err else raw["top1_accuracy"])
            if not 0.0 <= value <= 100.0:
                raise ConfigError(f"a percentage must lie in [0, 100], got {value}", key=key)
            src = sources[raw["source"]]
            entries.append(Reference(
                method=str(raw["method"]), source=str(raw["source"]), table=str(raw["table"]),
                dataset=str(raw["dataset"]), imbalance_type=str(raw["imbalance_type"]),
                imbalance_ratio=float(raw["imbalance_ratio"]),
                top1=round(100.0 - value, 4) if has_err else value,
                printed=f"{value:g} % {'error' if has_err else 'accuracy'}",
                approximate=bool(raw.get("approximate", False)),
                paper=" ".join(str(src.get("paper", raw["source"])).split()),
                url=src.get("url"), note=raw.get("note"),
                selection=" ".join(str(src["selection"]).split()) if src.get("selection")
                else None))
        return cls(entries, sources)

    def matching(self, method: str, dataset: str | None, imbalance_type: str | None,
                 imbalance_ratio: float | None) -> list[Reference]:
        """Every entry for ``method`` in this setting, in file order."""
        if dataset is None or imbalance_ratio is None:
            return []
        return [e for e in self.entries
                if e.method == method and e.dataset == dataset
                and e.imbalance_type == imbalance_type
                and abs(e.imbalance_ratio - float(imbalance_ratio)) < 1e-9]

    def lookup(self, method: str, dataset: str | None, imbalance_type: str | None,
               imbalance_ratio: float | None, priority: Iterable[str] = ()) -> Reference | None:
        """The entry to show: the first source in ``priority``, then file order."""
        found = self.matching(method, dataset, imbalance_type, imbalance_ratio)
        if not found:
            return None
        rank = {name: i for i, name in enumerate(priority)}
        return min(found, key=lambda e: (rank.get(e.source, len(rank)), found.index(e)))

    def baseline_for(self, ref: Reference, baseline_method: str) -> Reference | None:
        """The baseline's number from the same table of the same source (else the same source),
        in the same setting, so a direction is computed within one table, never across tables
        with different runs of the baseline."""
        same_source = [e for e in self.matching(baseline_method, ref.dataset, ref.imbalance_type,
                                                ref.imbalance_ratio) if e.source == ref.source]
        return next((e for e in same_source if e.table == ref.table),
                    same_source[0] if same_source else None)
