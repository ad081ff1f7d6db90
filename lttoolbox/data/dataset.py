"""In-memory data sets (uint8 tensors) and the bundle a data-set entry returns.

Every registered data set loads its full splits as uint8 arrays, applies the long-tail profile to
the training split only (the test split stays balanced) and returns a :class:`DataBundle`:
two :class:`LTDataset` plus the matching train/eval :class:`BatchTransform` and a ``meta`` dict
that the trainer records next to the results.

Example:
    >>> import numpy as np
    >>> images = np.zeros((6, 1, 2, 2), dtype=np.uint8)
    >>> labels = np.array([0, 0, 0, 1, 1, 1])
    >>> bundle = assemble("toy", images, labels, images, labels, ["a", "b"], (0.5,), (0.5,),
    ...                   imbalance_type="exp", imbalance_ratio=3, selection="first",
    ...                   selection_seed=0, crop_padding=0, hflip=False, source="memory", root=None)
    >>> bundle.train.class_counts, bundle.test.class_counts
    ([3, 1], [3, 3])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..checks import check_bool, check_int
from ..errors import ConfigError, DataError
from .path_choice import PATHS
from .profiles import check_imbalance, check_selection, index_hash, long_tail_counts, \
    select_long_tail
from .stream import FileSplit, StreamTransform
from .strong_aug import StrongSpec, check_channels
from .transforms import BatchTransform


class LTDataset(Dataset):
    """A labelled image set held in memory as uint8 tensors (one class per image; a multi-label
    set is :class:`~lttoolbox.data.multilabel.MultiLabelDataset`).

    Args:
        images: uint8 ``(N, C, H, W)`` on the CPU (numpy array or tensor).
        labels: Class ids ``(N,)``, converted to int64.
        classes: Class names; index = class id.
        mean: Per-channel mean on the 0..1 scale (of the training images).
        std: Per-channel standard deviation on the 0..1 scale.

    Example:
        >>> ds = LTDataset(np.zeros((3, 1, 2, 2), np.uint8), [0, 1, 1], ["a", "b"], (0.,), (1.,))
        >>> len(ds), ds.num_classes, ds.class_counts
        (3, 2, [1, 2])
    """

    #: Whether the targets are multi-hot rows ``(N, C)`` rather than class ids ``(N,)``.
    multilabel = False

    def __init__(self, images: np.ndarray | torch.Tensor, labels: Sequence[int] | np.ndarray,
                 classes: Sequence[str], mean: Sequence[float], std: Sequence[float]):
        images = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(f"images must be a uint8 (N, C, H, W) array, "
                            f"got {images.dtype} of shape {tuple(images.shape)}")
        labels = self._checked_labels(labels, len(images), classes)
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise DataError(f"mean/std need {images.shape[1]} values, got {mean!r} / {std!r}")
        self.images = images.contiguous()
        self.labels = labels.contiguous()
        self.classes = [str(c) for c in classes]
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.class_counts = self._counts()

    @staticmethod
    def _checked_labels(labels: Any, num_images: int, classes: Sequence[str]) -> torch.Tensor:
        """The targets as a tensor (class ids, int64), checked against the images and classes."""
        labels = torch.as_tensor(np.asarray(labels, dtype=np.int64) if not torch.is_tensor(labels)
                                 else labels).to(torch.int64)
        if labels.dim() != 1 or len(labels) != num_images:
            raise DataError(f"{num_images} images but labels of shape {tuple(labels.shape)}")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise DataError(f"labels must lie in [0, {len(classes)}), "
                            f"got {int(labels.min())}..{int(labels.max())}")
        return labels

    def _counts(self) -> list[int]:
        """Training images per class."""
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()

    @property
    def num_classes(self) -> int:
        """Number of classes (including any with no image in this split)."""
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        """Channels of the images."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Height (= width) of the images."""
        return int(self.images.shape[2])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __repr__(self) -> str:
        return (f"LTDataset({len(self)} images {tuple(self.images.shape[1:])}, "
                f"{self.num_classes} classes, counts {max(self.class_counts, default=0)}.."
                f"{min(self.class_counts, default=0)})")


