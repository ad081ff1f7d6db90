"""Data sets given by split files: ImageNet-LT, Places-LT (``txt_list``) and iNaturalist 2018
(``inaturalist``).

The split files (parsed by :mod:`lttoolbox.data.split_files`) say which image of ``root`` belongs
to which split and class. The images are then handled exactly as ``image_folder`` handles its
trees: read as RGB, resized to ``image_size`` x ``image_size`` (bilinear, aspect ratio not kept),
decoded once and cached (:mod:`lttoolbox.data.folder_io`), held in memory as uint8. These sets are
long-tailed already, so ``imbalance_type`` defaults to ``null`` (every listed training image).

Recipe:
    data:
      name: txt_list
      root: /data/imagenet
      train_list: data/ImageNet_LT/ImageNet_LT_train.txt
      test_list: data/ImageNet_LT/ImageNet_LT_test.txt
      val_list: data/ImageNet_LT/ImageNet_LT_val.txt
      num_classes: 1000
      image_size: 64

Example:
    >>> bundle = inaturalist("/data/inat2018", "train2018.json", "val2018.json")  # doctest: +SKIP
    >>> bundle.num_classes                                                        # doctest: +SKIP
    8142
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .path_choice import choose_path
from .dataset import (DataBundle, assemble, cap_per_class, check_common, check_int,
                      check_path_options, stream_options)
from .folder import _check_stats as check_stats
from .folder_io import SplitListing, file_paths, load_split
from .split_files import SplitEntry, read_inaturalist_json, read_txt_list
from .strong_aug import strong_augment


def _check_recipe(image_size, num_classes, max_per_class, test_max_per_class, mean, std,
                  val_per_class, files: dict[str, str | None], optional: tuple[str, ...] = ()):
    """ConfigError for bad recipe values, before any file is read."""
    check_int("image_size", image_size, 1)
    check_int("num_classes", num_classes, 1, optional=True)
    check_int("max_per_class", max_per_class, 1, optional=True)
    check_int("test_max_per_class", test_max_per_class, 1, optional=True)
    check_int("val_per_class", val_per_class, 1, optional=True)
    check_stats(mean, std)
    for key, value in files.items():
        if value is None and key in optional:
            continue
        if value is None or isinstance(value, bool) or not isinstance(value, (str, Path)) \
                or not str(value):
            raise ConfigError(f"{key} is required: the path of the split file"
                              if value is None else f"{key} must be a file path, got {value!r}")


def _root(root) -> Path:
    """The data root as an absolute path; ConfigError when not given, DataError when missing."""
    if root is None or isinstance(root, bool) or str(root) == "":
        raise ConfigError("root is required: the folder the split files' image paths start from")
    root = Path(str(root)).expanduser().absolute()
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist")
    return root


def _every_class(entries: list[SplitEntry], num_classes: int, why: str) -> None:
    """Every class has an image in this split; the error names the file and ``why`` there are
    ``num_classes`` classes."""
    counts = np.bincount([e.label for e in entries], minlength=num_classes)
    empty = np.flatnonzero(counts == 0).tolist()
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        raise DataError(f"{entries[0].source}: no image of class(es) {shown}: it has "
                        f"{num_classes - len(empty)} classes, {why}")


def _disjoint(first: list[SplitEntry], second: list[SplitEntry]) -> None:
    """No image in two splits (a test image seen in training inflates every number)."""
    seen = {e.path: e for e in first}
    for entry in second:
        if entry.path in seen:
            raise DataError(f"{entry.where}: {entry.path} is also in {seen[entry.path].where}; "
                            f"splits must not share images")


def _decode(entries: list[SplitEntry], root: Path, classes: list[str], image_size: int,
            cache_dir, cap: int | None, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (file paths on the streaming path), labels and positions in the split file of the
    first ``cap`` images per class."""
    labels = np.asarray([e.label for e in entries], dtype=np.int64)
    keep = cap_per_class(labels, len(classes), cap)
    kept = [entries[i] for i in keep]
    listing = SplitListing(root, classes, [e.path for e in kept], labels[keep],
                           [e.size for e in kept], [e.mtime for e in kept])
    images, _ = (file_paths(listing) if path == "stream" else
                 load_split(listing, image_size, cache_dir))
    return images, labels[keep], keep


