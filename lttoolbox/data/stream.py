"""The streaming side of the data path: splits held as file paths, decoded and augmented per image
in DataLoader workers.

Large sets (ImageNet-LT: 115,846 training images at 224 px, 16.2 GiB as uint8) do not fit in
memory, so each image is read when a batch needs it. The per-image transforms are those of the
reference codebases for the large benchmarks (Kang et al., "Decoupling Representation and
Classifier", ICLR 2020, github.com/facebookresearch/classifier-balancing ``data/dataloader.py``;
Liu et al., OLTR, CVPR 2019):

* training: ``RandomResizedCrop(size)`` (scale 0.08..1, ratio 3/4..4/3), horizontal flip, and
  ``ColorJitter(brightness=c, contrast=c, saturation=c, hue=0)`` with ``c`` = 0.4 for ImageNet-LT
  and Places-LT (0 for iNaturalist 2018);
* evaluation: ``Resize(resize)`` of the shorter side (256 for 224-px crops), ``CenterCrop(size)``.

They act on uint8 ``(3, H, W)`` tensors decoded by ``torchvision.io`` and return uint8: the
normalisation and the float conversion run on the training device, batched.

Randomness. Every image of an epoch draws its crop, flip and jitter from its own
``torch.Generator`` seeded by ``(seed, phase, epoch, position in the epoch's global stream)``
(:func:`draw_seeds`). So an epoch is the same whatever the number of workers, the number of
processes or an interruption in between: stronger than per-worker seeds (which change the draws
with the worker count), and it needs no state in the workers.

Example:
    >>> t = StreamTransform(8, train=False, resize=10)
    >>> t(torch.zeros(3, 20, 30, dtype=torch.uint8), None).shape
    torch.Size([3, 8, 8])
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np
import torch

from ..checks import check_bool
from ..errors import ConfigError, DataError
from .images import UnreadableImage, image_error, load_image, to_8bit_tensor
from .photometric import check_min_crop_size, crop_boxes, distort, draw_distortion
from .strong_aug import ImageStrong, StrongSpec

# RandomResizedCrop's defaults (torchvision.transforms.RandomResizedCrop).
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# The ImageNet statistics every reference codebase normalises the large sets with (torchvision's
# model zoo; classifier-balancing data/dataloader.py): a streaming set cannot be scanned for its
# own statistics at load time.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FileSplit:
    """A labelled split held as image file paths (the streaming counterpart of ``LTDataset``).

    Args:
        paths: Absolute path of each image.
        labels: Class ids ``(N,)`` (a multi-label split: :class:`MultiLabelFileSplit`).
        classes: Class names; index = class id.
        mean: Per-channel mean on the 0..1 scale (for the on-device normalisation).
        std: Per-channel standard deviation on the 0..1 scale.
        image_size: Side of the square images the transforms produce.
        decoder: ``pil`` or ``torchvision`` (see :func:`read_image`).

    Example:
        >>> s = FileSplit(["/a.jpg", "/b.jpg"], [0, 1], ["x", "y"], (0.5,) * 3, (0.2,) * 3, 224)
        >>> len(s), s.class_counts, s.in_channels
        (2, [1, 1], 3)
    """

    in_channels = 3
    multilabel = False

    def __init__(self, paths: Sequence[str] | np.ndarray, labels: Sequence[int] | np.ndarray,
                 classes: Sequence[str], mean: Sequence[float], std: Sequence[float],
                 image_size: int, decoder: str = "pil"):
        self.paths = np.asarray([str(p) for p in paths], dtype=object)
        self.classes = [str(c) for c in classes]
        self.labels = self._checked_labels(labels)
        if len(self.paths) != len(self.labels):
            raise DataError(f"{len(self.paths)} image paths but {len(self.labels)} labels")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.image_size = int(image_size)
        if decoder not in DECODERS:
            raise ConfigError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        self.decoder = decoder
        self.class_counts = self._counts()

    def _checked_labels(self, labels) -> torch.Tensor:
        """Class ids ``(N,)`` as int64, each in ``[0, C)``."""
        labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(self.classes)):
            raise DataError(f"labels must lie in [0, {len(self.classes)})")
        return labels

    def _counts(self) -> list[int]:
        """Images per class."""
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()

    @property
    def num_classes(self) -> int:
        """Number of classes (including any with no image in this split)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (f"FileSplit({len(self)} image files at {self.image_size} px, "
                f"{self.num_classes} classes)")


