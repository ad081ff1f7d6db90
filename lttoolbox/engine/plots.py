"""Per-run plots, written beside ``results.json`` when matplotlib (the ``[plot]`` extra) is there.

* ``per_class_accuracy.png``: each class's test accuracy against its training count (log x), the
  picture of a long tail;
* ``confusion_matrix.png``: rows are true classes, normalised per row.
"""
from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_write

PLOT_HINT = 'per-run plots need matplotlib: pip install -e ".[plot]"'


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_run_plots(results: dict, run_dir: Path) -> list[Path]:
    """Write the two PNGs (atomically) and return their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    run_dir = Path(run_dir)
    counts = np.asarray(results["train_class_counts"], dtype=float)
    acc = np.asarray([np.nan if a is None else a for a in results["per_class_acc"]])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(np.maximum(counts, 1), acc, s=14)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Per-class accuracy (top-1 {results['top1']:.2f} %)")
    ax.grid(alpha=0.3)
    written = [_save(fig, run_dir / "per_class_accuracy.png")]
    plt.close(fig)

    confusion = np.asarray(results["confusion_matrix"], dtype=float)
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    size = min(12, 3 + 0.25 * len(confusion))
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(normalised, vmin=0, vmax=1, cmap="viridis")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (classes in data-set order)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title("Confusion matrix (row-normalised)")
    written.append(_save(fig, run_dir / "confusion_matrix.png"))
    plt.close(fig)
    return written


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110,
                                                  bbox_inches="tight"), binary=True)
    return path