def _bundle(name: str, source: str, root: Path, classes: list[str],
            train: list[SplitEntry], test: list[SplitEntry], val: list[SplitEntry] | None, *,
            image_size, mean, std, imbalance_type, imbalance_ratio, selection, selection_seed,
            crop_padding, hflip, cache_dir, max_per_class, test_max_per_class, val_per_class,
            path, color_jitter, eval_resize, decoder, extra_meta: dict,
            strong=None) -> DataBundle:
    """Decode the listed splits (or keep their paths, to stream them) and assemble the bundle as
    ``image_folder`` does."""
    _disjoint(train, test)
    if val is not None:
        _disjoint(train, val)
        _disjoint(test, val)
    if path == "auto":
        labels = np.asarray([e.label for e in train], dtype=np.int64)
        path = choose_path(path, len(cap_per_class(labels, len(classes), max_per_class)),
                           image_size)
    train_x, train_y, train_index = _decode(train, root, classes, image_size, cache_dir,
                                            max_per_class, path)
    test_x, test_y, _ = _decode(test, root, classes, image_size, cache_dir, test_max_per_class,
                                path)
    val_split = None
    if val is not None:
        val_x, val_y, _ = _decode(val, root, classes, image_size, cache_dir, None, path)
        val_split = (val_x, val_y)
    mean, std, stream = stream_options(path, train_x, mean, std, image_size, color_jitter,
                                       eval_resize, decoder)
    return assemble(
        name, train_x, train_y, test_x, test_y, classes, mean, std,
        imbalance_type=imbalance_type, imbalance_ratio=imbalance_ratio, selection=selection,
        selection_seed=selection_seed, crop_padding=crop_padding, hflip=hflip, source=source,
        root=str(root), train_index=train_index,
        extra_meta={"image_size": image_size, "max_per_class": max_per_class,
                    "test_max_per_class": test_max_per_class, **extra_meta},
        val_per_class=val_per_class, val_split=val_split, stream=stream, strong=strong)


