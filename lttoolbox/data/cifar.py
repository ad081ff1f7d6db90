"""CIFAR-10-LT and CIFAR-100-LT (Cui et al., CVPR 2019, Sec. 5.1; Cao et al., NeurIPS 2019).

The balanced CIFAR training split (Krizhevsky, "Learning Multiple Layers of Features from Tiny
Images", 2009: 5,000 / 500 images per class) is subsampled with a long-tail profile
(:mod:`lttoolbox.data.profiles`); the 10,000-image test split stays balanced. Two layouts are read:

* the python-pickle release (``cifar-10-batches-py`` / ``cifar-100-python``), at ``root`` or
  ``root/<that folder>``; with ``download: true`` torchvision fetches it into ``root`` when nothing
  is found;
* an image-folder tree ``root/train/<class>/*.png|jpg|jpeg`` and ``root/test/<class>/...``, decoded
  once and cached (:mod:`lttoolbox.data.folder_io`). For CIFAR-10 the labels follow CIFAR-10's own
  class order (airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck) when the folder
  names are exactly those, else the sorted folder names (CIFAR-100's own order is alphabetical).

When both layouts are present the pickle wins: it is the lossless original in its file order, the
order LDAM-DRW's ``protocol`` selection indexes, so the kept images are exactly the reference's.

Normalisation: CIFAR-10 uses the constants of the LDAM-DRW code, mean ``(0.4914, 0.4822,
0.4465)`` and std ``(0.2023, 0.1994, 0.2010)``; that std is not the pixel standard deviation of
the training set (about ``(0.247, 0.243, 0.261)``), but every published LDAM-DRW-based number
used it. CIFAR-100 defaults to its own statistics, ``(0.5071, 0.4865, 0.4409)`` and ``(0.2673,
0.2564, 0.2762)``. The LDAM-DRW code (``cifar_train.py``, lines 141-151 at
https://github.com/kaidic/LDAM-DRW/blob/2536330f2afdaa65618323cb5a5850efccce762a/cifar_train.py)
and Bag of Tricks' ``cao_cifar.py`` apply the CIFAR-10 constants to CIFAR-100 as well, so the
CIFAR-100-LT protocol recipes set ``mean`` and ``std`` to them (configs/cifar100_lt/base.yaml).

Recipe:
    data:
      name: cifar10_lt
      root: ../shared/data/cifar10-jpg
      imbalance_type: exp
      imbalance_ratio: 100

Example:
    >>> from lttoolbox.registry import DATASETS
    >>> bundle = DATASETS.build({"name": "cifar10_lt", "root": "data/cifar"})  # doctest: +SKIP
    >>> bundle.train.class_counts[:3]                                        # doctest: +SKIP
    [5000, 2997, 1796]
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..checks import check_bool
from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .dataset import DataBundle, assemble, cap_per_class, check_common, check_int
from .folder_io import load_folder_splits
from .strong_aug import strong_augment

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")

_SPECS = {
    10: dict(folder="cifar-10-batches-py",
             train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
             meta="batches.meta", names_key="label_names", labels_key="labels",
             mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010)),
    100: dict(folder="cifar-100-python", train=["train"], test=["test"],
              meta="meta", names_key="fine_label_names", labels_key="fine_labels",
              mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
}


def _unpickle(path: Path) -> dict:
    """A CIFAR pickle with ``str`` keys (the files are Python 2 pickles; test fixtures may have
    ``bytes`` keys)."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except FileNotFoundError:
        raise DataError(f"missing CIFAR file {path}") from None
    except Exception as err:
        raise DataError(f"cannot read CIFAR pickle {path}: {type(err).__name__}: {err}") from None
    if not isinstance(entry, dict):
        raise DataError(f"CIFAR pickle {path} does not hold a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _read_batches(folder: Path, files: list[str], labels_key: str, num_classes: int):
    images, labels = [], []
    for name in files:
        path = folder / name
        entry = _unpickle(path)
        if "data" not in entry or labels_key not in entry:
            raise DataError(f"CIFAR pickle {path} lacks 'data' or '{labels_key}'")
        data = np.asarray(entry["data"])
        target = np.asarray(entry[labels_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 \
                or len(target) != len(data):
            raise DataError(f"CIFAR pickle {path}: expected uint8 data of shape (N, 3072) and N "
                            f"labels, got {data.dtype} {data.shape} and {len(target)} labels")
        if len(target) and (target.min() < 0 or target.max() >= num_classes):
            raise DataError(f"CIFAR pickle {path}: labels outside [0, {num_classes})")
        images.append(data.reshape(-1, 3, 32, 32))  # rows are R, G, B planes of 32x32: NCHW
        labels.append(target)
    return np.concatenate(images), np.concatenate(labels)


def load_cifar_pickle(folder: Path, num_classes: int):
    """Read a CIFAR python-pickle folder.

    Returns:
        ``(classes, train_images, train_labels, test_images, test_labels)``, images uint8 NCHW in
        file order.

    Raises:
        DataError: a missing, unreadable or malformed file (named).
    """
    spec = _SPECS[num_classes]
    meta_path = folder / spec["meta"]
    if meta_path.is_file():
        names = _unpickle(meta_path).get(spec["names_key"])
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in (names or [])]
        if len(classes) != num_classes:
            raise DataError(f"{meta_path}: expected {num_classes} names under "
                            f"'{spec['names_key']}', got {len(classes)}")
    elif num_classes == 10:
        classes = list(CIFAR10_CLASSES)
    else:
        raise DataError(f"missing CIFAR file {meta_path}")
    train = _read_batches(folder, spec["train"], spec["labels_key"], num_classes)
    test = _read_batches(folder, spec["test"], spec["labels_key"], num_classes)
    return classes, *train, *test


def find_layout(root: Path, num_classes: int) -> tuple[str, Path] | None:
    """``("pickle", folder)``, ``("folder", root)`` or ``None`` when ``root`` holds neither."""
    spec = _SPECS[num_classes]
    first = spec["train"][0]
    for candidate in (root / spec["folder"], root):
        if (candidate / first).is_file():
            return "pickle", candidate
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "folder", root
    return None


def _download(root: Path, num_classes: int) -> None:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if num_classes == 10 else torchvision.datasets.CIFAR100
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=True, download=True)
    except Exception as err:
        raise DataError(f"downloading CIFAR-{num_classes} into {root} failed: "
                        f"{type(err).__name__}: {err}") from None


def load_cifar(num_classes: int, root, imbalance_type, imbalance_ratio, selection, selection_seed,
               crop_padding, hflip, download, cache_dir, max_per_class,
               test_max_per_class, mean=None, std=None, val_per_class=None,
               strong=None) -> DataBundle:
    """Shared body of :func:`cifar10_lt` and :func:`cifar100_lt`."""
    check_common(imbalance_type, imbalance_ratio, selection, selection_seed, crop_padding, hflip)
    mean = _check_channels("mean", mean, _SPECS[num_classes]["mean"], positive=False)
    std = _check_channels("std", std, _SPECS[num_classes]["std"], positive=True)
    check_int("max_per_class", max_per_class, 1, optional=True)
    check_int("test_max_per_class", test_max_per_class, 1, optional=True)
    check_bool("download", download)
    if root is None or str(root) == "":
        raise ConfigError("root is required: the folder holding the CIFAR data "
                          f"({_SPECS[num_classes]['folder']}/ or train/ and test/ image folders)")
    spec = _SPECS[num_classes]
    root = Path(str(root)).expanduser().absolute()
    layout = find_layout(root, num_classes)
    if layout is None and download:
        _download(root, num_classes)
        layout = find_layout(root, num_classes)
    if layout is None:
        what = "does not exist" if not root.exists() else "holds no CIFAR data"
        raise DataError(f"{root} {what}: expected {spec['folder']}/ (python pickle) or "
                        f"train/<class>/ and test/<class>/ image folders; set download: true "
                        f"to fetch the pickle release")
    kind, path = layout
    if kind == "pickle":
        classes, train_x, train_y, test_x, test_y = load_cifar_pickle(path, num_classes)
        train_index = cap_per_class(train_y, num_classes, max_per_class)
        test_index = cap_per_class(test_y, num_classes, test_max_per_class)
        train_x, train_y = train_x[train_index], train_y[train_index]
        test_x, test_y = test_x[test_index], test_y[test_index]
    else:
        train_names = Path(path / "train")
        names = sorted(p.name for p in train_names.iterdir()
                       if p.is_dir() and not p.name.startswith("."))
        if len(names) != num_classes:
            raise DataError(f"{train_names} has {len(names)} class folders, CIFAR-{num_classes} "
                            f"needs {num_classes}")
        order = list(CIFAR10_CLASSES) if num_classes == 10 and set(names) == set(
            CIFAR10_CLASSES) else names
        classes, (train_x, train_y, train_index), (test_x, test_y), _ = load_folder_splits(
            path, "train", "test", 32, cache_dir, order, max_per_class, test_max_per_class)
    return assemble(
        f"cifar{num_classes}_lt", train_x, train_y, test_x, test_y, classes, mean, std,
        imbalance_type=imbalance_type, imbalance_ratio=imbalance_ratio,
        selection=selection, selection_seed=selection_seed, crop_padding=crop_padding,
        hflip=hflip, source=kind, root=str(path), train_index=train_index,
        extra_meta={"max_per_class": max_per_class, "test_max_per_class": test_max_per_class},
        val_per_class=val_per_class, strong=strong)


def _check_channels(name: str, value, default: tuple, positive: bool) -> tuple:
    """Three per-channel constants on the 0..1 scale, or the data set's default for ``None``."""
    if value is None:
        return default
    ok = (isinstance(value, (list, tuple)) and len(value) == 3
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
    if not ok or (positive and not all(v > 0 for v in value)):
        what = "three positive numbers" if positive else "three numbers"
        raise ConfigError(f"{name} must be {what} (one per RGB channel, 0..1 scale), got {value!r}")
    return tuple(float(v) for v in value)


def _entry(name: str, num_classes: int, doc: str):
    """Register the data set ``name``, CIFAR with ``num_classes`` classes: both take the same
    recipe."""

    def entry(root: str | None = None, imbalance_type: str | None = "exp",
              imbalance_ratio: float = 100, selection: str = "protocol", selection_seed: int = 0,
              crop_padding: int = 4, hflip: bool = True, download: bool = False,
              cache_dir: str | None = None, max_per_class: int | None = None,
              test_max_per_class: int | None = None, mean: list | None = None,
              std: list | None = None, val_per_class: int | None = None,
              autoaugment: str | None = None, randaugment: int = 0,
              randaugment_magnitude: int = 9, cutout: int = 0, cutout_holes: int = 1,
              cutout_fill: str = "black", augment_fill: int | list = 0) -> DataBundle:
        return load_cifar(num_classes, root, imbalance_type, imbalance_ratio, selection,
                          selection_seed, crop_padding, hflip, download, cache_dir,
                          max_per_class, test_max_per_class, mean, std, val_per_class,
                          strong_augment(autoaugment, randaugment, randaugment_magnitude,
                                         cutout, cutout_holes, cutout_fill, augment_fill))

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = doc
    return DATASETS.register(name)(entry)


CIFAR10_LT_DOC = """CIFAR-10-LT: CIFAR-10 with a long-tailed training split.

    Args:
        root: Folder with ``cifar-10-batches-py`` (or that folder itself) or ``train/`` + ``test/``
            image folders. Relative paths are taken from the working directory.
        imbalance_type: ``exp`` | ``step`` | ``none`` (``null`` keeps every training image).
        imbalance_ratio: ``n_max / n_min`` (>= 1); 100 gives 5000 ... 50 images per class.
        selection: ``protocol`` (LDAM-DRW's shuffle), ``seeded`` or ``first``; see
            :func:`~lttoolbox.data.profiles.select_long_tail`.
        selection_seed: Seed of the selection.
        crop_padding: Zero padding of the training random crop (He et al. 2016 use 4).
        hflip: Random horizontal flip during training.
        download: Fetch the pickle release with torchvision into ``root`` when nothing is found.
        cache_dir: Decode cache for image folders (default ``$LTTOOLBOX_CACHE`` or
            ``~/.cache/lttoolbox``).
        max_per_class: Keep only the first images of each training class (file order) before the
            profile; for smoke runs on a slice.
        test_max_per_class: The same for the test split.
        mean: Per-channel normalisation mean on the 0..1 scale (default: the LDAM-DRW code's
            CIFAR-10 constants for CIFAR-10, CIFAR-100's own statistics for CIFAR-100).
        std: Per-channel normalisation std, the same way.
        val_per_class: Images per class of a balanced validation split drawn from the training
            images the profile leaves unused (at ratio 100 CIFAR-10-LT uses 12,406 of 50,000);
            a class with fewer unused images gives up the shortfall from its kept ones (with 20,
            class 0 trains on 4,980 instead of 5,000). ``None`` (default): no validation split,
            the profile exactly as published. See
            :func:`~lttoolbox.data.dataset.validation_split`.
        autoaugment, randaugment, randaugment_magnitude, cutout, cutout_holes, cutout_fill,
            augment_fill: The strong augmentations of the training transform, after the
            crop and flip (all off by default); see
            :func:`~lttoolbox.data.strong_aug.strong_augment`.

    Returns:
        A :class:`~lttoolbox.data.DataBundle`.

    Example:
        >>> bundle = cifar10_lt("data/cifar", imbalance_ratio=10)  # doctest: +SKIP
        >>> bundle.train.class_counts[-1]                          # doctest: +SKIP
        500
    """

CIFAR100_LT_DOC = """CIFAR-100-LT: CIFAR-100 (fine labels) with a long-tailed training split.

    Same parameters as :func:`cifar10_lt`, with ``cifar-100-python`` as the pickle folder; ratio
    100 gives 500 ... 5 images per class (10,847 in all).

    Example:
        >>> bundle = cifar100_lt("data/cifar")  # doctest: +SKIP
        >>> bundle.train.class_counts[0], bundle.train.class_counts[-1]  # doctest: +SKIP
        (500, 5)
    """

cifar10_lt = _entry("cifar10_lt", 10, CIFAR10_LT_DOC)
cifar100_lt = _entry("cifar100_lt", 100, CIFAR100_LT_DOC)
