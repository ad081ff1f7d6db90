"""digits_lt: scikit-learn's bundled 8x8 digits, made long-tailed (the embedded quickstart set).

``sklearn.datasets.load_digits`` (the UCI "Optical Recognition of Handwritten Digits" test set:
1,797 gray 8x8 images, values 0..16, 174..183 per class) ships with scikit-learn, so this data set
needs no download. Pixels are scaled to uint8 with ``round(x * 255 / 16)``.

Construction: a balanced test split of ``test_per_class`` images per class is held out first (a
``np.random.default_rng(selection_seed)`` permutation per class, classes in ascending order), then
the long-tail profile is applied to the rest with ``n_max`` = the smallest remaining class (124 with
the defaults), so every class can be filled: ratio 10 ``exp`` keeps 124, 96, ..., 12 images.
Digits are not flip-invariant, so the training transform crops and flips nothing unless asked.
Mean/std are computed from the remaining training pool (before the profile).

Recipe:
    data:
      name: digits_lt
      imbalance_type: exp
      imbalance_ratio: 10

Example:
    >>> bundle = digits_lt()
    >>> bundle.train.class_counts[0], bundle.train.class_counts[-1], len(bundle.test)
    (124, 12, 500)
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..registry import DATASETS
from .dataset import DataBundle, assemble, check_common, check_int, pixel_mean_std
from .strong_aug import strong_augment


def digit_images() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's bundled 8x8 digits as uint8 ``(N, 1, 8, 8)`` images (its 0..16 grey levels
    scaled to 0..255), their labels (int64) and the class names ``"0"`` .. ``"9"``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images, digits.target.astype(np.int64), [str(n) for n in digits.target_names]


@DATASETS.register("digits_lt")
def digits_lt(test_per_class: int = 50, imbalance_type: str | None = "exp",
              imbalance_ratio: float = 10, selection: str = "protocol", selection_seed: int = 0,
              crop_padding: int = 0, hflip: bool = False,
              val_per_class: int | None = None, autoaugment: str | None = None,
              randaugment: int = 0, randaugment_magnitude: int = 9, cutout: int = 0,
              cutout_holes: int = 1, cutout_fill: str = "black",
              augment_fill: int | list = 0) -> DataBundle:
    """Long-tailed 8x8 digits (10 classes, 1 channel).

    Args:
        test_per_class: Images per class held out for the balanced test split.
        imbalance_type: ``exp`` | ``step`` | ``none`` | ``null`` (keep every training image).
        imbalance_ratio: ``n_max / n_min`` (>= 1).
        selection: ``protocol`` | ``seeded`` | ``first`` (see
            :func:`~lttoolbox.data.profiles.select_long_tail`).
        selection_seed: Seed of the test hold-out and of the selection.
        crop_padding: Zero padding of the training random crop (0: none).
        hflip: Random horizontal flip during training (off: a mirrored 2 is no 2).
        val_per_class: Images per class of a balanced validation split taken from the training
            pool (see :func:`~lttoolbox.data.dataset.validation_split`); ``None``: none.
        autoaugment, randaugment, randaugment_magnitude, cutout, cutout_holes, cutout_fill,
            augment_fill: The strong augmentations of the training transform, after the
            crop and flip (all off by default); see
            :func:`~lttoolbox.data.strong_aug.strong_augment`.

    Returns:
        A :class:`~lttoolbox.data.DataBundle`.

    Example:
        >>> digits_lt(imbalance_type="none").train.class_counts == [124] * 10
        True
    """
    check_common(imbalance_type, imbalance_ratio, selection, selection_seed, crop_padding, hflip)
    strong = strong_augment(autoaugment, randaugment, randaugment_magnitude, cutout,
                            cutout_holes, cutout_fill, augment_fill)
    check_int("test_per_class", test_per_class, 1)
    images, labels, classes = digit_images()
    smallest = int(np.bincount(labels).min())
    if test_per_class >= smallest:
        raise ConfigError(f"test_per_class must leave training images: the smallest class has "
                          f"{smallest} images, got test_per_class={test_per_class}")
    rng = np.random.default_rng(selection_seed)
    test_idx = []
    for c in range(len(classes)):
        test_idx.append(np.sort(rng.permutation(np.flatnonzero(labels == c))[:test_per_class]))
    test_idx = np.concatenate(test_idx)
    pool = np.setdiff1d(np.arange(len(labels)), test_idx)  # file order
    mean, std = pixel_mean_std(images[pool])
    return assemble(
        "digits_lt", images[pool], labels[pool], images[test_idx], labels[test_idx], classes, mean,
        std, imbalance_type=imbalance_type, imbalance_ratio=imbalance_ratio, selection=selection,
        selection_seed=selection_seed, crop_padding=crop_padding, hflip=hflip, source="sklearn",
        root=None, train_index=pool, extra_meta={"test_per_class": test_per_class},
        val_per_class=val_per_class, strong=strong)
