"""What every experiment logger is given: the run it logs (:class:`LoggedRun`) and the scalars of
an epoch's row and of the final results, named the same for TensorBoard, MLflow and W&B (see
:mod:`lttoolbox.engine.loggers`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# The final evaluation's scalars every logger records.
#: The final evaluation's scalars a logger receives (those a run's results hold: a multi-label
#: run's are its mAP and groups).
FINAL_KEYS = ("top1", "top5", "mean_class_acc", "many", "medium", "few", "ece", "mAP", "head_mAP",
              "medium_mAP", "tail_mAP")


@dataclass
class LoggedRun:
    """What a logger is opened with.

    Attributes:
        path: The run directory.
        recipe: The resolved recipe.
        history: The rows of the epochs already trained (a resumed run's checkpointed history).
        commits: The commits that trained the run, first one first (as in ``results.json``).
        machine: :func:`lttoolbox.engine.provenance.machine_info` of this attempt.
        warn: Where a logger's one failure report goes (the run's console).
    """

    path: Path
    recipe: dict
    history: list = field(default_factory=list)
    commits: list = field(default_factory=list)
    machine: dict = field(default_factory=dict)
    warn: Callable[[str], None] = print


def epoch_scalars(row: dict) -> dict[str, float]:
    """The scalars of an epoch's row, named ``<phase>/loss``, ``<phase>/loss/<term>``,
    ``<phase>/lr``, ``<phase>/images_per_second`` and ``<phase>/eval/<metric>``.

    Example:
        >>> epoch_scalars({"phase": "main", "epoch": 0, "loss": 1.5, "lr": 0.1,
        ...                "images_per_second": 900.0, "loss_terms": {"ldam": 1.0},
        ...                "eval": {"top1": 50.0, "few": None}})
        {'main/loss': 1.5, 'main/lr': 0.1, 'main/images_per_second': 900.0, \
'main/loss/ldam': 1.0, 'main/eval/top1': 50.0}
    """
    prefix = f"{row['phase']}/"
    out = {prefix + key: row[key] for key in ("loss", "lr", "images_per_second")}
    out.update({f"{prefix}loss/{name}": v for name, v in row.get("loss_terms", {}).items()})
    out.update({f"{prefix}eval/{key}": v for key, v in (row.get("eval") or {}).items()
                if v is not None})
    return out


def final_scalars(results: dict) -> dict[str, float]:
    """The final evaluation's scalars, named ``final/<metric>``."""
    return {f"final/{key}": results[key] for key in FINAL_KEYS if results.get(key) is not None}
