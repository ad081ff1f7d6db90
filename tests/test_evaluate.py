"""Evaluation metrics against values worked out by hand."""
import numpy as np
import pytest

from lttoolbox.engine.evaluate import (expected_calibration_error, metrics_from_predictions,
                                       split_accuracies)


def test_split_boundaries_follow_the_convention():
    # > 100 many, 20..100 medium (both ends), < 20 few.
    acc = np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    counts = [101, 100, 20, 19, 500, 5]
    assert split_accuracies(acc, counts) == {"many": 30.0, "medium": 25.0, "few": 50.0}
    assert split_accuracies(acc, counts, many_threshold=200, few_threshold=10) == \
        {"many": 50.0, "medium": 25.0, "few": 60.0}


def test_empty_split_is_none():
    assert split_accuracies(np.array([50.0]), [500])["few"] is None


def test_ece_by_hand():
    # Bins of width 1/15: {0.9, 0.9} -> acc 0.5, conf 0.9; {0.6} -> 1 vs 0.6; {0.3} -> 0 vs 0.3.
    conf = np.array([0.9, 0.9, 0.6, 0.3])
    correct = np.array([1, 0, 1, 0])
    expected = 100 * (2 / 4 * 0.4 + 1 / 4 * 0.4 + 1 / 4 * 0.3)
    assert expected_calibration_error(conf, correct, bins=15) == pytest.approx(expected)
    assert expected_calibration_error(np.ones(4), np.ones(4)) == pytest.approx(0.0)


def test_metrics_from_predictions_by_hand():
    target = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 0, 2, 1])
    conf = np.full(8, 0.5)
    m = metrics_from_predictions(pred, target, conf, 3, train_counts=[200, 50, 10])
    assert m["top1"] == pytest.approx(100 * 5 / 8)
    assert m["per_class_acc"] == [75.0, 50.0, 50.0]
    assert m["mean_class_acc"] == pytest.approx(175 / 3)
    assert (m["many"], m["medium"], m["few"]) == (75.0, 50.0, 50.0)
    assert m["confusion_matrix"] == [[3, 1, 0], [1, 1, 0], [0, 1, 1]]
    assert m["test_class_counts"] == [4, 2, 2]
    assert m["ece"] == pytest.approx(100 * abs(5 / 8 - 0.5))
