"""Multi-label data: a multi-hot label matrix per split, and the embedded ``digits_mlt`` set.

A multi-label split holds its targets as a float32 multi-hot matrix ``(N, C)`` (1.0: the label is
present), one row per image; ``class_counts[c]`` is the number of images with label ``c``. A
bundle whose splits are :class:`MultiLabelDataset` says ``multilabel = True``; the trainer reads
that once, when it builds the run, and evaluates with mean average precision
(:mod:`lttoolbox.engine.evaluate`).

Example:
    >>> import numpy as np
    >>> ds = MultiLabelDataset(np.zeros((3, 1, 2, 2), np.uint8), [[1, 0], [1, 1], [0, 1]],
    ...                        ["a", "b"], (0.,), (1.,))
    >>> ds.class_counts, ds.multilabel, tuple(ds.labels.shape)
    ([2, 2], True, (3, 2))
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..checks import check_int
from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .dataset import DataBundle, LTDataset, pixel_mean_std
from .digits import digit_images
from .profiles import index_hash
from .transforms import BatchTransform


class MultiLabelDataset(LTDataset):
    """Images in memory (uint8) with a multi-hot label matrix.

    Args:
        images: uint8 ``(N, C, H, W)``.
        labels: Multi-hot ``(N, num_classes)``, 0/1 values (converted to float32).
        classes, mean, std: As :class:`~lttoolbox.data.dataset.LTDataset`.
    """

    multilabel = True

    @staticmethod
    def _checked_labels(labels: Any, num_images: int, classes: Sequence[str]) -> torch.Tensor:
        """The multi-hot matrix as float32, checked: one row per image, one column per class,
        values 0 and 1."""
        labels = torch.as_tensor(np.asarray(labels, dtype=np.float32) if not torch.is_tensor(labels)
                                 else labels).to(torch.float32)
        if labels.dim() != 2 or labels.shape != (num_images, len(classes)):
            raise DataError(f"{num_images} images of {len(classes)} classes need a multi-hot "
                            f"label matrix of shape ({num_images}, {len(classes)}), got "
                            f"{tuple(labels.shape)}")
        if not bool(((labels == 0) | (labels == 1)).all()):
            raise DataError("a multi-hot label matrix holds only 0 and 1")
        return labels

    def _counts(self) -> list[int]:
        """Training images per label (the column sums)."""
        return [int(v) for v in self.labels.sum(0).round().to(torch.int64).tolist()]

    def __repr__(self) -> str:
        return (f"MultiLabelDataset({len(self)} images {tuple(self.images.shape[1:])}, "
                f"{self.num_classes} classes, label counts {max(self.class_counts, default=0)}.."
                f"{min(self.class_counts, default=0)})")


#: Tags the mosaic generator's streams apart from every other seeded stream.
_MOSAIC_STREAM = 0x4D4C54


def label_rates(num_classes: int, head_rate: float, imbalance_ratio: float) -> np.ndarray:
    """``pi_c = head_rate * imbalance_ratio ** (-c / (C - 1))``: the probability that label ``c``
    is drawn for a mosaic, decaying exponentially from ``head_rate`` (class 0) to
    ``head_rate / imbalance_ratio`` (class C-1).

    Example:
        >>> [round(float(p), 3) for p in label_rates(3, 0.5, 4)]
        [0.5, 0.25, 0.125]
    """
    return head_rate * float(imbalance_ratio) ** (-np.arange(num_classes) / max(1, num_classes - 1))


def mosaics(tiles: np.ndarray, tile_labels: np.ndarray, count: int, rates: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` 2x2 mosaics and their multi-hot labels.

    Each mosaic draws its label set by one Bernoulli draw per class (``rates``), redrawn while the
    set is empty or has more than 4 labels; each label gets one uniformly drawn source image of
    its class, placed in a random tile; the tiles left over stay black (0). The label set is
    therefore exactly the distinct digits a mosaic shows.
    """
    num_classes = len(rates)
    _, _, height, width = tiles.shape
    by_class = [np.flatnonzero(tile_labels == c) for c in range(num_classes)]
    images = np.zeros((count, 1, 2 * height, 2 * width), dtype=np.uint8)
    labels = np.zeros((count, num_classes), dtype=np.float32)
    for i in range(count):
        while True:
            present = np.flatnonzero(rng.random(num_classes) < rates)
            if 1 <= len(present) <= 4:
                break
        slots = rng.permutation(4)[:len(present)]
        for c, slot in zip(present, slots):
            src = by_class[c][rng.integers(len(by_class[c]))]
            r, q = divmod(int(slot), 2)
            images[i, 0, r * height:(r + 1) * height, q * width:(q + 1) * width] = tiles[src, 0]
        labels[i, present] = 1.0
    return images, labels


