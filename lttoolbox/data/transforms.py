"""Batched on-device image transforms: random crop with zero padding, flip, normalise (and the
strong augmentations of :mod:`lttoolbox.data.strong_aug`: AutoAugment or RandAugment, Cutout).

The CIFAR protocol of He et al. ("Deep Residual Learning for Image Recognition", CVPR 2016,
Sec. 4.2: "4 pixels are padded on each side, and a 32x32 crop is randomly sampled from the padded
image or its horizontal flip"), as used by LDAM-DRW through torchvision's
``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize(mean, std)``.

Here the same steps act on a whole uint8 batch already on the device, without a Python loop per
image: the batch is padded with 0 (black, as ``RandomCrop`` pads the uint8 PIL image before
``ToTensor``), each sample's window is gathered at its own random offset, a random half of the
samples is mirrored, and the result is scaled to ``[0, 1]``, normalised and laid out channels_last.

Deviations from torchvision (distribution-preserving): the flip is applied after the crop (a
mirrored window of the symmetric padding is a window of the mirrored padding, and the offsets are
uniform, so the distribution of outputs is the same), and the random numbers come from one draw
per batch on the tensor's device instead of Python's ``random``/CPU draws per image.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch
import torch.nn.functional as F

from ..checks import check_bool
from ..errors import ConfigError
from .photometric import check_min_crop_size, crop_boxes, crop_resize, distort, draw_distortion
from .strong_aug import BatchStrong, StrongSpec


def pad_crop(x: torch.Tensor, padding: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Crop each sample of a zero-padded batch at its own offset, keeping the input size.

    Args:
        x: Batch ``(B, C, H, W)`` of any dtype.
        padding: Zero padding added on every side.
        top: Row offset into the padded image per sample, ``(B,)`` integers in ``[0, 2 * padding]``.
        left: Column offset per sample, ``(B,)`` integers in ``[0, 2 * padding]``.

    Returns:
        ``(B, C, H, W)``: sample ``b`` is ``pad(x[b])[:, top[b]:top[b]+H, left[b]:left[b]+W]``.

    Example:
        >>> x = torch.arange(4, dtype=torch.uint8).view(1, 1, 2, 2)
        >>> pad_crop(x, 1, torch.tensor([0]), torch.tensor([0]))[0, 0].tolist()
        [[0, 0], [0, 0]]
    """
    if padding == 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = top.view(b, 1, 1, 1) + torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = left.view(b, 1, 1, 1) + torch.arange(w, device=x.device).view(1, 1, 1, w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    chan = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chan, rows, cols]


