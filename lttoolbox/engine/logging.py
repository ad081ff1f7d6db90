"""Console output: a rich progress bar per epoch, epoch summaries, and the results table.

Nothing here forces a device synchronization per step: the bar advances by step count and the
loss is read from the device once per epoch.
"""
from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table


class RunLogger:
    """Progress and summaries for one run; ``quiet`` prints only warnings and the final line,
    ``silent`` nothing at all (the other ranks of a multi-process run: rank 0 speaks for them,
    every rank holding the same results)."""

    def __init__(self, quiet: bool = False, console: Console | None = None,
                 silent: bool = False):
        self.silent = silent
        self.quiet = quiet or silent
        self.console = console or Console(stderr=False, highlight=False)
        self._progress: Progress | None = None
        self._task = None

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, markup=False, soft_wrap=True)

    def warning(self, message: str) -> None:
        """One plain line on standard error, shown even when quiet."""
        if self.silent:
            return
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"warning: {message}",
                                                                    markup=False)

    def start_epoch(self, description: str, total_steps: int) -> None:
        if self.quiet or not self.console.is_terminal:
            return
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                                  TimeElapsedColumn(), TimeRemainingColumn(),
                                  console=self.console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task(description, total=total_steps, status="")

    @property
    def live(self) -> bool:
        """Whether a progress bar is on screen (so a status line would be seen)."""
        return self._progress is not None

    def advance(self, steps: int = 1, status: str | None = None) -> None:
        if self._progress is not None:
            if status is None:
                self._progress.advance(self._task, steps)
            else:
                self._progress.update(self._task, advance=steps, status=status)

    def end_epoch(self, summary: str) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self.info(summary)

    def results_table(self, results: dict, title: str = "Results") -> None:
        """Overall and per-split accuracies, then per-class accuracy with training counts (for a
        multi-label run: mAP, its head/medium/tail groups and the per-class AP)."""
        if self.silent:
            return
        if "mAP" in results:
            self._multilabel_table(results, title)
            return
        if self.quiet:
            top5 = results.get("top5")
            self.console.print(f"top1 {results['top1']:.2f}"
                               + ("" if top5 is None else f"  top5 {top5:.2f}")
                               + f"  mean-class {results['mean_class_acc']:.2f}"
                               f"  many {fmt(results['many'])}  medium {fmt(results['medium'])}"
                               f"  few {fmt(results['few'])}")
            return
        table = Table(title=title)
        trained = "epochs" in results  # an evaluation of saved weights has no training columns
        top5 = results.get("top5") is not None  # none with 5 classes or fewer
        for column in ("top-1", *(("top-5",) if top5 else ()), "mean class", "many", "medium",
                       "few", "ECE", *(("epochs", "img/s") if trained else ())):
            table.add_column(column, justify="right")
        table.add_row(fmt(results["top1"]), *((fmt(results["top5"]),) if top5 else ()),
                      fmt(results["mean_class_acc"]), fmt(results["many"]),
                      fmt(results["medium"]), fmt(results["few"]), fmt(results["ece"]),
                      *((str(results["epochs"]), f"{results['images_per_second']:.0f}")
                        if trained else ()))
        self.console.print(table)
        if results.get("ema"):  # train.ema: the moving average of the weights, beside them
            self.console.print(f"moving average of the weights (train.ema): top-1 "
                               f"{fmt(results['ema']['top1'])}, mean class "
                               f"{fmt(results['ema']['mean_class_acc'])}")
        self._per_class_table(results, "Per-class accuracy (%)", "accuracy", "per_class_acc")


    def _multilabel_table(self, results: dict, title: str) -> None:
        if self.quiet:
            self.console.print(f"mAP {fmt(results['mAP'])}  head {fmt(results['head_mAP'])}  "
                               f"medium {fmt(results['medium_mAP'])}  "
                               f"tail {fmt(results['tail_mAP'])}")
            return
        table = Table(title=title)
        trained = "epochs" in results
        for column in ("mAP", "head mAP", "medium mAP", "tail mAP",
                       *(("epochs", "img/s") if trained else ())):
            table.add_column(column, justify="right")
        table.add_row(fmt(results["mAP"]), fmt(results["head_mAP"]), fmt(results["medium_mAP"]),
                      fmt(results["tail_mAP"]),
                      *((str(results["epochs"]), f"{results['images_per_second']:.0f}")
                        if trained else ()))
        self.console.print(table)
        if results.get("ema"):
            self.console.print(f"moving average of the weights (train.ema): mAP "
                               f"{fmt(results['ema']['mAP'])}")
        self._per_class_table(results, "Per-class average precision (%)", "AP", "per_class_ap")

    def _per_class_table(self, results: dict, title: str, column: str, key: str) -> None:
        """One row per class: its name, training images and ``results[key]``."""
        per_class = Table(title=title)
        per_class.add_column("class")
        per_class.add_column("train images", justify="right")
        per_class.add_column(column, justify="right")
        names = results.get("class_names") or [str(i) for i in range(len(results[key]))]
        for name, count, value in zip(names, results["train_class_counts"], results[key]):
            per_class.add_row(name, str(count), fmt(value))
        self.console.print(per_class)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
