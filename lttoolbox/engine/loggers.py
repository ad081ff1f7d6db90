"""Optional experiment loggers, chosen with ``train.loggers``: tensorboard, mlflow, wandb.

A logger receives every epoch's row (loss and, with auxiliary losses, each term; learning rate,
images/s, and the evaluation when ``eval.every`` is set) and, at the end, the final results. It
never influences training, so ``train.loggers`` (with ``train.mlflow`` and ``train.wandb``) is not
part of the recipe hash. Each logger is an optional extra, imported only when named; a recipe
that names one whose extra is missing is refused before anything runs, with one line naming the
extra to install.

A logger is opened with the run's :class:`LoggedRun` (its directory, recipe, the epochs a resumed
run already trained, commits and machine) and has three methods: ``epoch(row)``,
``results(results)`` (after ``results.json`` and the plots were written) and ``close()``. Step
``n`` is the run's ``n``-th trained epoch across phases, so a resumed run continues the steps
where the interrupted one stopped.

A logger that fails (a tracking server that goes away, a full disk) never stops training: the
first exception is reported once, naming the logger, and the logger is dropped for the rest of the
attempt (a server that stopped answering would otherwise cost its time-out at every epoch).
``log.jsonl`` and ``metrics.csv`` still hold every epoch, and a resumed run logs to MLflow / W&B
the epochs they missed (see :mod:`lttoolbox.engine.tracking`).

Recipe:
    train:
      loggers: [tensorboard]      # event files in <run>/tensorboard; pip install -e ".[tb]"
      loggers: [mlflow, wandb]    # pip install -e ".[mlflow]" / ".[wandb]"; train.mlflow and
                                  # train.wandb: lttoolbox/engine/tracking.py
"""
from __future__ import annotations

import importlib
from typing import Callable
from urllib.parse import urlparse

from ..errors import ConfigError
from ..recipe_checks import LOGGERS  # noqa: F401  (the names a recipe may give)
from ..rundir import RunDir
from .logged_run import LoggedRun, epoch_scalars, final_scalars  # noqa: F401  (loggers' inputs)

# Each logger's module and the setup.cfg extra that installs it.
EXTRAS = {"tensorboard": ("torch.utils.tensorboard", "tb"), "mlflow": ("mlflow", "mlflow"),
          "wandb": ("wandb", "wandb")}


def check_loggers(names: list[str], key: str = "train.loggers", train: dict | None = None) -> None:
    """Refuse unknown loggers and loggers whose extra is not installed (before anything runs).

    With ``train`` (the resolved ``train`` section), also a ``train.mlflow.tracking_uri`` that
    the installed MLflow will refuse: a ``file:`` store, which MLflow 3 opens only with
    ``MLFLOW_ALLOW_FILE_STORE=true`` set.
    """
    for name in names:
        module, extra = EXTRAS[name]
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"the {name} logger needs the [{extra}] extra: "
                              f"pip install -e \".[{extra}]\"", key=key) from None
    uri = (train or {}).get("mlflow", {}).get("tracking_uri")
    if "mlflow" in names and uri and urlparse(uri).scheme in ("", "file"):
        from mlflow import environment_variables

        allowed = getattr(environment_variables, "MLFLOW_ALLOW_FILE_STORE", None)
        if allowed is not None and not allowed.get():
            raise ConfigError(f"{uri} is a file store, which this MLflow opens only with "
                              f"MLFLOW_ALLOW_FILE_STORE=true set; set it, or give a sqlite:/// "
                              f"or http(s):// URI, or null for the run's own "
                              f"{RunDir.MLFLOW_DB}", key="train.mlflow.tracking_uri")


class TensorBoardLogger:
    """Scalars per epoch and the per-class accuracy at the end, under ``<run>/tensorboard``."""

    def __init__(self, run: LoggedRun):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(RunDir(run.path).tensorboard))
        self.step = len(run.history)  # a resumed run continues its steps

    def epoch(self, row: dict) -> None:
        self.step += 1
        for key, value in epoch_scalars(row).items():
            self.writer.add_scalar(key, value, self.step)

    def results(self, results: dict) -> None:
        import torch

        per_class = [a for a in results["per_class_acc"] if a is not None]
        self.writer.add_histogram("final/per_class_accuracy", torch.tensor(per_class), self.step)
        for key, value in final_scalars(results).items():
            self.writer.add_scalar(key, value, self.step)
        names = results.get("class_names") or [str(i) for i in range(len(per_class))]
        rows = "\n".join(f"| {n} | {c} | {'-' if a is None else f'{a:.2f}'} |" for n, c, a in
                         zip(names, results["train_class_counts"], results["per_class_acc"]))
        self.writer.add_text("final/per_class_accuracy",
                             "| class | train images | accuracy (%) |\n|---|---|---|\n" + rows,
                             self.step)

    def close(self) -> None:
        self.writer.close()


class Guarded:
    """A logger whose failure costs its own output only, never the training run.

    The first exception (from opening it or from any call) is reported once through
    ``run.warn``, naming the logger, and the logger is closed as far as it still can be and
    dropped for the rest of the attempt. ``KeyboardInterrupt`` and other non-``Exception``
    signals pass through.
    """

    def __init__(self, name: str, factory: Callable[[LoggedRun], object], run: LoggedRun):
        self.name = name
        self._warn = run.warn
        self.logger = None
        self.logger = self._call(factory, run)

    def _call(self, method, *args):
        try:
            return method(*args)
        except Exception as err:  # noqa: BLE001  (any backend failure: reported, not raised)
            failed, self.logger = self.logger, None
            detail = (str(err).strip().splitlines() or [""])[0][:300]
            self._warn(f"train.loggers: {self.name} failed ({type(err).__name__}: {detail}); "
                       f"training continues without it (log.jsonl and metrics.csv hold every "
                       f"epoch)")
            if failed is not None:
                try:
                    failed.close()
                except Exception:  # noqa: BLE001  (already reported)
                    pass
            return None

    def epoch(self, row: dict) -> None:
        if self.logger is not None:
            self._call(self.logger.epoch, row)

    def results(self, results: dict) -> None:
        if self.logger is not None:
            self._call(self.logger.results, results)

    def close(self) -> None:
        if self.logger is not None:
            self._call(self.logger.close)
            self.logger = None


def _factories() -> dict[str, Callable[[LoggedRun], object]]:
    from .tracking import MLflowLogger, WandbLogger
    return {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger, "wandb": WandbLogger}


def open_loggers(names: list[str], run: LoggedRun) -> list[Guarded]:
    """Open the loggers ``names`` (``train.loggers``) for ``run``; rank 0 alone calls this."""
    factories = _factories()
    return [Guarded(name, factories[name], run) for name in names]
