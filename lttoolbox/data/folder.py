"""Any ``root/<split>/<class>/*.png|jpg|jpeg`` tree as a long-tailed data set.

Class ids follow the sorted class-folder names (as torchvision's ``ImageFolder``); images are read
as RGB and resized to ``image_size`` x ``image_size`` (bilinear, aspect ratio not kept), decoded
once and cached (:mod:`lttoolbox.data.folder_io`). The long-tail profile is applied to the training
split exactly as for CIFAR, with ``n_max`` the smallest training class; ``imbalance_type: null``
keeps a folder that is long-tailed already as it is.

To evaluate a trained model (``lteval``), only the test images are read: ``root/test_dir`` or,
when there is no such folder, ``root`` itself holding the class folders; no training folder is
needed and no profile is applied (see :func:`evaluation_bundle`).

Recipe:
    data:
      name: image_folder
      root: data/my_set
      image_size: 32
      imbalance_type: exp
      imbalance_ratio: 50

Example:
    >>> bundle = image_folder("data/my_set", imbalance_type=None)  # doctest: +SKIP
    >>> bundle.train.mean                                          # doctest: +SKIP
    (0.49, 0.48, 0.45)
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .dataset import (DataBundle, LTDataset, assemble, check_common, check_int,
                      check_path_options, stream_options)
from .folder_io import load_folder_splits, load_test_folder
from .strong_aug import strong_augment


def _check_stats(mean, std) -> None:
    if (mean is None) != (std is None):
        raise ConfigError("give both mean and std, or neither (then they are computed from the "
                          "training images)")
    if mean is None:
        return
    for name, value in (("mean", mean), ("std", std)):
        if not isinstance(value, (list, tuple)) or len(value) != 3 \
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{name} must be a list of 3 numbers (RGB, 0..1 scale), "
                              f"got {value!r}")
    if any(s <= 0 for s in std):
        raise ConfigError(f"std must be positive, got {std!r}")


@DATASETS.register("image_folder")
def image_folder(root: str | None = None, train_dir: str = "train", test_dir: str = "test",
                 image_size: int = 32, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, imbalance_type: str | None = "exp",
                 imbalance_ratio: float = 100, selection: str = "protocol",
                 selection_seed: int = 0, crop_padding: int = 4, hflip: bool = True,
                 cache_dir: str | None = None, max_per_class: int | None = None,
                 test_max_per_class: int | None = None, val_dir: str | None = None,
                 val_per_class: int | None = None, path: str = "auto",
                 color_jitter: float = 0.0, eval_resize: int | None = None,
                 decoder: str = "pil", run_data: dict | None = None,
                 autoaugment: str | None = None, randaugment: int = 0,
                 randaugment_magnitude: int = 9, cutout: int = 0, cutout_holes: int = 1,
                 cutout_fill: str = "black", augment_fill: int | list = 0) -> DataBundle:
    """A long-tailed data set from an image-folder tree.

    Args:
        root: Folder holding ``train_dir`` and ``test_dir``.
        train_dir: Training split folder name under ``root``.
        test_dir: Test split folder name under ``root``.
        image_size: Side of the square images after resizing.
        mean: Per-channel RGB mean (0..1); ``None`` computes it from the training images as loaded
            (after ``max_per_class``, before the long-tail profile), like the CIFAR constants were
            computed on the full balanced training set.
        std: Per-channel pixel standard deviation (0..1); given together with ``mean``.
        imbalance_type: ``exp`` | ``step`` | ``none`` | ``null`` (keep every training image).
        imbalance_ratio: ``n_max / n_min`` (>= 1).
        selection: ``protocol`` | ``seeded`` | ``first``.
        selection_seed: Seed of the selection.
        crop_padding: Zero padding of the training random crop.
        hflip: Random horizontal flip during training.
        cache_dir: Decode cache (default ``$LTTOOLBOX_CACHE`` or ``~/.cache/lttoolbox``).
        max_per_class: Keep only the first images (by file name) of each training class.
        test_max_per_class: The same for the test split.
        val_dir: A validation split folder beside ``train_dir`` (``val/<class>/...``, the same
            classes), for post-hoc choices that must not be made on the test set.
        val_per_class: Or a balanced validation split of this many images per class drawn from
            the training images the profile leaves unused (see
            :func:`~lttoolbox.data.dataset.validation_split`). Not both.
        path: ``memory`` | ``stream`` | ``auto`` (see :func:`check_path_options`).
        color_jitter: Streaming path only: brightness/contrast/saturation jitter strength.
        eval_resize: Streaming path only: shorter side before the evaluation centre crop
            (default ``image_size * 256 / 224``).
        decoder: Streaming path only: ``pil`` or ``torchvision``.
        autoaugment, randaugment, randaugment_magnitude, cutout, cutout_holes, cutout_fill,
            augment_fill: The strong augmentations of the training transform, after the
            crop and flip (all off by default); see
            :func:`~lttoolbox.data.strong_aug.strong_augment`.

        run_data: Context, given by ``lteval``: the data facts of a trained model (its
            ``data.json``). Only the test images are then read, labelled by the model's class
            names (see :func:`evaluation_bundle`).

    Returns:
        A :class:`~lttoolbox.data.DataBundle`.

    Example:
        >>> bundle = image_folder("data/flowers", image_size=64)  # doctest: +SKIP
    """
    check_common(imbalance_type, imbalance_ratio, selection, selection_seed, crop_padding, hflip)
    check_int("image_size", image_size, 1)
    check_int("max_per_class", max_per_class, 1, optional=True)
    check_int("test_max_per_class", test_max_per_class, 1, optional=True)
    _check_stats(mean, std)
    for name, value in (("train_dir", train_dir), ("test_dir", test_dir)):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{name} must be a folder name, got {value!r}")
    if root is None or str(root) == "":
        raise ConfigError("root is required: the folder holding train/<class>/ and test/<class>/")
    root = Path(str(root)).expanduser().absolute()
    if not root.is_dir():
        raise DataError(f"image folder root {root} does not exist")
    if val_dir is not None and (not isinstance(val_dir, str) or not val_dir):
        raise ConfigError(f"val_dir must be a folder name, got {val_dir!r}")
    if val_dir is not None and val_per_class is not None:
        raise ConfigError("give val_dir (a validation folder) or val_per_class (drawn from the "
                          "unused training images), not both")
    check_path_options(path, color_jitter, eval_resize, image_size, decoder)
    strong = strong_augment(autoaugment, randaugment, randaugment_magnitude, cutout,
                            cutout_holes, cutout_fill, augment_fill)
    if run_data is not None:
        return evaluation_bundle(root, test_dir, image_size, run_data, cache_dir,
                                 test_max_per_class, path, eval_resize, decoder)
    classes, (train_x, train_y, train_index), (test_x, test_y), info = load_folder_splits(
        root, train_dir, test_dir, image_size, cache_dir, None, max_per_class, test_max_per_class,
        path)
    val_split = None
    if val_dir is not None:
        _, _, (val_x, val_y), _ = load_folder_splits(root, train_dir, val_dir, image_size,
                                                     cache_dir, classes, max_per_class,
                                                     path=info["path"])
        val_split = (val_x, val_y)
    mean, std, stream = stream_options(info["path"], train_x, mean, std, image_size,
                                       color_jitter, eval_resize, decoder)
    return assemble(
        "image_folder", train_x, train_y, test_x, test_y, classes, mean, std,
        imbalance_type=imbalance_type, imbalance_ratio=imbalance_ratio, selection=selection,
        selection_seed=selection_seed, crop_padding=crop_padding, hflip=hflip, source="folder",
        root=str(root), train_index=train_index,
        extra_meta={"image_size": image_size, "train_dir": train_dir, "test_dir": test_dir,
                    "val_dir": val_dir, "max_per_class": max_per_class,
                    "test_max_per_class": test_max_per_class},
        val_per_class=val_per_class, val_split=val_split, stream=stream, strong=strong)


def evaluation_bundle(root: Path, test_dir: str, image_size: int, run_data: dict,
                      cache_dir: str | None = None, test_max_per_class: int | None = None,
                      path: str = "auto", eval_resize: int | None = None,
                      decoder: str = "pil") -> DataBundle:
    """The test images of a folder, to evaluate a trained model on; nothing else is read.

    The images are ``root/test_dir/<class>/*`` or, without such a folder, ``root/<class>/*``.
    Each image is labelled by the index of its folder's name among the model's classes, so the
    folder may hold some of the classes only, and a folder named otherwise is refused. Nothing is
    re-sampled: a long-tail profile shapes a training split, and there is none here (the training
    split of the bundle is empty), so the options that shape one (``imbalance_*``,
    ``selection*``, ``max_per_class``, ``val_*``, the training augmentations) play no part. The
    images are read as the model's training images were: on the streaming path when the run
    streamed (resized to ``eval_resize``, centre-cropped), else decoded to ``image_size``
    squares; they are normalised with the run's statistics.

    Args:
        root: The folder (absolute).
        test_dir: The test split's folder name under ``root``, if there is one.
        image_size: Side of the square images (the run's unless the recipe says otherwise).
        run_data: The run's ``data.json``: ``classes``, ``in_channels``, ``mean``, ``std`` and,
            for a streamed run, ``path`` and ``eval_resize``.
        path: ``auto`` reads the images as the run read its own; ``memory`` or ``stream``.

    Raises:
        DataError: a model that does not take RGB images, a class folder that is not one of the
            model's classes, or any listing/decoding error.

    Example:
        >>> info = {"classes": ["cat", "dog"], "in_channels": 3, "image_size": 32,
        ...         "mean": [0.5] * 3, "std": [0.25] * 3}
        >>> bundle = evaluation_bundle(Path("my/test"), "test", 32, info)  # doctest: +SKIP
        >>> len(bundle.train), bundle.test.class_counts                     # doctest: +SKIP
        (0, [50, 50])
    """
    from .stream import FileSplit, StreamTransform
    from .transforms import BatchTransform

    if run_data["in_channels"] != 3:
        raise DataError(f"image_folder reads RGB images; the model takes {run_data['in_channels']} "
                        f"channel(s)")
    folder = root / test_dir if (root / test_dir).is_dir() else root
    classes = list(run_data["classes"])
    mean, std = tuple(run_data["mean"]), tuple(run_data["std"])
    if path == "auto":
        path = run_data.get("path", "memory")
    if path == "stream" and eval_resize is None:
        eval_resize = run_data.get("eval_resize")
    images, labels, _ = load_test_folder(folder, classes, image_size, cache_dir,
                                               test_max_per_class, path)
    if path == "stream":
        test = FileSplit(images, labels, classes, mean, std, image_size, decoder)
        train = FileSplit([], [], classes, mean, std, image_size, decoder)
        transform = StreamTransform(image_size, False, resize=eval_resize)
        eval_resize = transform.resize
    else:
        test = LTDataset(images, labels, classes, mean, std)
        train = LTDataset(images[:0], labels[:0], classes, mean, std)
        transform = BatchTransform(mean, std)
    meta = {"dataset": "image_folder", "evaluation_only": True, "source": "folder",
            "root": str(root), "test_folder": str(folder), "classes": classes,
            "test_class_counts": test.class_counts, "num_test": len(test),
            "image_size": image_size, "test_max_per_class": test_max_per_class, "path": path,
            "mean": list(mean), "std": list(std)}
    if path == "stream":
        meta.update(eval_resize=eval_resize, decoder=decoder)
    return DataBundle(train, test, transform, transform, meta)