@DATASETS.register("txt_list")
def txt_list(root: str | None = None, train_list: str | None = None,
             test_list: str | None = None, val_list: str | None = None,
             num_classes: int | None = None, image_size: int = 32,
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             imbalance_type: str | None = None, imbalance_ratio: float = 100,
             selection: str = "protocol", selection_seed: int = 0, crop_padding: int = 4,
             hflip: bool = True, cache_dir: str | None = None, max_per_class: int | None = None,
             test_max_per_class: int | None = None,
             val_per_class: int | None = None, path: str = "auto", color_jitter: float = 0.0,
             eval_resize: int | None = None, decoder: str = "pil",
             autoaugment: str | None = None, randaugment: int = 0,
             randaugment_magnitude: int = 9, cutout: int = 0, cutout_holes: int = 1,
             cutout_fill: str = "black", augment_fill: int | list = 0) -> DataBundle:
    """A long-tailed data set from ``<relative/path> <label>`` lists (ImageNet-LT, Places-LT).

    Labels are the integers of the lists; the classes are ``0 .. C-1`` with ``C`` = ``num_classes``
    or, without it, the highest training label + 1. Every class needs a training and a test image.
    Samples keep the order of the lists (the source numbering of ``kept_index_hash``).

    Args:
        root: Folder the listed paths are relative to (e.g. the ImageNet folder holding
            ``train/`` and ``val/``).
        train_list: Training list (``ImageNet_LT_train.txt``); a relative path is taken from the
            working directory, like ``root``.
        test_list: Test list (``ImageNet_LT_test.txt``).
        val_list: Optional validation list (``ImageNet_LT_val.txt``), for post-hoc choices that
            must not be made on the test set.
        num_classes: Expected class count; a label at or above it, or a class without training
            image, is an error naming the list.
        image_size: Side of the square images after resizing.
        mean: Per-channel RGB mean (0..1); ``None`` computes it from the training images as
            loaded (after ``max_per_class``, before the profile).
        std: Per-channel pixel standard deviation (0..1); given together with ``mean``.
        imbalance_type: ``null`` (default: keep the list as it is) | ``exp`` | ``step`` | ``none``.
        imbalance_ratio: ``n_max / n_min`` (>= 1) when a profile is applied.
        selection: ``protocol`` | ``seeded`` | ``first``.
        selection_seed: Seed of the selection.
        crop_padding: Zero padding of the training random crop.
        hflip: Random horizontal flip during training.
        cache_dir: Decode cache (default ``$LTTOOLBOX_CACHE`` or ``~/.cache/lttoolbox``).
        max_per_class: Keep only the first listed images of each training class.
        test_max_per_class: The same for the test list.
        val_per_class: Or a balanced validation split drawn from the training images the profile
            leaves unused (see :func:`~lttoolbox.data.dataset.validation_split`). Not with
            ``val_list``.
        path: ``memory`` (decode once, hold uint8 in memory) | ``stream`` (read every image
            from its file during training, :mod:`lttoolbox.data.stream`) | ``auto`` (stream when
            the decoded training images would take more than 4 GiB).
        color_jitter: Streaming path: brightness/contrast/saturation jitter (0.4 for ImageNet-LT
            and Places-LT in the reference codebases, 0 for iNaturalist).
        eval_resize: Streaming path: shorter side before the evaluation centre crop (default
            ``image_size * 256 / 224``).
        decoder: Streaming path: ``pil`` (default) or ``torchvision``.
        autoaugment, randaugment, randaugment_magnitude, cutout, cutout_holes, cutout_fill,
            augment_fill: The strong augmentations of the training transform, after the
            crop and flip (all off by default); see
            :func:`~lttoolbox.data.strong_aug.strong_augment`.

    Returns:
        A :class:`~lttoolbox.data.DataBundle`.

    Example:
        >>> bundle = txt_list("/data/places365_standard", "Places_LT_train.txt",
        ...                   "Places_LT_test.txt", num_classes=365)  # doctest: +SKIP
    """
    check_common(imbalance_type, imbalance_ratio, selection, selection_seed, crop_padding, hflip)
    _check_recipe(image_size, num_classes, max_per_class, test_max_per_class, mean, std,
                  val_per_class, {"train_list": train_list, "test_list": test_list,
                                  "val_list": val_list}, optional=("val_list",))
    if val_list is not None and val_per_class is not None:
        raise ConfigError("give val_list (a validation list) or val_per_class (drawn from the "
                          "unused training images), not both")
    check_path_options(path, color_jitter, eval_resize, image_size, decoder)
    strong = strong_augment(autoaugment, randaugment, randaugment_magnitude, cutout,
                            cutout_holes, cutout_fill, augment_fill)
    root = _root(root)
    train = read_txt_list(train_list, root, num_classes)
    classes_count = num_classes or max(e.label for e in train) + 1
    _every_class(train, classes_count, f"num_classes is {num_classes}" if num_classes
                 else f"the highest label is {classes_count - 1}")
    test = read_txt_list(test_list, root, classes_count)
    _every_class(test, classes_count, f"the training list has {classes_count}")
    val = read_txt_list(val_list, root, classes_count) if val_list is not None else None
    classes = [str(c) for c in range(classes_count)]
    return _bundle(
        "txt_list", "txt_list", root, classes, train, test, val, image_size=image_size,
        mean=mean, std=std, imbalance_type=imbalance_type, imbalance_ratio=imbalance_ratio,
        selection=selection, selection_seed=selection_seed, crop_padding=crop_padding,
        hflip=hflip, cache_dir=cache_dir, max_per_class=max_per_class,
        test_max_per_class=test_max_per_class, val_per_class=val_per_class, path=path,
        color_jitter=color_jitter, eval_resize=eval_resize, decoder=decoder, strong=strong,
        extra_meta={"train_list": train[0].source, "test_list": test[0].source,
                    "val_list": val[0].source if val else None, "num_classes": classes_count})