@dataclass
class DataBundle:
    """What a data-set entry returns.

    Attributes:
        train: The (long-tailed) training set.
        test: The balanced test set.
        train_transform: Crop/flip/normalise for training batches.
        eval_transform: Normalise only.
        val: A balanced validation split (``val_per_class``), for post-hoc choices that must not
            be made on the test set; ``None`` without one.
        meta: Provenance recorded into results (name, profile, ratio, selection and its seed,
            kept-index hash, source, root, per-class counts).
        warnings: Plain sentences, each naming its recipe key, about settings that are valid but
            probably not meant (the trainer prints them before training).
    """

    train: LTDataset | FileSplit
    test: LTDataset | FileSplit
    train_transform: BatchTransform
    eval_transform: BatchTransform
    meta: dict[str, Any] = field(default_factory=dict)
    val: LTDataset | FileSplit | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        """``memory`` (uint8 tensors) or ``stream`` (file paths read during training)."""
        return "stream" if isinstance(self.train, FileSplit) else "memory"

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.train.num_classes

    @property
    def multilabel(self) -> bool:
        """Whether the targets are multi-hot rows (a multi-label task: ``task: multilabel`` is
        implied by the data set)."""
        return bool(getattr(self.train, "multilabel", False))

    @property
    def in_channels(self) -> int:
        """Image channels (model context)."""
        return self.train.in_channels

    @property
    def image_size(self) -> int:
        """Image height = width (model context)."""
        return int(self.train.image_size)


def check_common(imbalance_type: str | None, imbalance_ratio: float, selection: str,
                 selection_seed: int, crop_padding: int, hflip: bool) -> None:
    """Validate the parameters every data set shares (before any file is read)."""
    check_imbalance(imbalance_type, imbalance_ratio)
    check_selection(selection, selection_seed)
    check_int("crop_padding", crop_padding, 0)
    check_bool("hflip", hflip)


def check_path_options(path: Any, color_jitter: Any, eval_resize: Any, image_size: int,
                       decoder: Any = "pil") -> None:
    """Validate ``path`` (``memory`` | ``stream`` | ``auto``: stream when the decoded training
    images would exceed 4 GiB) and the streaming-only ``color_jitter``, ``eval_resize`` and
    ``decoder``, before any file is read."""
    from .stream import DECODERS
    if path not in PATHS:
        raise ConfigError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
    if decoder not in DECODERS:
        raise ConfigError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    StreamTransform(image_size, True, color_jitter=color_jitter, resize=eval_resize)
    if path == "memory" and (color_jitter or eval_resize is not None):
        raise ConfigError("color_jitter and eval_resize act on the streaming path only "
                          "(path: stream); the in-memory path crops with crop_padding")


def stream_options(path: str, train_images: np.ndarray, mean, std, image_size: int,
                   color_jitter: float, eval_resize: int | None, decoder: str = "pil"):
    """``(mean, std, stream)`` for :func:`assemble`: the statistics (computed from the decoded
    training images when not given; ImageNet's on the streaming path, which decodes nothing
    up front) and the streaming options (``None`` on the in-memory path)."""
    if path != "stream":
        if color_jitter or eval_resize is not None:
            raise ConfigError("color_jitter and eval_resize act on the streaming path only, and "
                              "path: auto chose memory for this set (its decoded images fit in "
                              "4 GiB); set path: stream")
        if mean is None:
            mean, std = pixel_mean_std(train_images)
        return mean, std, None
    from .stream import IMAGENET_MEAN, IMAGENET_STD
    if mean is None:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return mean, std, {"image_size": image_size, "color_jitter": color_jitter,
                       "eval_resize": eval_resize, "decoder": decoder}


def cap_per_class(labels: np.ndarray, num_classes: int, cap: int | None) -> np.ndarray:
    """Indices of the first ``cap`` images of each class in file order (all when ``cap`` is None),
    in file order."""
    if cap is None:
        return np.arange(len(labels), dtype=np.int64)
    keep = np.zeros(len(labels), dtype=bool)
    for c in range(num_classes):
        keep[np.flatnonzero(labels == c)[:cap]] = True
    return np.flatnonzero(keep).astype(np.int64)


