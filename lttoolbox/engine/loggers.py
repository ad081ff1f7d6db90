"""Optional experiment loggers, chosen with ``train.loggers`` (today: ``tensorboard``).

A logger receives every epoch's row (loss and, with auxiliary losses, each term; learning rate,
images/s, and the evaluation when ``eval.every`` is set) and, at the end, the final results. It
never influences training, so ``train.loggers`` is not part of the recipe hash.

Recipe:
    train:
      loggers: [tensorboard]      # event files in <run>/tensorboard; pip install -e ".[tb]"
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..recipe_checks import LOGGERS  # noqa: F401  (the names a recipe may give)
from ..rundir import RunDir


def check_loggers(names: list[str], key: str = "train.loggers") -> None:
    """Refuse unknown loggers and loggers whose extra is not installed (before anything runs)."""
    for name in names:
        if name == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:
                raise ConfigError("the tensorboard logger needs the [tb] extra: "
                                  "pip install -e \".[tb]\"", key=key) from None


class TensorBoardLogger:
    """Scalars per epoch and the per-class accuracy at the end, under ``<run>/tensorboard``."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(RunDir(run_dir).tensorboard))
        self.step = 0

    def epoch(self, row: dict) -> None:
        self.step += 1
        prefix = f"{row['phase']}/"
        for key in ("loss", "lr", "images_per_second"):
            self.writer.add_scalar(prefix + key, row[key], self.step)
        for name, value in row.get("loss_terms", {}).items():
            self.writer.add_scalar(f"{prefix}loss/{name}", value, self.step)
        for key, value in (row.get("eval") or {}).items():
            if value is not None:
                self.writer.add_scalar(f"{prefix}eval/{key}", value, self.step)

    def results(self, results: dict) -> None:
        import torch

        per_class = [a for a in results["per_class_acc"] if a is not None]
        self.writer.add_histogram("final/per_class_accuracy", torch.tensor(per_class), self.step)
        for key in ("top1", "top5", "mean_class_acc", "many", "medium", "few", "ece"):
            if results.get(key) is not None:
                self.writer.add_scalar(f"final/{key}", results[key], self.step)
        names = results.get("class_names") or [str(i) for i in range(len(per_class))]
        rows = "\n".join(f"| {n} | {c} | {'-' if a is None else f'{a:.2f}'} |" for n, c, a in
                         zip(names, results["train_class_counts"], results["per_class_acc"]))
        self.writer.add_text("final/per_class_accuracy",
                             "| class | train images | accuracy (%) |\n|---|---|---|\n" + rows,
                             self.step)

    def close(self) -> None:
        self.writer.close()


def open_loggers(names: list[str], run_dir: Path) -> list:
    return [TensorBoardLogger(run_dir) for name in names if name == "tensorboard"]
