"""Evaluation: top-1, top-5, mean per-class accuracy, many/medium/few-shot splits, calibration.

The split convention is the one of Liu et al. (OLTR, CVPR 2019) and everything after it: a class is
*many-shot* with more than ``many_threshold`` (100) training images, *few-shot* with fewer than
``few_threshold`` (20), and *medium-shot* in between (both ends included). Small data sets need
other cut points, so both are parameters. Accuracies are percentages.

Example:
    >>> import numpy as np
    >>> split_accuracies(np.array([90.0, 50.0, 10.0]), [500, 50, 5])
    {'many': 90.0, 'medium': 50.0, 'few': 10.0}
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch


def split_accuracies(per_class_acc: np.ndarray, train_counts: Sequence[int],
                     many_threshold: int = 100, few_threshold: int = 20) -> dict:
    """Mean per-class accuracy over the many-, medium- and few-shot classes.

    A split without classes is ``None`` (not 0), so a table never shows a made-up number.
    """
    counts = np.asarray(train_counts)
    acc = np.asarray(per_class_acc, dtype=np.float64)
    masks = {"many": counts > many_threshold,
             "medium": (counts >= few_threshold) & (counts <= many_threshold),
             "few": counts < few_threshold}
    return {name: (float(acc[m].mean()) if m.any() else None) for name, m in masks.items()}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray,
                               bins: int = 15) -> float:
    """ECE (Guo et al., ICML 2017, Eq. 3): sum over equal-width confidence bins of
    |B|/N * |accuracy(B) - confidence(B)|, as a percentage."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bins are (lo, hi]; a confidence of exactly 0 falls in the first bin.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(100.0 * ece)


def ranks_for(num_classes: int) -> int:
    """How many ranked classes an evaluation keeps per image: 5 where top-5 accuracy says
    something (more than 5 classes; with 5 or fewer it is 100 % by construction), else 1."""
    return TOP_K if num_classes > TOP_K else 1


#: The k of the reported top-k accuracy besides top-1 (ImageNet's convention).
TOP_K = 5


def metrics_from_predictions(pred: np.ndarray, target: np.ndarray, confidence: np.ndarray,
                             num_classes: int, train_counts: Sequence[int],
                             many_threshold: int = 100, few_threshold: int = 20,
                             ece_bins: int = 15) -> dict:
    """All reported metrics from predicted labels, true labels and confidences.

    ``pred`` is the predicted label per image, ``(N,)``, or the classes ranked by score,
    ``(N, k)`` with the prediction first; ``top5`` (the share of images whose label is among the
    five best-scored classes) needs ``k >= 5`` and is ``None`` otherwise, and where the data set
    has 5 classes or fewer.

    Example:
        >>> ranked = np.array([[0, 1, 2, 3, 4], [5, 0, 1, 2, 3], [2, 1, 0, 3, 4]])
        >>> m = metrics_from_predictions(ranked, np.array([0, 3, 9]), np.ones(3), 10, [9] * 10)
        >>> round(m["top1"], 2), round(m["top5"], 2)
        (33.33, 66.67)
    """
    pred, target = np.asarray(pred), np.asarray(target)
    top5 = None
    if pred.ndim == 2:
        if pred.shape[1] >= TOP_K and num_classes > TOP_K:
            top5 = float(100.0 * (pred[:, :TOP_K] == target[:, None]).any(axis=1).mean())
        pred = pred[:, 0]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (target, pred), 1)
    test_counts = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(test_counts > 0, 100.0 * np.diag(confusion) / test_counts, np.nan)
    present = ~np.isnan(per_class)
    correct = pred == target
    return {
        "top1": float(100.0 * correct.mean()),
        "top5": top5,
        "mean_class_acc": float(per_class[present].mean()),
        **split_accuracies(np.where(present, per_class, 0.0)[present],
                           np.asarray(train_counts)[present], many_threshold, few_threshold),
        "per_class_acc": [None if np.isnan(a) else round(float(a), 4) for a in per_class],
        "train_class_counts": [int(c) for c in train_counts],
        "test_class_counts": [int(c) for c in test_counts],
        "ece": expected_calibration_error(confidence, correct, ece_bins),
        "confusion_matrix": confusion.tolist(),
    }


