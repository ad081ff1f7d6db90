"""The per-run plots show what they say: class names on the confusion matrix's axes, the loss and
accuracy of every epoch and evaluation on the curves (read from the figures, not the pixels)."""
from __future__ import annotations

import pytest

pytest.importorskip("matplotlib", reason="the [plot] extra is not installed")

from lttoolbox.engine.plots import (PLOTS, confusion_figure, curves_figure,  # noqa: E402
                                    write_run_plots)


def results(num_classes: int = 3) -> dict:
    names = [f"class_{c}" for c in range(num_classes)]
    confusion = [[5 if i == j else 1 for j in range(num_classes)] for i in range(num_classes)]
    history = [
        {"phase": "joint", "epoch": 0, "loss": 2.0},
        {"phase": "joint", "epoch": 1, "loss": 1.5, "eval": {"top1": 40.0}},
        {"phase": "joint", "epoch": 2, "loss": 1.2},
        {"phase": "crt", "epoch": 0, "loss": 0.9, "eval": {"top1": 55.0}},
        {"phase": "crt", "epoch": 1, "loss": 0.8},
    ]
    return {"confusion_matrix": confusion, "class_names": names, "top1": 61.25,
            "per_class_acc": [50.0] * num_classes, "train_class_counts": [10] * num_classes,
            "history": history}


def texts(labels) -> list[str]:
    return [label.get_text() for label in labels]


def test_the_confusion_matrix_names_its_classes_on_both_axes():
    fig = confusion_figure(results(3))
    ax = fig.axes[0]
    assert texts(ax.get_xticklabels()) == ["class_0", "class_1", "class_2"]
    assert texts(ax.get_yticklabels()) == ["class_0", "class_1", "class_2"]
    assert list(ax.get_xticks()) == [0, 1, 2]


def test_many_classes_are_named_every_few():
    fig = confusion_figure(results(100))  # 100 names would overlap: every 3rd (ceil(100 / 40))
    ax = fig.axes[0]
    assert texts(ax.get_xticklabels()) == [f"class_{c}" for c in range(0, 100, 3)]
    assert list(ax.get_yticks()) == list(range(0, 100, 3))
    assert ax.get_ylabel() == "true class (one class in 3 named)"


def test_the_curves_show_every_epoch_loss_and_every_evaluation():
    fig = curves_figure(results())
    loss_ax, acc_ax = fig.axes
    (loss,) = [line for line in loss_ax.get_lines() if line.get_label() == "training loss"]
    assert list(loss.get_xdata()) == [1, 2, 3, 4, 5]
    assert list(loss.get_ydata()) == [2.0, 1.5, 1.2, 0.9, 0.8]
    (top1,) = acc_ax.get_lines()
    # the evaluations after epochs 2 and 4, then the final one after epoch 5
    assert list(top1.get_xdata()) == [2, 4, 5]
    assert list(top1.get_ydata()) == [40.0, 55.0, 61.25]
    # one dashed line where the second phase starts, between epochs 3 and 4
    boundaries = [line for line in loss_ax.get_lines() if line.get_linestyle() == "--"]
    assert [list(line.get_xdata()) for line in boundaries] == [[3.5, 3.5]]
    assert "crt" in texts(loss_ax.texts)


def test_every_plot_is_written(tmp_path):
    written = write_run_plots(results(), tmp_path)
    assert [p.name for p in written] == list(PLOTS)
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
