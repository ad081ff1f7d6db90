"""Long-tail profiles and the choice of the kept training images.

The long-tailed CIFAR benchmarks (Cui et al., "Class-Balanced Loss Based on Effective Number of
Samples", CVPR 2019, Sec. 5.1; Cao et al., "Learning Imbalanced Datasets with
Label-Distribution-Aware Margin Loss" (LDAM-DRW), NeurIPS 2019, Sec. 4, Table 2) subsample a
balanced training set so that class ``i`` keeps ``n_i`` images:

* ``exp``:  ``n_i = int(n_max * (1 / ratio) ** (i / (C - 1)))`` (exponential decay, Cui et al.),
* ``step``: the first ``C // 2`` classes keep ``n_max``, the rest ``int(n_max / ratio)``
  (Buda et al., "A systematic study of the class imbalance problem in convolutional neural
  networks", Neural Networks 2018; the "step" rows of LDAM-DRW's Table 2),
* ``none``: ``n_max`` for every class.

``ratio`` is the imbalance ratio ``n_max / n_min`` (100 for the usual CIFAR-10-LT). CIFAR-10 with
``n_max = 5000`` and ratio 100 gives 5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50 (12,406
images), CIFAR-100 with ``n_max = 500`` gives 500 ... 5 (10,847 images).

Example:
    >>> long_tail_counts(5000, 10, "exp", 100)[:3]
    [5000, 2997, 1796]
    >>> long_tail_counts(5000, 10, "step", 10)
    [5000, 5000, 5000, 5000, 5000, 500, 500, 500, 500, 500]
"""
from __future__ import annotations

import hashlib
import numbers
from typing import Sequence

import numpy as np

from ..errors import ConfigError

IMBALANCE_TYPES = ("exp", "step", "none")
SELECTIONS = ("protocol", "seeded", "first")


def check_imbalance(imbalance_type: str | None, imbalance_ratio: float) -> None:
    """Validate a profile; ``imbalance_type=None`` (keep every image) is allowed here.

    Raises:
        ConfigError: unknown ``imbalance_type`` or ``imbalance_ratio`` below 1 / not a number.
    """
    if imbalance_type is not None and imbalance_type not in IMBALANCE_TYPES:
        raise ConfigError(f"imbalance_type must be one of {', '.join(IMBALANCE_TYPES)} (or null to "
                          f"keep every training image), got {imbalance_type!r}")
    if (isinstance(imbalance_ratio, bool) or not isinstance(imbalance_ratio, numbers.Real)
            or not np.isfinite(imbalance_ratio) or imbalance_ratio < 1):
        raise ConfigError(f"imbalance_ratio must be a number >= 1 (n_max / n_min), "
                          f"got {imbalance_ratio!r}")


def check_selection(selection: str, selection_seed: int) -> None:
    """Validate the selection rule and its seed.

    Raises:
        ConfigError: unknown ``selection`` or a seed that is not an integer in ``[0, 2**32)``.
    """
    if selection not in SELECTIONS:
        raise ConfigError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    if (isinstance(selection_seed, bool) or not isinstance(selection_seed, numbers.Integral)
            or not 0 <= selection_seed < 2 ** 32):
        # np.random.RandomState (the protocol rule) only takes seeds in [0, 2**32).
        raise ConfigError(f"selection_seed must be an integer in [0, 2**32), "
                          f"got {selection_seed!r}")


def long_tail_counts(n_max: int, num_classes: int, imbalance_type: str = "exp",
                     ratio: float = 100) -> list[int]:
    """Images kept per class by a long-tail profile (class 0 is the head).

    Args:
        n_max: Images of the largest (first) class.
        num_classes: Number of classes ``C``.
        imbalance_type: ``"exp"``, ``"step"`` or ``"none"``.
        ratio: Imbalance ratio ``n_max / n_min`` (>= 1).

    Returns:
        ``n_i`` for ``i = 0 .. C-1``. The product is computed as ``n_max * (1 / ratio) ** e``, the
        way the LDAM-DRW code does with ``imb_factor = 1 / ratio``, so the counts are bit-identical
        to the reference; a class may get 0 when ``n_max / ratio < 1`` (the data sets reject that).

    Raises:
        ConfigError: bad ``n_max``, ``num_classes``, ``imbalance_type`` or ``ratio``.

    Example:
        >>> long_tail_counts(500, 100, "exp", 100)[-1]
        5
    """
    if isinstance(n_max, bool) or not isinstance(n_max, numbers.Integral) or n_max < 1:
        raise ConfigError(f"n_max must be a positive integer, got {n_max!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) \
            or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if imbalance_type is None:
        raise ConfigError("imbalance_type must be one of exp, step, none, got None")
    check_imbalance(imbalance_type, ratio)
    n_max, num_classes = int(n_max), int(num_classes)
    factor = 1.0 / ratio
    if imbalance_type == "exp":
        if num_classes == 1:  # the exponent i / (C - 1) is undefined; the one class is the head
            return [n_max]
        return [int(n_max * factor ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    if imbalance_type == "step":
        # LDAM-DRW appends C // 2 tail classes, which drops the last class when C is odd; here
        # every class after the first C // 2 is a tail class.
        head = num_classes // 2
        return [n_max] * head + [int(n_max * factor)] * (num_classes - head)
    return [n_max] * num_classes


def select_long_tail(labels: np.ndarray, counts: Sequence[int], selection: str = "protocol",
                     seed: int = 0) -> np.ndarray:
    """Indices of the kept images: ``counts[c]`` images of each class ``c``.

    Args:
        labels: Class id of every image of the full (balanced) split, 1-D integers.
        counts: Images to keep per class (``len(counts)`` classes).
        selection: How the ``counts[c]`` images of a class are chosen:

            * ``"protocol"``: LDAM-DRW's ``gen_imbalanced_data``: seed numpy's legacy generator once
              with ``seed``, then for each class in ascending order shuffle its indices and keep
              the first ``counts[c]``. A private ``np.random.RandomState(seed)`` replays exactly the
              stream of ``np.random.seed(seed)`` without touching numpy's global state.
            * ``"seeded"``: an independent ``np.random.default_rng([seed, c])`` per class, so one
              class's choice never depends on the size of another class.
            * ``"first"``: the first ``counts[c]`` images of the class in file order.
        seed: Selection seed (``selection_seed`` in recipes).

    Returns:
        int64 indices into ``labels``, grouped by class in ascending order (as the reference
        concatenates them), in the chosen order within a class.

    Raises:
        ConfigError: a class has fewer than ``counts[c]`` images, or a bad ``selection``/``seed``.

    Example:
        >>> labels = np.array([0, 0, 0, 1, 1, 1])
        >>> select_long_tail(labels, [2, 1], "first").tolist()
        [0, 1, 3]
    """
    check_selection(selection, seed)
    labels = np.asarray(labels)
    legacy = np.random.RandomState(seed) if selection == "protocol" else None
    kept = []
    for c, n in enumerate(counts):
        idx = np.flatnonzero(labels == c).astype(np.int64)
        if n > len(idx):
            raise ConfigError(f"class {c} has {len(idx)} images, the profile asks for {n}")
        if selection == "protocol":
            legacy.shuffle(idx)
        elif selection == "seeded":
            idx = np.random.default_rng([int(seed), c]).permutation(idx)
        kept.append(idx[:n])
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


def index_hash(indices: np.ndarray) -> str:
    """sha1 (hex) of indices as little-endian int64 bytes, in the given order.

    Example:
        >>> index_hash(np.array([0, 1]))[:8]
        '031ee807'
    """
    return hashlib.sha1(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()
