"""The registered multi-label long-tailed sets ``voc_mlt`` and ``coco_mlt``.

The data sets of the distribution-balanced loss (Wu et al., ECCV 2020; official code
wutong16/DistributionBalancedLoss at ``14460d0acda6a3e77a8a6a5999b9746243cb1535``), read from
the official split files by :mod:`lttoolbox.data.mlt` (layout of ``root`` and formats there)
and turned into a multi-label :class:`~lttoolbox.data.DataBundle`: its targets are a float32
multi-hot matrix ``(N, C)`` per split, ``multilabel = True`` on the entry and on the splits, so
the trainer evaluates with mAP (:func:`~lttoolbox.engine.evaluate.multilabel_metrics`).

Like the other large image sets, a set is decoded once and held in memory, or streamed from its
files (``path: auto | memory | stream``, :mod:`lttoolbox.data.path_choice`):

* ``memory``: every image decoded and resized to ``image_size`` x ``image_size`` (bilinear,
  aspect ratio not kept, as the official ``resize_keep_ratio=False`` at 224 x 224,
  ``configs/voc/LT_resnet50_pfc_DB.py:58-63``), cached
  (:func:`~lttoolbox.data.folder_io.load_split`); the splits are
  :class:`~lttoolbox.data.multilabel.MultiLabelDataset`. Evaluation sees the whole resized image,
  as the official test pipeline does; training flips (``hflip``) and, when ``crop_padding`` is
  given, pads and crops.
* ``stream``: the splits are :class:`~lttoolbox.data.stream.MultiLabelFileSplit` (file paths and
  the multi-hot matrix) and every image is decoded when a batch needs it, with the streaming
  path's training transform (:mod:`lttoolbox.data.stream`: random resized crop, flip,
  ``color_jitter``); evaluation resizes the whole image to ``image_size`` square, as the
  in-memory path and the official test pipeline (``eval_crop: true``: the centre crop of the
  single-label large sets instead).

Training augmentation: the official pipeline's (``configs/voc/LT_resnet50_pfc_DB.py:39-63``,
``mllt/datasets/extra_aug.py``), on both paths by default: the photometric distortion
(brightness, contrast, saturation, hue, channel order) and the random crop of 0.8-1.0 of each
side (``photometric``, ``min_crop_size``), then the flip and the resize; how each path does it
and where it differs from the code (the crop corner's range, the in-memory path's second
resampling, the streaming path's clipping) is in :mod:`lttoolbox.data.photometric`.
``min_crop_size: 1`` and ``photometric: false`` turn them off (the streaming path then takes
the ImageNet-style random resized crop, ``color_jitter`` its jitter). Normalisation uses the
ImageNet statistics, the official configs' ``img_norm_cfg`` (mean ``[123.675, 116.28, 103.53]``,
std ``[58.395, 57.12, 57.375]`` on 0..255, ``configs/voc/LT_resnet50_pfc_DB.py:37-38``,
``configs/coco/LT_resnet50_pfc_DB.py:37-38``).

There is no validation split: the official protocol trains on the long-tailed list and reports
the test set (VOC2007 test, COCO val2017) at the last epoch; nothing is held out here either, so
choose nothing on these numbers.

Example:
    >>> from lttoolbox.registry import DATASETS
    >>> bundle = DATASETS.build({"name": "voc_mlt", "root": "/data/mlt"})  # doctest: +SKIP
    >>> bundle.multilabel, tuple(bundle.train.labels.shape)                 # doctest: +SKIP
    (True, (1142, 20))
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..checks import check_bool, check_int
from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .dataset import DataBundle, check_path_options, stream_options
from .folder import _check_stats as check_stats
from .mlt import MultiLabelData, load_images, read_coco_mlt, read_voc_mlt
from .multilabel import MultiLabelDataset
from .path_choice import choose_path
from .photometric import check_min_crop_size
from .stream import IMAGENET_MEAN, IMAGENET_STD, MultiLabelFileSplit, StreamTransform
from .transforms import BatchTransform

#: The class groups by training images per label, as ``tools/create_longtail_dataset.py:172-174``
#: writes ``class_split.pkl`` and as the trainer's mAP groups cut them (``eval.many_threshold``
#: and ``eval.few_threshold`` at their defaults): head n >= 100, medium 20 <= n < 100, tail n < 20.
HEAD_AT_LEAST, TAIL_BELOW = 100, 20


def count_groups(counts: Sequence[int], head: int = HEAD_AT_LEAST,
                 tail: int = TAIL_BELOW) -> dict[str, list[int]]:
    """The head / medium / tail class indices of training counts ``n``: ``n >= head``,
    ``tail <= n < head``, ``n < tail``.

    Example:
        >>> count_groups([100, 99, 20, 19])
        {'head': [0], 'medium': [1, 2], 'tail': [3]}
    """
    n = np.asarray(counts)
    return {"head": np.flatnonzero(n >= head).tolist(),
            "medium": np.flatnonzero((n >= tail) & (n < head)).tolist(),
            "tail": np.flatnonzero(n < tail).tolist()}


def _check_recipe(image_size, mean, std, path, crop_padding, hflip, color_jitter, eval_resize,
                  eval_crop, decoder, imbalance_type, name: str) -> None:
    """ConfigError for bad recipe values, before any file is read."""
    if imbalance_type is not None:
        raise ConfigError(f"{name} is long-tailed already (the official split files choose its "
                          f"training images), so no profile applies; imbalance_type must be "
                          f"null, got {imbalance_type!r}", key="imbalance_type")
    check_int("image_size", image_size, 1)
    check_int("crop_padding", crop_padding, 0)
    check_bool("hflip", hflip)
    check_stats(mean, std)
    check_path_options(path, color_jitter, eval_resize, image_size, decoder)
    StreamTransform(image_size, False, resize=eval_resize, centre_crop=eval_crop)
    if path == "memory" and eval_crop:
        raise ConfigError("eval_crop acts on the streaming path only (path: stream); the "
                          "in-memory path evaluates the whole resized image", key="eval_crop")


def _bundle(data: MultiLabelData, root: str, appendix, *, image_size: int, mean, std,
            path: str, cache_dir, crop_padding: int, hflip: bool, color_jitter: float,
            eval_resize, eval_crop: bool, decoder: str, min_crop_size: float,
            photometric: bool) -> DataBundle:
    """Decode (or list) both splits and assemble the multi-label bundle."""
    class_split = data.files["class_split"]
    empty = np.flatnonzero(data.class_freq == 0).tolist()
    if empty:  # the reader allows it; a label never seen in training cannot be learnt
        raise DataError(f"{data.files['class_freq']}: no training image has label(s) "
                        f"{', '.join(data.classes[c] for c in empty[:10])}; every class of "
                        f"{data.name} needs one")
    path = choose_path(path, len(data.train.files), image_size)
    if path != "stream" and eval_crop:
        raise ConfigError("eval_crop acts on the streaming path only, and path: auto chose "
                          "memory for this set (its decoded images fit in 4 GiB); set path: "
                          "stream", key="eval_crop")
    train_x, _ = load_images(data.train, image_size, cache_dir, path)
    test_x, _ = load_images(data.test, image_size, cache_dir, path)
    if mean is not None:
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    mean, std, stream = stream_options(path, train_x, mean, std, image_size, color_jitter,
                                       eval_resize, decoder)
    if stream is None:
        train = MultiLabelDataset(train_x, data.train.labels, data.classes, mean, std)
        test = MultiLabelDataset(test_x, data.test.labels, data.classes, mean, std)
        train_transform = BatchTransform(mean, std, crop_padding=crop_padding, hflip=hflip,
                                         min_crop_size=min_crop_size, photometric=photometric)
        eval_transform = BatchTransform(mean, std)
    else:
        train = MultiLabelFileSplit(train_x, data.train.labels, data.classes, mean, std,
                                    image_size, decoder)
        test = MultiLabelFileSplit(test_x, data.test.labels, data.classes, mean, std,
                                   image_size, decoder)
        train_transform = StreamTransform(
            image_size, True, hflip, color_jitter,
            min_crop_size=None if min_crop_size >= 1 else min_crop_size, photometric=photometric)
        eval_transform = StreamTransform(image_size, False, resize=eval_resize,
                                         centre_crop=eval_crop)
    groups = {k: v.tolist() for k, v in data.groups.items()}
    warnings = []
    by_count = count_groups(train.class_counts)
    if groups != by_count:  # the trainer's head/medium/tail mAP cut by count, not by the file
        moved = [f"{data.classes[c]} ({train.class_counts[c]} images) is {g} there"
                 for g, members in groups.items() for c in members if c not in by_count[g]]
        warnings.append(f"data.root: {class_split} groups classes otherwise than their training "
                        f"counts (head >= {HEAD_AT_LEAST}, medium {TAIL_BELOW}-"
                        f"{HEAD_AT_LEAST - 1}, tail < {TAIL_BELOW}), which the head/medium/tail "
                        f"mAP use: {'; '.join(moved[:5])}")
    absent = [data.classes[c] for c in np.flatnonzero(np.asarray(test.class_counts) == 0)]
    if absent:
        warnings.append(f"data.root: no test image of {data.test.source} has label(s) "
                        f"{', '.join(absent[:10])}: their AP is undefined and left out of every "
                        f"mAP")
    meta = {"dataset": data.name, "multilabel": True, "source": "split_files", "root": root,
            "appendix": (None if appendix is None
                         else str(Path(str(appendix)).expanduser().absolute())),
            "split_files": dict(data.files),
            "imbalance_type": None, "classes": list(data.classes),
            "train_class_counts": train.class_counts, "test_class_counts": test.class_counts,
            "num_train": len(train), "num_test": len(test), "class_split": groups,
            "image_size": image_size, "mean": train.mean, "std": train.std,
            "crop_padding": crop_padding, "hflip": hflip, "path": path,
            "min_crop_size": min_crop_size, "photometric": photometric}
    if stream is not None:
        meta.update(crop_padding=None, color_jitter=color_jitter, decoder=decoder,
                    eval_crop=eval_crop, eval_resize=eval_transform.resize)
    return DataBundle(train, test, train_transform, eval_transform, meta, None, warnings)


def _entry(name: str, reader: Callable[..., MultiLabelData], doc: str):
    """Register the data set ``name``, read by ``reader``: both sets take the same recipe."""

    def entry(root: str | None = None, appendix: str | None = None, image_size: int = 224,
              mean: Sequence[float] | None = IMAGENET_MEAN,
              std: Sequence[float] | None = IMAGENET_STD, path: str = "auto",
              cache_dir: str | None = None, crop_padding: int = 0, hflip: bool = True,
              color_jitter: float = 0.0, eval_resize: int | None = None,
              eval_crop: bool = False, decoder: str = "pil",
              imbalance_type: str | None = None, min_crop_size: float = 0.8,
              photometric: bool = True) -> DataBundle:
        _check_recipe(image_size, mean, std, path, crop_padding, hflip, color_jitter,
                      eval_resize, eval_crop, decoder, imbalance_type, name)
        min_crop_size = check_min_crop_size(min_crop_size)
        check_bool("photometric", photometric)
        data = reader(root, appendix)
        return _bundle(data, str(Path(str(root)).expanduser().absolute()), appendix,
                       image_size=image_size, mean=mean, std=std, path=path,
                       cache_dir=cache_dir, crop_padding=crop_padding, hflip=hflip,
                       color_jitter=color_jitter, eval_resize=eval_resize,
                       eval_crop=eval_crop, decoder=decoder, min_crop_size=min_crop_size,
                       photometric=photometric)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = doc
    # Both build multi-label bundles (their test contract and the evaluation differ).
    entry.multilabel = True
    return DATASETS.register(name)(entry)


VOC_MLT_DOC = """VOC-MLT: the 1,142-image long-tailed subset of VOC2012 trainval (20 classes)
    and VOC2007 test, from the split files of the DB-loss repository.

    Recipe:
        data:
          name: voc_mlt
          root: /data/mlt

    Args:
        root: The folder holding ``appendix/`` and ``VOCdevkit/`` (layout:
            :mod:`lttoolbox.data.mlt`). Required.
        appendix: The official ``appendix/`` folder of the DB-loss repository, when it is not
            ``<root>/appendix``.
        image_size: Side of the square images (224, the official ``img_scale``).
        mean: Per-channel RGB mean on the 0..1 scale (default ImageNet's, as the official
            configs); ``null`` together with ``std``: computed from the decoded training images
            (in-memory path; the streaming path then uses ImageNet's).
        std: Per-channel standard deviation on the 0..1 scale (default ImageNet's).
        path: ``memory`` | ``stream`` | ``auto`` (stream when the decoded training images would
            take more than 4 GiB; both sets fit at 224 px).
        cache_dir: Decode cache (default ``$LTTOOLBOX_CACHE`` or ``~/.cache/lttoolbox``).
        crop_padding: In-memory path: zero padding of the training random crop (0: none).
        hflip: Random horizontal flip during training (the official ``flip_ratio=0.5``).
        color_jitter: Streaming path: brightness/contrast/saturation jitter strength.
        eval_crop: Streaming path: evaluate the centre crop of the image resized to
            ``eval_resize`` (as the large single-label sets), instead of the whole image
            resized to ``image_size`` square (default, as the official evaluation and the
            in-memory path: a crop can cut out a labelled object).
        eval_resize: Streaming path with ``eval_crop``: shorter side before the centre crop
            (default ``image_size * 256 / 224``).
        decoder: Streaming path: ``pil`` or ``torchvision``.
        imbalance_type: Must be ``null``: the set is long-tailed already.
        min_crop_size: The official training crop (``extra_aug.random_crop``, 0.8): a box of at
            least this fraction of each side, resized to ``image_size`` square; 1: none (the
            streaming path then takes its random resized crop).
        photometric: The official photometric distortion (``extra_aug.photo_metric_distortion``;
            :mod:`lttoolbox.data.photometric`), on by default as in both official configs.

    Returns:
        A multi-label :class:`~lttoolbox.data.DataBundle` without validation split; its
        ``meta`` records the files read (``split_files``) and the head/medium/tail groups of
        ``class_split.pkl`` (``class_split``). A bundle warning names the classes where those
        groups differ from the training-count groups the head/medium/tail mAP use, and any
        label without a positive test image.

    Raises:
        ConfigError: a bad recipe value (before any file is read), or no ``root``.
        DataError: one line naming the file (see :func:`~lttoolbox.data.mlt.read_voc_mlt`),
            or a label without a training image.

    Example:
        >>> bundle = voc_mlt("/data/mlt", path="stream")   # doctest: +SKIP
        >>> bundle.train.labels.shape, bundle.meta["class_split"]["head"]  # doctest: +SKIP
        (torch.Size([1142, 20]), [4, 6, 8, 10, 14, 15])
    """

COCO_MLT_DOC = """COCO-MLT: the 1,909-image long-tailed subset of COCO train2017 (80 classes),
    and all of val2017 as the test set, from the split files of the DB-loss repository.

    Recipe:
        data:
          name: coco_mlt
          root: /data/mlt

    Args:
        root: The folder holding ``appendix/`` and ``coco/`` (layout:
            :mod:`lttoolbox.data.mlt`). Required.
        appendix, image_size, mean, std, path, cache_dir, crop_padding, hflip, color_jitter,
            eval_crop, eval_resize, decoder, imbalance_type, min_crop_size, photometric: As
            :func:`voc_mlt`.

    Returns:
        A multi-label :class:`~lttoolbox.data.DataBundle`, as :func:`voc_mlt`.

    Raises:
        ConfigError: a bad recipe value (before any file is read), or no ``root``.
        DataError: one line naming the file (see :func:`~lttoolbox.data.mlt.read_coco_mlt`),
            or a label without a training image.

    Example:
        >>> bundle = coco_mlt("/data/mlt")                  # doctest: +SKIP
        >>> bundle.num_classes, len(bundle.test)            # doctest: +SKIP
        (80, 5000)
    """

voc_mlt = _entry("voc_mlt", read_voc_mlt, VOC_MLT_DOC)
coco_mlt = _entry("coco_mlt", read_coco_mlt, COCO_MLT_DOC)