@DATASETS.register("inaturalist")
def inaturalist(root: str | None = None, train_json: str | None = None,
                val_json: str | None = None, num_classes: int | None = None,
                image_size: int = 32, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, imbalance_type: str | None = None,
                imbalance_ratio: float = 100, selection: str = "protocol",
                selection_seed: int = 0, crop_padding: int = 4, hflip: bool = True,
                cache_dir: str | None = None, max_per_class: int | None = None,
                test_max_per_class: int | None = None,
                val_per_class: int | None = None, path: str = "auto",
                color_jitter: float = 0.0, eval_resize: int | None = None,
                decoder: str = "pil", autoaugment: str | None = None, randaugment: int = 0,
                randaugment_magnitude: int = 9, cutout: int = 0, cutout_holes: int = 1,
                cutout_fill: str = "black", augment_fill: int | list = 0) -> DataBundle:
    """A long-tailed data set from iNaturalist's COCO-style JSON (``train2018.json``,
    ``val2018.json``).

    ``val_json`` is the test split, as in the long-tail literature (the official test images have
    no labels). A label is the rank of the ``category_id`` among the training file's category
    ids, which is the id itself when the ids are ``0 .. C-1``; class names are the categories'
    ``name``. Samples keep the order of ``images``. The ``path label`` lists some codebases
    generate from these files are read by ``txt_list``.

    Args:
        root: Folder the ``file_name`` paths are relative to (the one holding ``train_val2018/``).
        train_json: Training annotations; a relative path is taken from the working directory.
        val_json: Validation annotations, used as the test split.
        num_classes: Expected number of categories (8,142 for iNaturalist 2018).
        image_size: Side of the square images after resizing.
        mean: Per-channel RGB mean (0..1); ``None`` computes it from the training images.
        std: Per-channel pixel standard deviation (0..1); given together with ``mean``.
        imbalance_type: ``null`` (default: keep the file as it is) | ``exp`` | ``step`` | ``none``.
        imbalance_ratio: ``n_max / n_min`` (>= 1) when a profile is applied.
        selection: ``protocol`` | ``seeded`` | ``first``.
        selection_seed: Seed of the selection.
        crop_padding: Zero padding of the training random crop.
        hflip: Random horizontal flip during training.
        cache_dir: Decode cache (default ``$LTTOOLBOX_CACHE`` or ``~/.cache/lttoolbox``).
        max_per_class: Keep only the first images (in ``images`` order) of each training class.
        test_max_per_class: The same for ``val_json``.
        val_per_class: A balanced validation split drawn from the unused training images.
        path: ``memory`` | ``stream`` | ``auto``, and ``color_jitter``, ``eval_resize``,
            ``decoder`` for the streaming path: as for :func:`txt_list`.
        autoaugment: And ``randaugment``, ``randaugment_magnitude``, ``cutout``,
            ``cutout_holes``, ``cutout_fill``, ``augment_fill``: as for :func:`txt_list`.

    Returns:
        A :class:`~lttoolbox.data.DataBundle`.

    Example:
        >>> bundle = inaturalist("/data/inat2018", "/data/inat2018/train2018.json",
        ...                      "/data/inat2018/val2018.json", image_size=64)  # doctest: +SKIP
    """
    check_common(imbalance_type, imbalance_ratio, selection, selection_seed, crop_padding, hflip)
    _check_recipe(image_size, num_classes, max_per_class, test_max_per_class, mean, std,
                  val_per_class, {"train_json": train_json, "val_json": val_json})
    check_path_options(path, color_jitter, eval_resize, image_size, decoder)
    strong = strong_augment(autoaugment, randaugment, randaugment_magnitude, cutout,
                            cutout_holes, cutout_fill, augment_fill)
    root = _root(root)
    train = read_inaturalist_json(train_json, root)
    if num_classes is not None and len(train.category_ids) != num_classes:
        raise DataError(f"{train.entries[0].source}: lists {len(train.category_ids)} categories, "
                        f"num_classes is {num_classes}")
    classes_count = len(train.category_ids)
    _every_class(train.entries, classes_count, f"it lists {classes_count} categories")
    test = read_inaturalist_json(val_json, root, train.category_ids)
    _every_class(test.entries, classes_count,
                 f"the training file lists {classes_count} categories")
    return _bundle(
        "inaturalist", "json", root, train.category_names, train.entries, test.entries, None,
        image_size=image_size, mean=mean, std=std, imbalance_type=imbalance_type,
        imbalance_ratio=imbalance_ratio, selection=selection, selection_seed=selection_seed,
        crop_padding=crop_padding, hflip=hflip, cache_dir=cache_dir,
        max_per_class=max_per_class, test_max_per_class=test_max_per_class,
        val_per_class=val_per_class, path=path, color_jitter=color_jitter,
        eval_resize=eval_resize, decoder=decoder, strong=strong,
        extra_meta={"train_json": train.entries[0].source, "val_json": test.entries[0].source,
                    "category_ids": train.category_ids})
