"""Evaluation metrics against values worked out by hand."""
import numpy as np
import pytest

from lttoolbox.engine.evaluate import (expected_calibration_error, metrics_from_predictions,
                                       ranks_for, split_accuracies)


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


def test_top5_by_hand_from_ranked_predictions():
    # Ranked classes (prediction first): image 0 hits at rank 1, image 1 at rank 5, image 2 misses.
    ranked = np.array([[1, 0, 2, 3, 4], [5, 6, 7, 8, 2], [0, 1, 3, 4, 5]])
    m = metrics_from_predictions(ranked, np.array([1, 2, 9]), np.ones(3), 10, [9] * 10)
    assert m["top1"] == pytest.approx(100 / 3)
    assert m["top5"] == pytest.approx(200 / 3)
    assert m["confusion_matrix"][2][5] == 1  # top-1 metrics read the first column


def test_top5_is_none_where_it_says_nothing():
    # 5 classes: every label is in the top 5. One label per image: no ranking to read.
    ranked = np.array([[0, 1, 2, 3, 4]])
    assert metrics_from_predictions(ranked, np.array([4]), np.ones(1), 5, [3] * 5)["top5"] is None
    assert metrics_from_predictions(np.array([0]), np.array([4]), np.ones(1), 10,
                                    [3] * 10)["top5"] is None
    assert ranks_for(5) == 1 and ranks_for(6) == 5


def test_ranked_predictions_follow_the_scores():
    import torch

    from lttoolbox.engine.evaluate import predict_batches

    logits = torch.tensor(np.random.default_rng(0).normal(size=(7, 9)), dtype=torch.float32)
    pred, conf = predict_batches(torch.nn.Identity(), [logits[:4], logits[4:]], k=5)
    expected = np.argsort(-logits.numpy(), axis=1, kind="stable")[:, :5]
    assert pred.shape == (7, 5) and np.array_equal(pred, expected)
    probs = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
    np.testing.assert_allclose(conf, probs.max(1), rtol=1e-6)
    empty, _ = predict_batches(torch.nn.Identity(), [], k=5)
    assert empty.shape == (0, 5)


def test_a_run_reports_top5_of_its_final_model(tmp_path):
    import json

    import torch
    import yaml

    from conftest import DIGITS
    from lttoolbox.cli import main as lttrain
    from lttoolbox.registry import DATASETS
    from lttoolbox.runs import open_run

    recipe = dict(DIGITS, train={"epochs": 1, "batch_size": 64})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert lttrain([str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    run = open_run(tmp_path / "run")
    test = DATASETS.build(run.recipe["data"], key="data").test
    with torch.no_grad():
        logits = run.model(run.eval_transform(torch.as_tensor(test.images))).numpy()
    labels = np.asarray(test.labels)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert results["top5"] == pytest.approx(100 * (top5 == labels[:, None]).any(1).mean())
    assert results["top1"] <= results["top5"] <= 100