class MultiLabelFileSplit(FileSplit):
    """A multi-label split held as image file paths: the streaming counterpart of
    :class:`~lttoolbox.data.multilabel.MultiLabelDataset`.

    Its ``labels`` are a float32 multi-hot matrix ``(N, C)`` (1.0: the label is present), so an
    item of :class:`ImageFiles` is ``(image, row)`` and a collated batch's targets are ``(B, C)``;
    ``class_counts[c]`` is the number of images with label ``c`` (the column sums).

    Args:
        labels: Multi-hot ``(N, len(classes))``, 0/1 values.
        paths, classes, mean, std, image_size, decoder: As :class:`FileSplit`.

    Example:
        >>> s = MultiLabelFileSplit(["/a.jpg", "/b.jpg"], [[1, 1], [0, 1]], ["x", "y"],
        ...                         (0.5,) * 3, (0.2,) * 3, 224)
        >>> s.class_counts, s.multilabel, tuple(s.labels.shape), s.labels.dtype
        ([1, 2], True, (2, 2), torch.float32)
    """

    multilabel = True

    def _checked_labels(self, labels) -> torch.Tensor:
        """The multi-hot matrix as float32 ``(N, C)``, holding only 0 and 1."""
        matrix = torch.as_tensor(np.asarray(labels, dtype=np.float32))
        if matrix.dim() != 2 or matrix.shape[1] != len(self.classes):
            raise DataError(f"{len(self.paths)} images of {len(self.classes)} classes need a "
                            f"multi-hot label matrix of shape ({len(self.paths)}, "
                            f"{len(self.classes)}), got {tuple(matrix.shape)}")
        if not bool(((matrix == 0) | (matrix == 1)).all()):
            raise DataError("a multi-hot label matrix holds only 0 and 1")
        return matrix.contiguous()

    def _counts(self) -> list[int]:
        """Images per label: the column sums."""
        return [int(v) for v in self.labels.sum(0).round().to(torch.int64).tolist()]

    def __repr__(self) -> str:
        return (f"MultiLabelFileSplit({len(self)} image files at {self.image_size} px, "
                f"{self.num_classes} classes)")


DECODERS = ("pil", "torchvision")


def read_image(path: str, decoder: str = "pil") -> torch.Tensor:
    """Decode one image file to uint8 RGB ``(3, H, W)`` (16-bit images scaled to 8 bits, see
    :mod:`lttoolbox.data.images`).

    Args:
        decoder: ``pil`` (Pillow) or ``torchvision`` (``torchvision.io.decode_image``, deprecated
            since torchvision 0.29 in favour of TorchCodec). Both use libjpeg-turbo for JPEG;
            ``benchmarks/throughput.py --stream`` measures them.

    Raises:
        DataError: naming the file that cannot be read or decoded.
    """
    if decoder != "torchvision":
        array = np.array(load_image(path, "RGB"), dtype=np.uint8)  # writable, owned
        return torch.from_numpy(array).permute(2, 0, 1)
    try:
        import warnings

        from torchvision.io import ImageReadMode, decode_image, read_file
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return to_8bit_tensor(decode_image(read_file(path), mode=ImageReadMode.RGB))
    except Exception as err:  # torchvision raises its own types; the user needs the file
        raise image_error(path, err) from None