class BatchTransform:
    """uint8 image batch -> normalised float32 channels_last batch, with optional crop and flip.

    Args:
        mean: Per-channel mean on the 0..1 scale.
        std: Per-channel standard deviation on the 0..1 scale (all > 0).
        crop_padding: Zero padding for the random crop (0 = no crop).
        hflip: Mirror each sample left-right with probability 1/2.
        generator: A ``torch.Generator`` on the batch's device; ``None`` uses torch's global RNG of
            that device, which the trainer seeds, so runs are repeatable.
        strong: AutoAugment or RandAugment and Cutout (:func:`~lttoolbox.data.strong_aug.
            strong_augment`), after the crop and the flip, on the uint8 images; Cutout's squares
            are set to 0 before normalising (``cutout_fill: black``) or after it (``mean``).
        min_crop_size: The multi-label benchmarks' random crop (:mod:`~lttoolbox.data.
            photometric`): a box of at least this fraction of each side, resized back to the
            image size and rounded to uint8, before the flip (1: none).
        photometric: Their photometric distortion, on the float pixels (0..255 scale, not
            clipped) after every other step and before normalising.

    Example:
        >>> t = BatchTransform((0.5,), (0.25,), crop_padding=2, hflip=True)
        >>> y = t(torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
        >>> y.dtype, tuple(y.shape), float(y.max())
        (torch.float32, (4, 1, 8, 8), -2.0)
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], crop_padding: int = 0,
                 hflip: bool = False, generator: torch.Generator | None = None,
                 strong: StrongSpec | None = None, min_crop_size: float = 1.0,
                 photometric: bool = False):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != len(self.std) or not self.mean:
            raise ConfigError(f"mean and std must have one value per channel, "
                              f"got {mean!r} / {std!r}")
        if any(not s > 0 for s in self.std):
            raise ConfigError(f"std must be positive, got {std!r}")
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, numbers.Integral) \
                or crop_padding < 0:
            raise ConfigError(f"crop_padding must be a non-negative integer, got {crop_padding!r}")
        check_bool("hflip", hflip)
        if check_bool("photometric", photometric) and len(self.mean) != 3:
            raise ConfigError(f"photometric distorts RGB images (hue, saturation), these have "
                              f"{len(self.mean)} channel(s)")
        self.crop_padding = int(crop_padding)
        self.hflip = hflip
        self.min_crop_size = check_min_crop_size(min_crop_size)
        self.photometric = photometric
        self.generator = generator
        self.strong = strong if strong is not None and strong.active else None
        self._strong = BatchStrong(self.strong) if self.strong is not None else None
        self._affine: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def random(self) -> bool:
        """Whether the transform draws random numbers (crops, flip, distortion or strong
        augmentations)."""
        return (self.crop_padding > 0 or self.hflip or self.strong is not None
                or self.min_crop_size < 1 or self.photometric)

    def _scale_shift(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # (x / 255 - mean) / std == x * scale + shift; kept per device so a training step does no
        # host-to-device copy.
        if device not in self._affine:
            mean = torch.tensor(self.mean, dtype=torch.float64)
            std = torch.tensor(self.std, dtype=torch.float64)
            scale = (1.0 / (255.0 * std)).to(torch.float32).view(1, -1, 1, 1).to(device)
            shift = (-mean / std).to(torch.float32).view(1, -1, 1, 1).to(device)
            self._affine[device] = (scale, shift)
        return self._affine[device]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Transform a uint8 batch ``(B, C, H, W)`` on any device."""
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise TypeError(f"BatchTransform expects a uint8 (B, C, H, W) batch, "
                            f"got {x.dtype} of shape {tuple(x.shape)}")
        if x.shape[1] != len(self.mean):
            raise ValueError(f"batch has {x.shape[1]} channels, mean/std have {len(self.mean)}")
        b = x.shape[0]
        if self.crop_padding > 0:
            p = self.crop_padding
            offsets = torch.randint(0, 2 * p + 1, (2, b), device=x.device, generator=self.generator)
            x = pad_crop(x, p, offsets[0], offsets[1])
        if self.min_crop_size < 1:
            boxes = crop_boxes(b, x.shape[2], x.shape[3], self.min_crop_size, x.device,
                               self.generator)
            x = crop_resize(x.to(torch.float32), boxes).round_().clamp_(0, 255).to(torch.uint8)
        if self.hflip:
            flip = torch.rand(b, device=x.device, generator=self.generator) < 0.5
            x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
        holes = None
        if self._strong is not None:
            x, holes = self._strong(x, self.generator)
            if holes is not None and self.strong.cutout_fill == "black":
                x, holes = x.masked_fill(holes, 0), None
        scale, shift = self._scale_shift(x.device)
        x = x.contiguous(memory_format=torch.channels_last)  # 1-byte copy; the float ops keep it
        pixels = x.to(torch.float32)
        if self.photometric:
            pixels = distort(pixels, draw_distortion(b, x.device, self.generator))
        out = torch.addcmul(shift, pixels, scale)
        if holes is not None:  # cutout_fill: mean, 0 in normalised space
            out = out.masked_fill(holes, 0.0)
        return out.contiguous(memory_format=torch.channels_last)

    def __repr__(self) -> str:
        strong = f", strong={self.strong}" if self.strong is not None else ""
        official = ((f", min_crop_size={self.min_crop_size}" if self.min_crop_size < 1 else "")
                    + (", photometric=True" if self.photometric else ""))
        return (f"BatchTransform(mean={self.mean}, std={self.std}, "
                f"crop_padding={self.crop_padding}, hflip={self.hflip}{strong}{official})")
