"""Per-run plots, written beside ``results.json`` when matplotlib (the ``[plot]`` extra) is there.

* ``per_class_accuracy.png``: each class's test accuracy against its training count (log x), the
  picture of a long tail;
* ``confusion_matrix.png``: rows are true classes, normalised per row, both axes labelled with
  the class names (every few classes when there are too many to read);
* ``training_curves.png``: the training loss of every epoch and the test top-1 of every
  evaluation (``eval.every``, and the final one), phases marked.

A multi-label run (its results hold ``mAP``) shows each class's average precision and the test mAP
in the same files, and has no confusion matrix.

Each figure is built by its own function (``*_figure``), which returns the matplotlib figure, so
what it shows can be checked without reading pixels.

Example:
    >>> fig = confusion_figure({"confusion_matrix": [[3, 1], [0, 4]],
    ...                         "class_names": ["cat", "dog"]})  # doctest: +SKIP
    >>> [t.get_text() for t in fig.axes[0].get_xticklabels()]      # doctest: +SKIP
    ['cat', 'dog']
"""
from __future__ import annotations

import math
from pathlib import Path

from ..rundir import RunDir, atomic_write

PLOT_HINT = 'per-run plots need matplotlib: pip install -e ".[plot]"'
# More class names than this on an axis overlap; then every k-th class is named.
MAX_TICK_LABELS = 40
PLOTS = RunDir.PLOTS


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _headline(results: dict) -> tuple[str, str, str]:
    """The key of the run's headline metric, its per-class key and its name: top-1 and
    accuracy, or (a multi-label run) mAP and average precision."""
    if "mAP" in results:
        return "mAP", "per_class_ap", "AP"
    return "top1", "per_class_acc", "accuracy"


def per_class_figure(results: dict):
    """Each class's test accuracy (multi-label: average precision) against its training count
    (log x)."""
    import numpy as np
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    key, per_class, what = _headline(results)
    counts = np.asarray(results["train_class_counts"], dtype=float)
    acc = np.asarray([np.nan if a is None else a for a in results[per_class]])
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    ax.scatter(np.maximum(counts, 1), acc, s=14)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel(f"test {what} (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Per-class {what} ({'top-1' if key == 'top1' else key} "
                 f"{results[key]:.2f} %)")
    ax.grid(alpha=0.3)
    return fig


def confusion_figure(results: dict):
    """The row-normalised confusion matrix, its axes labelled with the class names (every
    ``ceil(C / MAX_TICK_LABELS)``-th class when there are more than :data:`MAX_TICK_LABELS`)."""
    import numpy as np

    confusion = np.asarray(results["confusion_matrix"], dtype=float)
    num_classes = len(confusion)
    names = results.get("class_names") or [str(c) for c in range(num_classes)]
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    size = min(12, 3 + 0.25 * num_classes)
    fig, ax = _pyplot().subplots(figsize=(size, size))
    image = ax.imshow(normalised, vmin=0, vmax=1, cmap="viridis")
    step = math.ceil(num_classes / MAX_TICK_LABELS)
    ticks = list(range(0, num_classes, step))
    shown = [names[c] for c in ticks]
    ax.set_xticks(ticks, shown, rotation=90)
    ax.set_yticks(ticks, shown)
    every = "" if step == 1 else f" (one class in {step} named)"
    ax.set_xlabel("predicted class")
    ax.set_ylabel(f"true class{every}")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title("Confusion matrix (row-normalised)")
    return fig


def curves_figure(results: dict):
    """Training loss per epoch (left axis) and test top-1 (right axis) at every evaluation made
    during training and at the end, over the run's epochs; a dashed line starts each phase
    after the first."""
    from matplotlib.ticker import MaxNLocator

    history = results["history"]
    epochs = list(range(1, len(history) + 1))
    fig, ax = _pyplot().subplots(figsize=(7, 4))
    ax.plot(epochs, [row["loss"] for row in history], color="tab:blue", marker=".",
            label="training loss")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("training loss", color="tab:blue")
    ax.grid(alpha=0.3)
    key = _headline(results)[0]
    name = "top-1" if key == "top1" else key
    at = [x for x, row in zip(epochs, history) if row.get("eval")]
    top1 = [row["eval"][key] for row in history if row.get("eval")]
    at.append(len(history))  # the final evaluation, after the last epoch
    top1.append(results[key])
    acc = ax.twinx()
    acc.plot(at, top1, color="tab:orange", marker="o", label=f"test {name}")
    acc.set_ylabel(f"test {name} (%)", color="tab:orange")
    acc.set_ylim(-2, 102)
    for x, (previous, row) in enumerate(zip(history, history[1:]), start=1):
        if row["phase"] != previous["phase"]:
            ax.axvline(x + 0.5, color="grey", linestyle="--", linewidth=1)
            ax.annotate(row["phase"], (x + 0.5, 1), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", color="grey")
    ax.set_title(f"Training loss and test {name} (final {results[key]:.2f} %)")
    return fig


def write_run_plots(results: dict, run_dir: Path) -> list[Path]:
    """Write the three PNGs of :data:`PLOTS` (atomically) and return their paths."""
    plt = _pyplot()
    run_dir = Path(run_dir)
    written = []
    for name, build in zip(PLOTS, (per_class_figure, confusion_figure, curves_figure)):
        if build is confusion_figure and "confusion_matrix" not in results:
            continue  # a multi-label run has none
        fig = build(results)
        try:
            written.append(_save(fig, run_dir / name))
        finally:
            plt.close(fig)
    return written


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110,
                                                  bbox_inches="tight"), binary=True)
    return path