def crop_box(height: int, width: int, generator: torch.Generator | None,
             scale: tuple[float, float] = CROP_SCALE,
             ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """``RandomResizedCrop``'s box ``(top, left, h, w)``: the algorithm of
    ``torchvision.transforms.RandomResizedCrop.get_params`` (ten tries of an area fraction uniform
    in ``scale`` and a log-uniform aspect ratio, then the central crop clamped to ``ratio``),
    drawing from ``generator``.

    Example:
        >>> crop_box(100, 100, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1, 1))
        (0, 0, 100, 100)
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        draws = torch.rand(4, generator=generator).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * draws[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[1])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(draws[2] * (height - h + 1)), height - h)
            left = min(int(draws[3] * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class StreamTransform:
    """The per-image transform of the streaming path: uint8 ``(3, H, W)`` in, uint8
    ``(3, size, size)`` out.

    Args:
        size: Output side (224 for the large benchmarks).
        train: Training transform (random resized crop, flip, jitter) or evaluation transform
            (resize, centre crop; or the whole image resized, see ``centre_crop``).
        hflip: Mirror with probability 1/2 during training.
        color_jitter: Brightness, contrast and saturation jitter strength (0 = none), applied in
            a random order per image as ``torchvision.transforms.ColorJitter`` does.
        resize: Shorter side before the evaluation centre crop (default ``size * 256 / 224``).
        strong: AutoAugment or RandAugment and Cutout after the jitter (training only; see
            :class:`~lttoolbox.data.strong_aug.ImageStrong`).
        centre_crop: Evaluation: resize the shorter side to ``resize`` and take the centre
            crop (default), or, when false, resize the whole image to ``size`` x ``size``
            without keeping its aspect ratio (what the in-memory path does, and what the
            multi-label benchmarks evaluate: a crop can cut a labelled object out).
        min_crop_size: Training: instead of the random resized crop, the multi-label
            benchmarks' crop (:func:`~lttoolbox.data.photometric.crop_boxes`: at least this
            fraction of each side, ``h / w`` in ``[0.5, 2]``), resized to ``size`` x ``size``
            without keeping the aspect ratio (``None``: the random resized crop).
        photometric: Training: their photometric distortion
            (:func:`~lttoolbox.data.photometric.distort`) after the flip, clipped to 0..255
            (the streaming path yields uint8 images).

    Example:
        >>> t = StreamTransform(4, train=True, color_jitter=0.4)
        >>> t(torch.full((3, 9, 7), 100, dtype=torch.uint8), torch.Generator().manual_seed(1)).shape
        torch.Size([3, 4, 4])
    """

    def __init__(self, size: int, train: bool, hflip: bool = True, color_jitter: float = 0.0,
                 resize: int | None = None, strong: StrongSpec | None = None,
                 centre_crop: bool = True, min_crop_size: float | None = None,
                 photometric: bool = False):
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ConfigError(f"image_size must be a positive integer, got {size!r}")
        if isinstance(color_jitter, bool) or not isinstance(color_jitter, numbers.Real) \
                or not 0 <= color_jitter < 1:
            raise ConfigError(f"color_jitter must be a number in [0, 1), got {color_jitter!r}")
        if resize is not None and (isinstance(resize, bool) or not isinstance(
                resize, numbers.Integral) or resize < size):
            raise ConfigError(f"eval_resize must be an integer >= image_size ({size}), "
                              f"got {resize!r}")
        self.size = int(size)
        self.train = bool(train)
        self.hflip = bool(hflip)
        self.color_jitter = float(color_jitter)
        check_bool("eval_crop", centre_crop)
        if not centre_crop and resize is not None:
            raise ConfigError("eval_resize is the shorter side before the evaluation centre "
                              "crop; without the crop the whole image is resized to image_size")
        self.centre_crop = centre_crop
        # None: the evaluation resizes the whole image to size x size
        self.resize = (None if not centre_crop else int(resize) if resize is not None
                       else int(round(size * 256 / 224)))
        self.min_crop_size = (None if min_crop_size is None
                              else check_min_crop_size(min_crop_size))
        self.photometric = check_bool("photometric", photometric)
        self.strong = strong if self.train and strong is not None and strong.active else None
        self._strong = ImageStrong(strong) if self.strong is not None else None

    @property
    def random(self) -> bool:
        """Whether the transform draws random numbers."""
        return self.train

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        size = [self.size, self.size]
        if not self.train:
            if self.resize is None:
                return F.resize(image, size, antialias=True).contiguous()
            image = F.resize(image, [self.resize], antialias=True)
            return F.center_crop(image, size)
        if self.min_crop_size is None:
            top, left, h, w = crop_box(image.shape[-2], image.shape[-1], generator)
        else:
            top, left, h, w = crop_boxes(1, image.shape[-2], image.shape[-1],
                                         self.min_crop_size, generator=generator)[0].tolist()
        image = F.resized_crop(image, top, left, h, w, size, antialias=True)
        if self.hflip and float(torch.rand(1, generator=generator)) < 0.5:
            image = F.horizontal_flip(image)
        if self.photometric:
            pixels = distort(image.unsqueeze(0).to(torch.float32),
                             draw_distortion(1, generator=generator))
            image = pixels.squeeze(0).round_().clamp_(0, 255).to(torch.uint8)
        if self.color_jitter > 0:
            low, high = 1.0 - self.color_jitter, 1.0 + self.color_jitter
            factors = (low + (high - low) * torch.rand(3, generator=generator)).tolist()
            adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
            for which in torch.randperm(3, generator=generator).tolist():
                image = adjust[which](image, factors[which])
        if self._strong is not None:
            image = self._strong(image, generator)
        return image.contiguous()

    def __repr__(self) -> str:
        if not self.train and self.resize is None:
            return f"StreamTransform(eval: resize to {self.size} x {self.size})"
        if not self.train:
            return f"StreamTransform(eval: resize {self.resize}, centre crop {self.size})"
        strong = f", strong={self.strong}" if self.strong is not None else ""
        crop = ("random resized crop" if self.min_crop_size is None
                else f"random crop (min side {self.min_crop_size}) resized to")
        return (f"StreamTransform(train: {crop} {self.size}, hflip={self.hflip}, "
                f"color_jitter={self.color_jitter}{strong}"
                f"{', photometric=True' if self.photometric else ''})")


def draw_seeds(seed: int, epoch_key: Sequence[int], positions: np.ndarray) -> np.ndarray:
    """The seed of each image's transform: a function of ``(seed, epoch_key, position)`` alone,
    where the position counts in the epoch's global stream (so it is the same on any rank)."""
    base = int(np.random.SeedSequence([int(seed), *map(int, epoch_key)]).generate_state(
        1, dtype=np.uint64)[0] >> np.uint64(2))
    return (base + np.asarray(positions, dtype=np.int64)) % (1 << 62)