def pixel_mean_std(images: np.ndarray | torch.Tensor
                   ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of all pixels, on the 0..1 scale.

    Exact (from a 256-bin histogram per channel), without a float copy of the images.
    """
    images = images.numpy() if torch.is_tensor(images) else np.asarray(images)
    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = np.bincount(images[:, c].reshape(-1), minlength=256).astype(np.float64)
        total = hist.sum()
        mean = (hist * values).sum() / total
        var = (hist * (values - mean) ** 2).sum() / total
        means.append(mean / 255.0)
        stds.append(float(np.sqrt(var)) / 255.0)
    return tuple(means), tuple(stds)


def assemble(name: str, train_images: np.ndarray, train_labels: np.ndarray,
             test_images: np.ndarray, test_labels: np.ndarray, classes: Sequence[str],
             mean: Sequence[float], std: Sequence[float], *, imbalance_type: str | None,
             imbalance_ratio: float, selection: str, selection_seed: int, crop_padding: int,
             hflip: bool, source: str, root: str | None, train_index: np.ndarray | None = None,
             extra_meta: dict[str, Any] | None = None, val_per_class: int | None = None,
             val_split: tuple[np.ndarray, np.ndarray] | None = None,
             stream: dict[str, Any] | None = None,
             strong: StrongSpec | None = None) -> DataBundle:
    """Apply the long-tail profile to the training split and build the bundle.

    ``n_max`` is the size of the smallest training class, so every class can be filled (for the
    balanced CIFAR splits that is 5,000 / 500, the reference's ``len(data) / C``).
    ``imbalance_type=None`` keeps every training image (for a folder that is long-tailed already).

    Args:
        train_index: Index of each training image in the source's own numbering (for the kept-index
            hash); defaults to ``0 .. N-1``.
        val_per_class: Images per class of a balanced validation split (see
            :func:`validation_split`); ``None``: no validation split, the profile exactly as
            published.
        val_split: A given validation split ``(images, labels)`` (a named folder) instead.
        stream: For the streaming path: the images are arrays of file paths, and this gives the
            per-image transforms' ``image_size``, ``color_jitter`` and ``eval_resize`` (see
            :mod:`lttoolbox.data.stream`).
        strong: The strong augmentations of the training transform (see
            :func:`~lttoolbox.data.strong_aug.strong_augment`); ``None``: none.

    Raises:
        DataError: a class has no training or no test image.
        ConfigError: the profile leaves a class with no image.
    """
    num_classes = len(classes)
    train_labels = np.asarray(train_labels, dtype=np.int64)
    sizes = np.bincount(train_labels, minlength=num_classes)
    test_sizes = np.bincount(np.asarray(test_labels, dtype=np.int64), minlength=num_classes)
    for split, counts in (("train", sizes), ("test", test_sizes)):
        if (counts == 0).any():
            empty = [classes[c] for c in np.flatnonzero(counts == 0)]
            raise DataError(f"{name}: no {split} image for class(es) {', '.join(empty)}")
    if imbalance_type is None:
        kept = np.arange(len(train_labels), dtype=np.int64)
    else:
        n_max = int(sizes.min())
        counts = long_tail_counts(n_max, num_classes, imbalance_type, imbalance_ratio)
        if min(counts) < 1:
            raise ConfigError(_emptied_message(name, classes, counts, n_max, imbalance_type,
                                               imbalance_ratio), key="imbalance_type")
        kept = select_long_tail(train_labels, counts, selection, selection_seed)
    train_index = np.arange(len(train_labels)) if train_index is None else train_index

    def split(images, labels):
        if stream is None:
            return LTDataset(images, labels, classes, mean, std)
        return FileSplit(images, labels, classes, mean, std, stream["image_size"],
                         stream.get("decoder", "pil"))

    val_meta: dict[str, Any] = {}
    val = None
    notes: list[str] = []
    if val_per_class is not None:
        check_int("val_per_class", val_per_class, 1)
        before = np.bincount(train_labels[kept], minlength=num_classes)
        kept, val_idx, given_up = validation_split(train_labels, kept, num_classes,
                                                   val_per_class, selection_seed)
        note = validation_cost(before, np.asarray(given_up), val_per_class, classes)
        notes += [note] if note else []
        val = split(train_images[val_idx], train_labels[val_idx])
        val_meta = {"val_per_class": val_per_class, "val_from_kept": given_up,
                    "val_index_hash": index_hash(np.asarray(train_index)[val_idx])}
    elif val_split is not None:
        val = split(val_split[0], val_split[1])
    if val is not None:
        val_meta["val_class_counts"] = val.class_counts
    train = split(train_images[kept], train_labels[kept])
    test = split(test_images, test_labels)
    meta = {
        "dataset": name,
        "imbalance_type": imbalance_type,
        "imbalance_ratio": imbalance_ratio,
        "selection": selection,
        "selection_seed": selection_seed,
        "kept_index_hash": index_hash(np.asarray(train_index)[kept]),
        "source": source,
        "root": root,
        "classes": list(train.classes),
        "train_class_counts": train.class_counts,
        "test_class_counts": test.class_counts,
        "num_train": len(train),
        "num_test": len(test),
        "mean": train.mean,
        "std": train.std,
        "crop_padding": crop_padding,
        "hflip": hflip,
        "path": "memory" if stream is None else "stream",
        **val_meta,
    }
    meta.update(extra_meta or {})
    if strong is not None:
        notes += list(strong.notes)
        if strong.active:  # recorded only when on: the meta of other runs is unchanged
            check_channels(strong, train.in_channels)
            meta.update(strong.meta())
        else:
            strong = None
    if stream is not None:
        size, resize = stream["image_size"], stream.get("eval_resize")
        meta.update(crop_padding=None, color_jitter=stream["color_jitter"],
                    decoder=stream.get("decoder", "pil"),
                    eval_resize=StreamTransform(size, False, resize=resize).resize)
        return DataBundle(train, test,
                          StreamTransform(size, True, hflip, stream["color_jitter"],
                                          strong=strong),
                          StreamTransform(size, False, resize=resize), meta, val, notes)
    return DataBundle(train, test,
                      BatchTransform(mean, std, crop_padding=crop_padding, hflip=hflip,
                                     strong=strong),
                      BatchTransform(mean, std), meta, val, notes)


#: The share of a class's training images the validation split may take before it is named.
MAX_VAL_SHARE = 0.25


def _inversion(before: np.ndarray, after: np.ndarray) -> tuple[int, int] | None:
    """A pair ``(i, j)`` of classes with ``before[i] > before[j]`` and ``after[i] < after[j]``
    (the order by size reversed), or None; O(C log C), for data sets of thousands of classes."""
    values, group = np.unique(before, return_inverse=True)  # ascending sizes
    low = np.full(len(values), np.iinfo(np.int64).max)
    np.minimum.at(low, group, after)
    high = np.full(len(values), -1)
    np.maximum.at(high, group, after)
    below = np.concatenate([[-1], np.maximum.accumulate(high)[:-1]])  # over smaller sizes
    hit = np.flatnonzero(low < below)
    if not len(hit):
        return None
    g = hit[-1]  # the largest class that falls behind a smaller one: the head, where it does
    i = np.flatnonzero((group == g) & (after == low[g]))[0]
    j = np.flatnonzero((group < g) & (after == below[g]))[0]
    return int(i), int(j)


def validation_cost(before: np.ndarray, given_up: np.ndarray, per_class: int,
                    classes: Sequence[str]) -> str | None:
    """A warning when the validation split changes the long-tail profile noticeably, else None.

    It is named when the split takes more than :data:`MAX_VAL_SHARE` of some class's training
    images, or reorders the classes by training count (a class that had more images than
    another then has fewer: the head class is no longer the largest). The sentence gives the
    largest ``val_per_class`` that does neither.

    Args:
        before: Training images per class before the split.
        given_up: Images each class gave up from its kept ones (see :func:`validation_split`).
        per_class: ``val_per_class``.
        classes: Class names.
    """
    def check(v: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int] | None]:
        """Images each class loses, what it keeps, and a reordered pair, for ``v`` per class."""
        # a class that gave up g of per_class had per_class - g unused images
        lost = np.where(given_up > 0, np.maximum(0, v - (per_class - given_up)), 0)
        after = before - lost
        return lost / np.maximum(before, 1), after, _inversion(before, after)

    def harmless(v: int) -> bool:
        share, _, swapped = check(v)
        return share.max() <= MAX_VAL_SHARE and swapped is None

    if harmless(per_class):
        return None
    share, after, swapped = check(per_class)
    parts = []
    c = int(np.argmax(share))
    if share[c] > MAX_VAL_SHARE:
        parts.append(f"class {classes[c]} trains on {after[c]} of its {before[c]} images "
                     f"({share[c]:.0%} go to validation)")
    if swapped is not None:
        i, j = swapped
        parts.append(f"class {classes[i]} ({before[i]} -> {after[i]}) ends up smaller than class "
                     f"{classes[j]} ({before[j]} -> {after[j]}), so the classes' order by size "
                     f"changes")
    safe = next((v for v in range(per_class - 1, 0, -1) if harmless(v)), 0)
    fix = (f"val_per_class {safe} or less keeps the order and at least "
           f"{1 - MAX_VAL_SHARE:.0%} of every class" if safe
           else "no val_per_class does, with this profile")
    return (f"data.val_per_class={per_class} changes the long-tail profile: {'; '.join(parts)}; "
            f"{fix}")


def _emptied_message(name: str, classes: Sequence[str], counts: list[int], n_max: int,
                     imbalance_type: str, imbalance_ratio: float) -> str:
    """The one line for a profile that leaves a class no training image: what the profile does
    (and whether it is the data set's default, which a user may not know is applied), and the
    way out for data that is long-tailed already."""
    import inspect

    from ..registry import DATASETS

    default = ""
    if name in DATASETS:
        params = inspect.signature(DATASETS.get(name)).parameters
        if (params.get("imbalance_type") and params.get("imbalance_ratio")
                and params["imbalance_type"].default == imbalance_type
                and params["imbalance_ratio"].default == imbalance_ratio):
            default = f" (the default profile of {name}, applied unless the recipe sets one)"
    empty = [f"'{classes[c]}'" for c, n in enumerate(counts) if n < 1]
    shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
    return (f"the profile {imbalance_type} with imbalance_ratio {imbalance_ratio:g}{default} "
            f"re-samples the training split into a long tail from n_max = {n_max} image(s), its "
            f"smallest class, down to {n_max / imbalance_ratio:.3g}, which leaves class(es) "
            f"{shown} with no image. Training data that is long-tailed already needs no profile: "
            f"set imbalance_type: null to keep every training image as it is; otherwise lower "
            f"imbalance_ratio (or raise max_per_class where it is set)")


def validation_split(labels: np.ndarray, kept: np.ndarray, num_classes: int, per_class: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A balanced validation split of ``per_class`` images per class, disjoint from the kept
    training images and (as it is drawn from the training split) from the test set.

    The images are drawn (seeded by ``seed`` and the class) from those the long-tail profile left
    unused; a class with fewer unused images (a head class that keeps everything) gives up the
    shortfall from its kept images, the last ones in the kept order, so its training count drops
    by at most ``per_class``.

    Returns:
        ``(kept, val, given_up)``: the kept indices without the given-up ones (order preserved),
        the validation indices grouped by class, and the number given up per class.

    Raises:
        ConfigError: a class has fewer than ``per_class`` images in all.
    """
    labels = np.asarray(labels)
    unused = np.ones(len(labels), dtype=bool)
    unused[kept] = False
    kept_labels = labels[kept]
    drop, val, given_up = [], [], []
    for c in range(num_classes):
        spare = np.flatnonzero(unused & (labels == c))
        rng = np.random.default_rng([seed, 0x56414C, c])
        chosen = rng.permutation(spare)[:per_class]
        short = per_class - len(chosen)
        mine = kept[kept_labels == c]
        if short > len(mine) - 1:
            raise ConfigError(f"val_per_class {per_class} leaves class {c} no training image "
                              f"({len(spare)} unused and {len(mine)} kept images)")
        if short:
            drop.append(mine[len(mine) - short:])
            chosen = np.concatenate([chosen, mine[len(mine) - short:]])
        val.append(np.sort(chosen))
        given_up.append(int(short))
    dropped = np.concatenate(drop) if drop else np.empty(0, dtype=np.int64)
    kept = kept[~np.isin(kept, dropped)]
    return kept, np.concatenate(val).astype(np.int64), given_up


def data_info(bundle) -> dict:
    """The facts of a data set that a trained model depends on (written as ``data.json``)."""
    info = {"classes": list(bundle.train.classes),
            "train_class_counts": [int(c) for c in bundle.train.class_counts],
            "mean": list(bundle.train.mean), "std": list(bundle.train.std),
            "in_channels": int(bundle.in_channels), "image_size": int(bundle.image_size)}
    if bundle.multilabel:  # read back by lteval and ltpredict
        info["multilabel"] = True
    if bundle.path == "stream":  # a new image is resized and centre-cropped as in evaluation
        resize = bundle.eval_transform.resize
        info.update(path="stream", **({"eval_resize": int(resize)} if resize is not None
                                      else {"eval_crop": False}))  # or resized whole
    return info