@torch.no_grad()
def logits_of(model: torch.nn.Module, batches: Iterable[torch.Tensor],
              autocast: Callable | None = None) -> Iterator[torch.Tensor]:
    """The model's float32 logits for each transformed batch of ``batches``, in eval mode.

    The one evaluation loop: evaluation (the trainer's and ``lteval``'s) and :func:`predict_topk`
    (``ltpredict``) all read it, so they see exactly the same logits.
    """
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            if autocast is not None:
                with autocast():
                    logits = model(x)
            else:
                logits = model(x)
            yield logits.float()
    finally:
        model.train(was_training)


def batched_logits(model: torch.nn.Module, images: torch.Tensor, transform: Callable,
                   batch_size: int = 1024, autocast: Callable | None = None
                   ) -> Iterator[torch.Tensor]:
    """:func:`logits_of` for uint8 ``images`` transformed by ``transform``, a batch at a time."""
    return logits_of(model, (transform(images[s:s + batch_size])
                             for s in range(0, images.shape[0], batch_size)), autocast)


def predict_batches(model: torch.nn.Module, batches: Iterable[torch.Tensor],
                    autocast: Callable | None = None, k: int = 1
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Predicted labels and their softmax confidence for transformed batches.

    With ``k > 1`` the predictions are the ``k`` best-scored classes of each image, ``(N, k)``,
    the predicted label first (:func:`metrics_from_predictions` reads top-5 from them).
    Predictions are gathered on the device and copied to the host once, at the end.
    """
    preds, confs = [], []
    for logits in logits_of(model, batches, autocast):
        probs = torch.softmax(logits, dim=1)
        if k == 1:
            conf, pred = probs.max(dim=1)
        else:
            # topk's first column is the max; ties resolve as in max (the lowest index) only
            # up to the kernel, so the label comes from max and the rest from topk.
            conf, pred = probs.max(dim=1)
            pred = torch.cat([pred[:, None], _others(probs, pred, k - 1)], dim=1)
        preds.append(pred)
        confs.append(conf)
    if not preds:  # an empty shard (more ranks than images)
        shape = (0,) if k == 1 else (0, k)
        return np.zeros(shape, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return torch.cat(preds).cpu().numpy(), torch.cat(confs).cpu().numpy()


def _others(probs: torch.Tensor, first: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` best-scored classes of each row after ``first`` (which is left out)."""
    rest = probs.scatter(1, first[:, None], float("-inf"))
    return rest.topk(k, dim=1).indices


def predict(model: torch.nn.Module, images: torch.Tensor, transform: Callable,
            batch_size: int = 1024,
            autocast: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted labels and their softmax confidence for uint8 ``images`` on the model's device."""
    return predict_batches(model, (transform(images[s:s + batch_size])
                                   for s in range(0, images.shape[0], batch_size)), autocast)


def predict_topk(model: torch.nn.Module, images: torch.Tensor, transform: Callable, k: int,
                 logit_offset: torch.Tensor | None = None, batch_size: int = 1024,
                 autocast: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most probable classes of each image and their softmax probabilities.

    Args:
        logit_offset: Added to every sample's logits before the softmax, e.g. ``-tau * log(prior)``
            for post-hoc logit adjustment (Menon et al., ICLR 2021, Eq. 9).

    Returns:
        ``(classes, probabilities)``, both ``(N, k)``, most probable first.
    """
    classes, probs = [], []
    for logits in batched_logits(model, images, transform, batch_size, autocast):
        if logit_offset is not None:
            logits = logits + logit_offset.to(logits.device)
        top = torch.softmax(logits, dim=1).topk(k, dim=1)
        classes.append(top.indices)
        probs.append(top.values)
    return torch.cat(classes).cpu().numpy(), torch.cat(probs).cpu().numpy()


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             transform: Callable, train_counts: Sequence[int], many_threshold: int = 100,
             few_threshold: int = 20, ece_bins: int = 15, batch_size: int = 1024,
             autocast: Callable | None = None) -> dict:
    """Evaluate ``model`` on a labelled set; see :func:`metrics_from_predictions`."""
    pred, conf = predict_batches(model, (transform(images[s:s + batch_size])
                                         for s in range(0, images.shape[0], batch_size)),
                                 autocast, k=ranks_for(len(train_counts)))
    return metrics_from_predictions(pred, labels.cpu().numpy(), conf, len(train_counts),
                                    train_counts, many_threshold, few_threshold, ece_bins)


# --------------------------------------------------------------------------- multi-label metrics
#: The class groups of the multi-label benchmarks by training images per label: head n >= 100,
#: medium 20 <= n < 100, tail n < 20 (the official split files of VOC-MLT and COCO-MLT,
#: wutong16/DistributionBalancedLoss@14460d0, ``appendix/.../class_split.pkl``, built by
#: ``create_longtail_dataset.py:172-174``; a class with exactly 100 images is head there).
HEAD_THRESHOLD = 100
TAIL_THRESHOLD = 20


def average_precision(scores: np.ndarray, targets: np.ndarray) -> list[float | None]:
    """Non-interpolated average precision of every class (column): the area under the
    step-wise precision-recall curve, ``sum_k (R_k - R_{k-1}) P_k`` over the distinct score
    thresholds in decreasing order (tied scores form one threshold), which is
    ``sklearn.metrics.average_precision_score`` per column, the official evaluation's
    (DistributionBalancedLoss@14460d0, ``mllt/core/evaluation/mean_ap.py:32``).

    A class with no positive in ``targets`` has no AP: ``None`` (scikit-learn returns 0 there
    with a warning, and the official code averages that 0 in; here it is left out of every mean,
    so a subset without some class does not lower the mAP by a made-up 0).

    Args:
        scores: ``(N, C)`` scores; any increasing map of them (logits or sigmoid probabilities)
            gives the same AP, up to ties the map creates (a float32 sigmoid saturates at 1,
            so the evaluation ranks the logits).
        targets: ``(N, C)`` multi-hot, 0/1.

    Example:
        >>> average_precision(np.array([[0.9], [0.8], [0.1]]), np.array([[1], [0], [1]]))
        [0.8333333333333333]
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets) > 0.5
    out: list[float | None] = []
    for c in range(scores.shape[1]):
        positives = int(targets[:, c].sum())
        if positives == 0:
            out.append(None)
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        s, y = scores[order, c], targets[order, c]
        tp = np.cumsum(y)
        # the last position of each group of tied scores: one threshold per distinct score
        ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
        precision = tp[ends] / (ends + 1)
        recall = tp[ends] / positives
        out.append(float(np.sum(np.diff(np.r_[0.0, recall]) * precision)))
    return out


def multilabel_metrics(scores: np.ndarray, targets: np.ndarray, train_counts: Sequence[int],
                       head_threshold: int = HEAD_THRESHOLD,
                       tail_threshold: int = TAIL_THRESHOLD) -> dict:
    """The reported metrics of a multi-label evaluation, as percentages.

    ``mAP`` is the mean of :func:`average_precision` over the classes with a positive test
    image; ``head_mAP`` / ``medium_mAP`` / ``tail_mAP`` the same over the classes with
    ``n >= head_threshold``, ``tail_threshold <= n < head_threshold`` and ``n < tail_threshold``
    training images (``None`` for a group without such a class). ``mAP`` is over all classes,
    not the mean of the three groups' (as the official ``tools/test.py:276``).

    Example:
        >>> m = multilabel_metrics(np.array([[2., 0.], [1., 3.], [0., 1.]]),
        ...                        np.array([[1, 0], [0, 1], [1, 0]]), [150, 10])
        >>> round(m["mAP"], 2), round(m["head_mAP"], 2), m["medium_mAP"], m["tail_mAP"]
        (91.67, 83.33, None, 100.0)
    """
    targets = np.asarray(targets)
    counts = np.asarray(train_counts)
    ap = average_precision(scores, targets)
    values = np.array([np.nan if a is None else 100.0 * a for a in ap])

    def mean_over(mask: np.ndarray) -> float | None:
        chosen = values[mask & ~np.isnan(values)]
        return float(chosen.mean()) if chosen.size else None

    return {
        "mAP": mean_over(np.ones(len(values), dtype=bool)),
        "head_mAP": mean_over(counts >= head_threshold),
        "medium_mAP": mean_over((counts >= tail_threshold) & (counts < head_threshold)),
        "tail_mAP": mean_over(counts < tail_threshold),
        "per_class_ap": [None if np.isnan(v) else round(float(v), 4) for v in values],
        "train_class_counts": [int(c) for c in counts],
        "test_class_counts": [int(c) for c in np.rint(targets.sum(0)).astype(np.int64)],
        "head_threshold": int(head_threshold),
        "tail_threshold": int(tail_threshold),
    }


def score_batches(model: torch.nn.Module, batches: Iterable[torch.Tensor],
                  autocast: Callable | None = None) -> np.ndarray:
    """The logits ``(N, C)`` of transformed batches, gathered on the device and copied to the
    host once (a multi-label evaluation ranks them per class)."""
    out = [logits for logits in logits_of(model, batches, autocast)]
    if not out:  # an empty shard
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).cpu().numpy()