class ImageFiles(torch.utils.data.Dataset):
    """A map-style data set over ``(file index, seed)`` items: decodes the file and applies the
    transform with a generator seeded by the item's seed (no seed: the unseeded evaluation
    transform). Returns ``(uint8 image, label)``: a class id, or a multi-hot row of a
    :class:`MultiLabelFileSplit` (collated into ``(B, C)`` targets)."""

    def __init__(self, split: FileSplit, transform: StreamTransform):
        self.paths = split.paths
        self.labels = split.labels
        self.decoder = split.decoder
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        generator = None
        if seed is not None and self.transform.random:
            generator = torch.Generator().manual_seed(int(seed))
        image = self.transform(read_image(self.paths[index], self.decoder), generator)
        return image, self.labels[index]


class Unreadable:
    """What a loader yields instead of a batch holding a file that cannot be decoded: the one-line
    message. (An exception raised in a DataLoader worker reaches the training process as a new
    exception whose message is the worker's whole traceback, the file named on its last line.)"""

    def __init__(self, message: str):
        self.message = message


class LoaderFiles(ImageFiles):
    """:class:`ImageFiles` for a DataLoader: an unreadable file gives an :class:`Unreadable`
    item, which :func:`collate` turns into the batch (see :func:`batches`)."""

    def __getitem__(self, item):
        try:
            return super().__getitem__(item)
        except UnreadableImage as err:
            return Unreadable(str(err))


def collate(items: list):
    """``default_collate``, or the first :class:`Unreadable` item of the batch."""
    for item in items:
        if isinstance(item, Unreadable):
            return item
    return torch.utils.data.default_collate(items)


def batches(loader):
    """The loader's batches; :class:`~lttoolbox.errors.DataError` (one line naming the file) for
    a batch with an unreadable file."""
    for batch in loader:
        if isinstance(batch, Unreadable):
            raise UnreadableImage(batch.message)
        yield batch


class EpochBatches:
    """The batch sampler a persistent DataLoader re-reads every epoch: the batches of ``(index,
    seed)`` items of the epoch last given to :meth:`set`."""

    def __init__(self):
        self.batches: list[list] = []

    def set(self, batches: list[list]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