@DATASETS.register("digits_mlt")
def digits_mlt(num_train: int = 2000, num_test: int = 1000, imbalance_ratio: float = 20,
               head_rate: float = 0.6, test_rate: float = 0.3, test_per_class: int = 50,
               seed: int = 0, crop_padding: int = 0) -> DataBundle:
    """Synthetic multi-label long-tailed digits: 2x2 mosaics of the embedded 8x8 digits (16x16).

    Synthetic, made here (no published protocol): every mosaic shows one to four distinct digits
    of scikit-learn's bundled set (see :mod:`lttoolbox.data.digits`) in random tiles of a 2x2
    grid (the other tiles black); its label set is the digits it shows (:func:`mosaics`). In the
    training split label ``c`` is drawn with probability :func:`label_rates` (exponential decay
    from ``head_rate`` to ``head_rate / imbalance_ratio``), so the label counts follow a long
    tail; their realised ratio is close to ``imbalance_ratio`` but not exactly it (the draw is
    random, and sets of more than four labels are redrawn). The test split draws every label
    with the same probability ``test_rate`` (balanced, as the single-label sets' test splits).
    Train and test mosaics are made from disjoint source digits: ``test_per_class`` source
    images of each digit are held out for the test mosaics. Everything is generated from
    ``seed``: the same seed gives the same mosaics.

    Recipe:
        data:
          name: digits_mlt
          imbalance_ratio: 20

    Args:
        num_train: Training mosaics.
        num_test: Test mosaics.
        imbalance_ratio: Ratio of the head and the tail label's drawing probability (>= 1).
        head_rate: Probability of label 0 in a training mosaic, in (0, 1).
        test_rate: Probability of every label in a test mosaic, in (0, 1).
        test_per_class: Source digits per class held out for the test mosaics.
        seed: Seed of the hold-out and of the mosaics.
        crop_padding: Zero padding of the training random crop (0: none).

    Returns:
        A :class:`~lttoolbox.data.DataBundle` whose splits are :class:`MultiLabelDataset`.

    Example:
        >>> bundle = digits_mlt(num_train=200, num_test=100)
        >>> bundle.multilabel, tuple(bundle.train.labels.shape), bundle.image_size
        (True, (200, 10), 16)
    """
    check_int("num_train", num_train, 1)
    check_int("num_test", num_test, 1)
    check_int("test_per_class", test_per_class, 1)
    check_int("seed", seed, 0)
    check_int("crop_padding", crop_padding, 0)
    if isinstance(imbalance_ratio, bool) or not isinstance(imbalance_ratio, (int, float)) \
            or not imbalance_ratio >= 1:
        raise ConfigError(f"imbalance_ratio must be a number >= 1, got {imbalance_ratio!r}",
                          key="imbalance_ratio")
    for name, value in (("head_rate", head_rate), ("test_rate", test_rate)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ConfigError(f"{name} must be a number in (0, 1), got {value!r}", key=name)
    tiles, source, classes = digit_images()
    smallest = int(np.bincount(source).min())
    if test_per_class >= smallest:
        raise ConfigError(f"test_per_class must leave training digits: the smallest class has "
                          f"{smallest} images, got test_per_class={test_per_class}",
                          key="test_per_class")
    rng = np.random.default_rng([seed, _MOSAIC_STREAM])
    held = np.concatenate([np.sort(rng.permutation(np.flatnonzero(source == c))[:test_per_class])
                           for c in range(len(classes))])
    pool = np.setdiff1d(np.arange(len(source)), held)
    train_x, train_y = mosaics(tiles[pool], source[pool], num_train,
                               label_rates(len(classes), head_rate, imbalance_ratio), rng)
    test_x, test_y = mosaics(tiles[held], source[held], num_test,
                             np.full(len(classes), float(test_rate)), rng)
    for split, y in (("train", train_y), ("test", test_y)):
        empty = np.flatnonzero(y.sum(0) == 0)
        if len(empty):
            raise ConfigError(f"digits_mlt: no {split} mosaic shows digit(s) "
                              f"{', '.join(classes[c] for c in empty)}; raise num_{split} or "
                              f"lower imbalance_ratio", key=f"num_{split}")
    mean, std = pixel_mean_std(train_x)
    train = MultiLabelDataset(train_x, train_y, classes, mean, std)
    test = MultiLabelDataset(test_x, test_y, classes, mean, std)
    meta = {"dataset": "digits_mlt", "synthetic": True, "multilabel": True,
            "imbalance_type": "exp", "imbalance_ratio": imbalance_ratio,
            "head_rate": head_rate, "test_rate": test_rate, "test_per_class": test_per_class,
            "seed": seed, "source_index_hash": index_hash(pool), "source": "sklearn",
            "root": None, "classes": classes, "train_class_counts": train.class_counts,
            "test_class_counts": test.class_counts, "num_train": len(train),
            "num_test": len(test), "mean": train.mean, "std": train.std,
            "crop_padding": crop_padding, "hflip": False, "path": "memory"}
    return DataBundle(train, test, BatchTransform(mean, std, crop_padding=crop_padding),
                      BatchTransform(mean, std), meta)


#: A data-set entry declares the kind of its bundles: a multi-label one (its test contract and
#: the trainer's evaluation differ from the single-label sets').
digits_mlt.multilabel = True
