"""Strong augmentations: AutoAugment, RandAugment and Cutout, batched on the device and per image.

* AutoAugment: Cubuk, Zoph, Mane, Vasudevan, Le, "AutoAugment: Learning Augmentation Strategies
  from Data", CVPR 2019. One of the policy's 25 sub-policies is drawn per image; each of its two
  operations is applied with its probability at its fixed magnitude bin (of 10); the signed
  operations take a random sign. The policies (``cifar10``, ``imagenet``, ``svhn``) are
  torchvision's ``AutoAugmentPolicy`` tables, read from torchvision itself.
* RandAugment: Cubuk, Zoph, Shlens, Le, "RandAugment: Practical automated data augmentation with a
  reduced search space", NeurIPS 2020. ``N`` operations drawn uniformly (with replacement) from 14
  (Identity included), all at magnitude bin ``M`` of 31, as torchvision's ``v2.RandAugment``.
* Cutout: DeVries & Taylor, "Improved Regularization of Convolutional Neural Networks with Cutout",
  arXiv 1708.04552, 2017; official code github.com/uoguelph-mlrg/Cutout at 287f934
  (``util/cutout.py`` lines 29-35). Per image, ``holes`` squares: centre ``(y, x)`` uniform over
  the pixels, rows ``clip(y - L // 2, 0, H) .. clip(y + L // 2, 0, H)`` (end excluded) and the
  same for columns, set to 0. The official code cuts after ``Normalize`` (``train.py`` lines
  76-79: 0 = the mean colour); ResCom's CIFAR code (dvlab-research/Imbalanced-Learning at 01bbecf,
  the same square in ``ResCom/augment/autoaugment.py`` lines 22-25, applied between ``ToTensor``
  and ``Normalize`` in ``ResCom/main_rescom.py`` lines 238-245) and MARC's
  (microsoft/robustlearn at 31580cd, ``marc/data/ImbalanceCIFAR.py`` lines 28-36) cut before it
  (0 = black). ``cutout_fill`` chooses: ``black`` (default, the long-tail codes') or ``mean``.

The operations and magnitudes are torchvision's (``torchvision.transforms.v2`` 0.29,
``_AutoAugmentBase._apply_image_or_video_transform`` and ``_AUGMENTATION_SPACE``): shear ``m`` in
``linspace(0, 0.3)`` as ``affine(shear=degrees(atan(m)), center=top-left)``; translate
``int(linspace(0, 150/331 * side)[bin])`` pixels; rotate ``linspace(0, 30)`` degrees about the
centre; brightness, colour (saturation), contrast and sharpness by the factor ``1 + m``,
``m`` in ``linspace(0, 0.9)``; posterize to ``round(8 - bin / ((bins - 1) / 4))`` bits; solarize
above ``255 * linspace(1, 0)[bin]``; autocontrast, equalize and invert without magnitude; nearest
interpolation and ``fill`` (0 by default) for the geometric ones.

Two implementations of the same distribution:

* :class:`BatchStrong` (the in-memory path): a uint8 batch on the training device. The random
  numbers are drawn once per batch (a fixed count, from the transform's generator or torch's
  global RNG, which the trainer seeds and checkpoints: a resumed run repeats them). Then, per
  slot, the geometric operations (shear, translate, rotate) are one affine warp with a matrix per
  image, and each other operation a slot may hold is computed with a magnitude per image (a blend
  factor, bits or threshold per image); on an accelerator for the whole batch, the images that
  drew it kept (``torch.where``): no Python loop over images and no host synchronisation (a
  boolean gather of the images that drew an operation would read their count on the host); on the
  CPU only for the images that drew it. The per-image arithmetic is torchvision's, so an operation
  at a given magnitude gives torchvision's pixels on each image (checked on the CPU in
  ``tests/test_strong_aug.py``).
* :class:`ImageStrong` (the streaming path): torchvision's own ``AutoAugment`` / ``RandAugment``
  on each image in the DataLoader worker, with torch's global RNG seeded for the call from the
  image's generator (and restored after it), so an image's draws depend on its seed only, as the
  other streaming transforms' do; then Cutout on the uint8 image.

Deviations, deliberate:

* ResCom's CIFAR code uses the PIL ``CIFAR10Policy`` of github.com/DeepVoltaire/AutoAugment
  (``ResCom/augment/autoaugment.py``), not torchvision's: same sub-policies and magnitude ranges,
  but bicubic shear (torchvision: nearest), translation by ``m * side`` without truncation to an
  integer, solarize thresholds ``linspace(256, 0)`` (torchvision ``255 * linspace(1, 0)``) and
  PIL's ``ImageEnhance`` rounding. Here torchvision's operations are used on both paths.
* Cutout with ``cutout_fill: mean`` needs the in-memory path: the streaming path's images are
  uint8 until the device normalises them, and no uint8 value is exactly the mean.

Example:
    >>> spec = strong_augment(autoaugment="cifar10", cutout=4)
    >>> t = BatchStrong(spec)
    >>> x, holes = t(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.Generator().manual_seed(0))
    >>> x.dtype, tuple(holes.shape)
    (torch.uint8, (2, 1, 8, 8))
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as nnf

from ..checks import check_int
from ..errors import ConfigError

#: AutoAugment policies (torchvision's ``AutoAugmentPolicy`` values).
POLICIES = ("cifar10", "imagenet", "svhn")
#: Values of ``cutout_fill``: 0 on the 0..1 pixel scale, or 0 after normalisation.
CUTOUT_FILLS = ("black", "mean")
#: Magnitude bins: AutoAugment's policies index 10; RandAugment uses torchvision's default 31.
AUTO_BINS = 10
RAND_BINS = 31
#: RandAugment's operations, in torchvision's order.
RAND_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
            "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
ALL_OPS = RAND_OPS + ("Invert",)
SIGNED = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
                    "Color", "Contrast", "Sharpness"})
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
BLENDS = ("Brightness", "Color", "Contrast", "Sharpness")


@dataclass(frozen=True)
class StrongSpec:
    """The strong augmentations a recipe asked for (see :func:`strong_augment`)."""

    autoaugment: str | None = None
    randaugment: int = 0
    randaugment_magnitude: int = 9
    cutout: int = 0
    cutout_holes: int = 1
    cutout_fill: str = "black"
    augment_fill: tuple[int, ...] = (0,)
    #: Keys set to act but with nothing to act on (a magnitude without RandAugment, ...): one
    #: sentence each, which the trainer prints as a warning.
    notes: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        """Whether any strong augmentation is on."""
        return bool(self.autoaugment or self.randaugment or self.cutout)

    def meta(self) -> dict:
        """The recipe keys, as recorded in the run's data meta."""
        return {"autoaugment": self.autoaugment, "randaugment": self.randaugment,
                "randaugment_magnitude": self.randaugment_magnitude, "cutout": self.cutout,
                "cutout_holes": self.cutout_holes, "cutout_fill": self.cutout_fill,
                "augment_fill": list(self.augment_fill)}


def strong_augment(autoaugment: str | None = None, randaugment: int = 0,
                   randaugment_magnitude: int = 9, cutout: int = 0, cutout_holes: int = 1,
                   cutout_fill: str = "black", augment_fill: int | Sequence[int] = 0
                   ) -> StrongSpec:
    """Check the data keys of the strong augmentations (``.active``: whether any is on).

    Args:
        autoaugment: AutoAugment policy of the training transform, after the crop and flip:
            ``null`` (off) or ``cifar10`` | ``imagenet`` | ``svhn``.
        randaugment: RandAugment's number of operations per image ``N`` (0: off).
        randaugment_magnitude: RandAugment's magnitude bin ``M`` in ``[0, 30]`` (torchvision's
            default 9).
        cutout: Side ``L`` of each Cutout square in pixels (0: off).
        cutout_holes: Squares per image.
        cutout_fill: ``black`` (0 before normalising, as ResCom's and MARC's CIFAR code) or
            ``mean`` (0 after it, as DeVries & Taylor's ``cutout.py``).
        augment_fill: Pixel value where a geometric AutoAugment/RandAugment operation uncovers
            the image (torchvision's ``fill``): one value in 0..255 or one per channel.

    Raises:
        ConfigError: one line naming the key.

    Example:
        >>> strong_augment().active, strong_augment(randaugment=2).randaugment
        (False, 2)
        >>> strong_augment(randaugment_magnitude=12).notes[0][:52]
        'data.randaugment_magnitude=12 has no effect: RandAug'

    """
    if autoaugment is not None and autoaugment not in POLICIES:
        raise ConfigError(f"autoaugment must be null or one of {', '.join(POLICIES)}, "
                          f"got {autoaugment!r}")
    randaugment = check_int("randaugment", randaugment, 0)
    magnitude = check_int("randaugment_magnitude", randaugment_magnitude, 0)
    if magnitude > RAND_BINS - 1:
        raise ConfigError(f"randaugment_magnitude must be at most {RAND_BINS - 1} (torchvision's "
                          f"{RAND_BINS} magnitude bins), got {magnitude}")
    if autoaugment is not None and randaugment:
        raise ConfigError("autoaugment and randaugment are two alternative policies; set one "
                          "(randaugment: 0 or autoaugment: null)", key="randaugment")
    cutout = check_int("cutout", cutout, 0)
    holes = check_int("cutout_holes", cutout_holes, 1)
    if cutout_fill not in CUTOUT_FILLS:
        raise ConfigError(f"cutout_fill must be one of {', '.join(CUTOUT_FILLS)}, "
                          f"got {cutout_fill!r}")
    fill = augment_fill if isinstance(augment_fill, (list, tuple)) else [augment_fill]
    if not fill or any(isinstance(v, bool) or not isinstance(v, numbers.Integral)
                       or not 0 <= v <= 255 for v in fill):
        raise ConfigError(f"augment_fill must be an integer in 0..255 or a list of one per "
                          f"channel, got {augment_fill!r}")
    fill = tuple(int(v) for v in fill)
    notes = []
    if not randaugment and magnitude != 9:
        notes.append(f"data.randaugment_magnitude={magnitude} has no effect: RandAugment is off "
                     f"(data.randaugment: 0)")
    for key, value, default in (("cutout_holes", holes, 1), ("cutout_fill", cutout_fill, "black")):
        if not cutout and value != default:
            notes.append(f"data.{key}={value} has no effect: Cutout is off (data.cutout: 0)")
    if autoaugment is None and not randaugment and fill != (0,):
        notes.append(f"data.augment_fill={list(fill)} has no effect: it fills what AutoAugment's "
                     f"or RandAugment's geometric operations uncover, and both are off")
    return StrongSpec(autoaugment, randaugment, magnitude, cutout, holes, cutout_fill, fill,
                      tuple(notes))


def check_channels(spec: StrongSpec | None, channels: int) -> None:
    """The operations take 1 or 3 channels (torchvision's colour operations), and ``augment_fill``
    one value or one per channel."""
    if spec is None or not spec.active:
        return
    if (spec.autoaugment or spec.randaugment) and channels not in (1, 3):
        raise ConfigError(f"autoaugment and randaugment need images of 1 or 3 channels, these "
                          f"have {channels}", key="autoaugment" if spec.autoaugment
                          else "randaugment")
    if len(spec.augment_fill) not in (1, channels):
        raise ConfigError(f"has {len(spec.augment_fill)} values for images of "
                          f"{channels} channel(s)", key="augment_fill")


# ----------------------------------------------------------------------------- magnitude tables
def magnitudes(op: str, bins: int, height: int, width: int) -> torch.Tensor | None:
    """torchvision's magnitude table of ``op`` (``_AUGMENTATION_SPACE``), float64 (each entry is
    the float32 value torchvision reads with ``float(...)``); ``None`` for no magnitude."""
    if op in ("ShearX", "ShearY"):
        values = torch.linspace(0.0, 0.3, bins)
    elif op == "TranslateX":
        values = torch.linspace(0.0, 150.0 / 331.0 * width, bins)
    elif op == "TranslateY":
        values = torch.linspace(0.0, 150.0 / 331.0 * height, bins)
    elif op == "Rotate":
        values = torch.linspace(0.0, 30.0, bins)
    elif op in BLENDS:
        values = torch.linspace(0.0, 0.9, bins)
    elif op == "Posterize":
        values = (8 - (torch.arange(bins) / ((bins - 1) / 4))).round().int()
    elif op == "Solarize":
        values = torch.linspace(1.0, 0.0, bins)
    else:
        return None
    return values.to(torch.float64)


def inverse_affine(center: Sequence[float], angle: float, translate: Sequence[float],
                   shear: Sequence[float]) -> list[float]:
    """The inverse affine matrix torchvision samples with (scale 1): the formula of
    ``torchvision.transforms.v2.functional._geometry._get_inverse_affine_matrix``."""
    rot = math.radians(angle)
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    cos_sy = math.cos(sy)
    tan_sx = math.tan(sx)
    rot_minus_sy = rot - sy
    cx_plus_tx, cy_plus_ty = cx + tx, cy + ty
    a = math.cos(rot_minus_sy) / cos_sy
    b = -(a * tan_sx + math.sin(rot))
    c = math.sin(rot_minus_sy) / cos_sy
    d = math.cos(rot) - c * tan_sx
    matrix = [d, -b, 0.0, -c, a, 0.0]
    matrix[2] += cx - matrix[0] * cx_plus_tx - matrix[1] * cy_plus_ty
    matrix[5] += cy - matrix[3] * cx_plus_tx - matrix[4] * cy_plus_ty
    return matrix


def geometric_matrix(op: str, magnitude: float, height: int, width: int) -> list[float]:
    """The matrix torchvision's ``op`` at the signed ``magnitude`` samples with."""
    if op in ("ShearX", "ShearY"):
        shear = math.degrees(math.atan(magnitude))
        center = [-width * 0.5, -height * 0.5]  # center=[0, 0] in pixels: the top-left corner
        return inverse_affine(center, 0.0, [0.0, 0.0],
                              [shear, 0.0] if op == "ShearX" else [0.0, shear])
    if op in ("TranslateX", "TranslateY"):
        shift = float(int(magnitude))
        move = [shift, 0.0] if op == "TranslateX" else [0.0, shift]
        return inverse_affine([0.0, 0.0], 0.0, move, [0.0, 0.0])
    angle = magnitude % 360  # rotate: the sign convention of F.rotate
    return inverse_affine([0.0, 0.0], -angle, [0.0, 0.0], [0.0, 0.0])


# ------------------------------------------------------------------- per-image batched operations
def base_grid(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's ``_affine_grid`` base grid ``(1, H * W, 3)`` of centred pixel coordinates,
    and its rescaling ``(0.5 w, 0.5 h)``."""
    base = torch.empty(1, h, w, 3, dtype=torch.float32, device=device)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=device))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h,
                                      device=device).unsqueeze_(-1))
    base[..., 2].fill_(1)
    scale = torch.tensor([0.5 * w, 0.5 * h], dtype=torch.float32, device=device)
    return base.view(1, h * w, 3), scale


def affine_batch(x: torch.Tensor, theta: torch.Tensor, fill: torch.Tensor,
                 grid: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Nearest-neighbour affine warp of each image by its own inverse matrix, as torchvision's
    ``_affine_grid`` + ``_apply_grid_transform`` do for one image.

    Args:
        x: uint8 ``(B, C, H, W)``.
        theta: float32 ``(B, 2, 3)`` inverse matrices in centred pixel coordinates.
        fill: float32 ``(1, C or 1, 1, 1)`` on ``x``'s device: the value of uncovered pixels.
        grid: :func:`base_grid` for ``x``'s size and device (made here when not given).
    """
    b, c, h, w = x.shape
    device = x.device
    base, scale = grid if grid is not None else base_grid(h, w, device)
    rescaled = theta.transpose(1, 2).div(scale)
    # the (HW x 3) @ (3 x 2) product of torchvision's _affine_grid, one matrix per image
    grid = base.expand(b, -1, -1).bmm(rescaled)
    grid = grid.view(b, h, w, 2)
    image = torch.cat((x.to(torch.float32), torch.ones(b, 1, h, w, device=device)), dim=1)
    image = nnf.grid_sample(image, grid, mode="nearest", padding_mode="zeros",
                            align_corners=False)
    image, mask = torch.tensor_split(image, indices=(-1,), dim=-3)
    image = torch.where(mask.expand_as(image) < 0.5, fill.expand_as(image), image)
    return image.round_().to(torch.uint8)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """torchvision's float grayscale of a uint8 batch (``_rgb_to_grayscale_image``), floored."""
    r, g, b = x.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3).floor_()


def _blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor, alpha: torch.Tensor
           ) -> torch.Tensor:
    """torchvision's ``_blend`` with a ratio per image: ``x * r + other * (1 - r)``, clamped and
    truncated to uint8 (``addcmul`` rounds as ``add_(other, alpha=1 - r)`` does)."""
    return torch.addcmul(x.mul(ratio), other, alpha).clamp_(0, 255).to(torch.uint8)


def blend_op(op: str, x: torch.Tensor, ratio: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Brightness, Color (saturation), Contrast or Sharpness with the factor ``ratio`` per image
    (``alpha = 1 - ratio``, computed in float64 and rounded to float32 as torchvision's scalar)."""
    if op == "Brightness":
        return x.mul(ratio).clamp_(0, 255).to(torch.uint8)
    if op == "Color":
        return x if x.shape[-3] == 1 else _blend(x, _gray(x), ratio, alpha)
    if op == "Contrast":
        gray = _gray(x) if x.shape[-3] == 3 else x.to(torch.float32)
        return _blend(x, torch.mean(gray, dim=(-3, -2, -1), keepdim=True), ratio, alpha)
    # Sharpness: torchvision's adjust_sharpness_image, the border pixels kept
    c, h, w = x.shape[-3:]
    if h <= 2 or w <= 2:
        return x
    kernel = sharpness_kernel(x.device).expand(c, 1, 3, 3)
    out = x.to(torch.float32, copy=True)
    blurred = nnf.conv2d(out, kernel, groups=c).round_()
    view = out[..., 1:-1, 1:-1]
    view.addcmul_(blurred.sub_(view), alpha)
    return out.clamp_(0, 255).to(torch.uint8)


_KERNELS: dict = {}


def sharpness_kernel(device: torch.device) -> torch.Tensor:
    """torchvision's smoothing kernel of ``adjust_sharpness`` (1s around a 5, over 13), made
    once per device."""
    if device not in _KERNELS:
        a, b = 1.0 / 13.0, 5.0 / 13.0
        _KERNELS[device] = torch.tensor([[a, a, a], [a, b, a], [a, a, a]], dtype=torch.float32,
                                        device=device)
    return _KERNELS[device]


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``autocontrast_image`` without boolean-mask assignments (no host sync)."""
    f = x.to(torch.float32)
    low = f.amin(dim=(-2, -1), keepdim=True)
    high = f.amax(dim=(-2, -1), keepdim=True)
    flat = high == low
    inv_scale = torch.where(flat, torch.ones_like(low), (high - low).mul_(1.0 / 255))
    low = torch.where(flat, torch.zeros_like(low), low)
    return f.sub_(low).div_(inv_scale).clamp_(0, 255).to(torch.uint8)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the ``bits`` high bits of each image (``bits``: int64 ``(B,)`` in 0..8)."""
    mask = ((1 << bits) - 1) << (8 - bits)
    return x & mask.to(torch.uint8).view(-1, 1, 1, 1)


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert the pixels ``>= threshold`` (float32 ``(B,)``) of each image."""
    return torch.where(x.to(torch.float32) >= threshold.view(-1, 1, 1, 1), x.bitwise_not(), x)


def cutout_mask(batch: int, height: int, width: int, length: int, holes: int,
                device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """Boolean ``(B, 1, H, W)``: True inside one of each image's ``holes`` squares of side
    ``length`` (DeVries & Taylor's ``cutout.py``: centre uniform over the pixels, clipped at the
    border, rows ``y - L // 2 .. y + L // 2`` with the end excluded)."""
    cy = torch.randint(0, height, (holes, batch), device=device, generator=generator)
    cx = torch.randint(0, width, (holes, batch), device=device, generator=generator)
    half = length // 2
    rows = torch.arange(height, device=device).view(1, 1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, 1, width)

    def inside(centre, index, size):
        lo = (centre - half).clamp(0, size).view(holes, batch, 1, 1)
        hi = (centre + half).clamp(0, size).view(holes, batch, 1, 1)
        return (index >= lo) & (index < hi)

    mask = inside(cy, rows, height) & inside(cx, cols, width)  # (holes, B, H, W)
    return mask.any(dim=0).unsqueeze(1)


# -------------------------------------------------------------------------- the batched policies
def policy_table(policy: str) -> list:
    """torchvision's sub-policies of ``policy``: ``[((op, p, bin), (op, p, bin)), ...]``."""
    from torchvision.transforms import v2

    return v2.AutoAugment(v2.AutoAugmentPolicy(policy))._policies


class BatchStrong:
    """AutoAugment or RandAugment, then the Cutout squares, on a uint8 batch on any device.

    Call it with a uint8 ``(B, C, H, W)`` batch and a generator (``None``: torch's global RNG of
    the batch's device); it returns the augmented uint8 batch and the Cutout mask
    ``(B, 1, H, W)`` (``None`` without Cutout), which :class:`~lttoolbox.data.transforms.
    BatchTransform` fills before or after normalising, as ``cutout_fill`` says.

    Per batch it draws, in this order: AutoAugment: the sub-policy ``(B,)``, the two apply draws
    ``(2, B)`` and the two signs ``(2, B)``; RandAugment: the operations ``(N, B)`` and signs
    ``(N, B)``; Cutout: the centres' rows ``(holes, B)`` and columns ``(holes, B)``.
    """

    def __init__(self, spec: StrongSpec):
        self.spec = spec
        self._tables: dict = {}
        #: Compute only the images that drew an operation (True), or the whole batch and keep
        #: theirs (False); None: only on the CPU (see :meth:`_apply_where`).
        self.select: bool | None = None

    def _slots(self, b: int, device, generator):
        """Per slot: ``(op, bin, negative, applied)`` tensors ``(B,)``, and the op names."""
        spec = self.spec
        if spec.autoaugment:
            columns = self._policy(device)
            sub = torch.randint(0, len(columns[0][1]), (b,), device=device, generator=generator)
            apply = torch.rand(2, b, device=device, generator=generator)
            sign = torch.rand(2, b, device=device, generator=generator) <= 0.5
            slots = [(names, op[sub], bins[sub], sign[s], apply[s] <= prob[sub])
                     for s, (names, op, prob, bins) in enumerate(columns)]
            return slots, AUTO_BINS
        names = list(RAND_OPS)
        op = torch.randint(0, len(names), (spec.randaugment, b), device=device,
                           generator=generator)
        sign = torch.rand(spec.randaugment, b, device=device, generator=generator) <= 0.5
        bins = torch.full((b,), spec.randaugment_magnitude, device=device)
        return [(names, op[n], bins, sign[n], None) for n in range(spec.randaugment)], RAND_BINS

    def _policy(self, device) -> list:
        """Per slot of the sub-policies: the op names it holds, and per sub-policy its op (an
        index into the names), probability and bin, on ``device``."""
        key = ("policy", device)
        if key not in self._tables:
            table = policy_table(self.spec.autoaugment)
            columns = []
            for s in range(2):
                names = sorted({entry[s][0] for entry in table}, key=ALL_OPS.index)
                columns.append((
                    names,
                    torch.tensor([names.index(e[s][0]) for e in table], device=device),
                    torch.tensor([e[s][1] for e in table], dtype=torch.float32, device=device),
                    torch.tensor([e[s][2] or 0 for e in table], device=device)))
            self._tables[key] = columns
        return self._tables[key]

    def _table(self, op: str, bins: int, h: int, w: int, device) -> torch.Tensor | None:
        """Per (bin, sign) the op's parameter on the device: the matrices of a geometric op,
        ``(ratio, 1 - ratio)`` of a blend, the bits or the threshold."""
        key = (op, bins, h, w, device)
        if key not in self._tables:
            values = magnitudes(op, bins, h, w)
            if values is None:
                self._tables[key] = None
            else:
                signed = [(v, -v if op in SIGNED else v) for v in values.tolist()]
                flat = [m for pair in signed for m in pair]  # index = 2 * bin + negative
                if op in GEOMETRIC:
                    t = torch.tensor([geometric_matrix(op, m, h, w) for m in flat],
                                     dtype=torch.float32).view(-1, 2, 3)
                elif op in BLENDS:
                    t = torch.tensor([[1.0 + m, 1.0 - (1.0 + m)] for m in flat],
                                     dtype=torch.float32)
                elif op == "Posterize":
                    t = torch.tensor([int(m) for m in flat], dtype=torch.int64)
                else:  # Solarize: torchvision's threshold 255 * m, as a float32 scalar
                    t = torch.tensor([255.0 * m for m in flat], dtype=torch.float32)
                self._tables[key] = t.to(device)
        return self._tables[key]

    def apply_op(self, op: str, x: torch.Tensor, index: torch.Tensor | None,
                 bins: int) -> torch.Tensor:
        """``op`` on every image of ``x`` with the parameter at ``index`` (``2 * bin + negative``
        per image) of its table; the whole batch is computed."""
        h, w = x.shape[-2:]
        table = self._table(op, bins, h, w, x.device)
        if op in GEOMETRIC:
            return affine_batch(x, table[index], *self._grid(h, w, x.device))
        if op in BLENDS:
            factors = table[index]
            return blend_op(op, x, factors[:, 0].view(-1, 1, 1, 1),
                            factors[:, 1].view(-1, 1, 1, 1))
        if op == "Posterize":
            return posterize(x, table[index])
        if op == "Solarize":
            return solarize(x, table[index])
        if op == "AutoContrast":
            return autocontrast(x)
        if op == "Equalize":
            from torchvision.transforms.v2 import functional as F
            return F.equalize(x)
        if op == "Invert":
            return x.bitwise_not()
        return x  # Identity

    def _grid(self, h: int, w: int, device) -> tuple[torch.Tensor, tuple]:
        """The fill ``(1, C or 1, 1, 1)`` and :func:`base_grid` of the geometric operations,
        made once per size and device (no host-to-device copy per batch)."""
        key = ("grid", h, w, device)
        if key not in self._tables:
            fill = torch.tensor([float(v) for v in self.spec.augment_fill],
                                dtype=torch.float32).view(1, -1, 1, 1)
            self._tables[key] = (fill.to(device), base_grid(h, w, device))
        return self._tables[key]

    def _geometric(self, names: tuple, bins: int, h: int, w: int, device):
        """The matrices of every geometric operation among ``names``, stacked, and per name the
        offset of its rows (0 for the others) and whether it is geometric, as tensors."""
        key = ("geometric", names, bins, h, w, device)
        if key not in self._tables:
            tables, offsets, start = [], [], 0
            for name in names:
                offsets.append(start if name in GEOMETRIC else 0)  # 0: a valid row, not kept
                if name in GEOMETRIC:
                    tables.append(self._table(name, bins, h, w, device))
                    start += len(tables[-1])
            self._tables[key] = (torch.cat(tables) if tables else None,
                                 torch.tensor(offsets, device=device),
                                 torch.tensor([n in GEOMETRIC for n in names], device=device))
        return self._tables[key]

    def _apply_where(self, x: torch.Tensor, chosen: torch.Tensor, compute) -> torch.Tensor:
        """``x`` with ``compute(images, rows)`` (``rows``: the images' places in the batch, or
        None for all) in place of the images where ``chosen``. On an accelerator the whole batch
        is computed and the chosen images kept (selecting them first would read their count on
        the host: a synchronisation per operation); on the CPU, where reading it costs nothing,
        only the chosen images are computed. The pixels are the same either way (each image's
        arithmetic does not depend on the others)."""
        if not (self.select if self.select is not None else x.device.type == "cpu"):
            return torch.where(chosen.view(-1, 1, 1, 1), compute(x, None), x)
        rows = chosen.nonzero().squeeze(1)
        if rows.numel() == 0:
            return x
        x = x.clone()
        x[rows] = compute(x[rows], rows)
        return x

    def _slot(self, x: torch.Tensor, names: list, op: torch.Tensor, index: torch.Tensor,
              applied: torch.Tensor | None, bins: int) -> torch.Tensor:
        """One operation per image: ``names[op]`` at ``index`` where ``applied``. The geometric
        operations are one affine warp with a matrix per image; each other operation is
        computed once for the images that drew it."""
        h, w = x.shape[-2:]
        matrices, offsets, geometric = self._geometric(tuple(names), bins, h, w, x.device)
        if matrices is not None:
            theta = matrices[offsets[op] + index]  # any row for the other images: not kept
            chosen = geometric[op] if applied is None else geometric[op] & applied
            fill, grid = self._grid(h, w, x.device)
            x = self._apply_where(x, chosen, lambda part, rows: affine_batch(
                part, theta if rows is None else theta[rows], fill, grid))
        for k, name in enumerate(names):
            if name == "Identity" or name in GEOMETRIC:
                continue
            chosen = op == k if applied is None else (op == k) & applied
            x = self._apply_where(x, chosen, lambda part, rows, name=name: self.apply_op(
                name, part, index if rows is None else index[rows], bins))
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise TypeError(f"strong augmentations take a uint8 (B, C, H, W) batch, "
                            f"got {x.dtype} of shape {tuple(x.shape)}")
        b, _, h, w = x.shape
        spec = self.spec
        if spec.autoaugment or spec.randaugment:
            slots, bins = self._slots(b, x.device, generator)
            for names, op, bin_, negative, applied in slots:
                x = self._slot(x, names, op, 2 * bin_ + negative.long(), applied, bins)
        mask = None
        if spec.cutout:
            mask = cutout_mask(b, h, w, spec.cutout, spec.cutout_holes, x.device, generator)
        return x, mask

    def __repr__(self) -> str:
        return f"BatchStrong({self.spec})"


class ImageStrong:
    """The streaming path's per-image strong augmentation: torchvision's ``AutoAugment`` or
    ``RandAugment`` (torch's global RNG seeded for the call from ``generator``, then restored),
    then Cutout (black) on the uint8 ``(C, H, W)`` image.

    Example:
        >>> t = ImageStrong(strong_augment(randaugment=2, cutout=2))
        >>> t(torch.full((3, 6, 6), 9, dtype=torch.uint8), torch.Generator().manual_seed(0)).shape
        torch.Size([3, 6, 6])
    """

    def __init__(self, spec: StrongSpec):
        from torchvision.transforms import v2

        if spec.cutout and spec.cutout_fill != "black":
            raise ConfigError("cutout_fill: mean needs the in-memory path (path: memory): the "
                              "streaming path's images are uint8 until the device normalises "
                              "them, and no uint8 value is exactly the mean", key="cutout_fill")
        self.spec = spec
        fill = list(spec.augment_fill) if len(spec.augment_fill) > 1 else spec.augment_fill[0]
        self.policy = None
        if spec.autoaugment:
            self.policy = v2.AutoAugment(v2.AutoAugmentPolicy(spec.autoaugment), fill=fill)
        elif spec.randaugment:
            self.policy = v2.RandAugment(spec.randaugment, spec.randaugment_magnitude,
                                         RAND_BINS, fill=fill)

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.policy is not None:
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                image = self.policy(image)
        if self.spec.cutout:
            h, w = image.shape[-2:]
            mask = cutout_mask(1, h, w, self.spec.cutout, self.spec.cutout_holes, image.device,
                               generator)[0]
            image = image.masked_fill(mask, 0)
        return image

    def __repr__(self) -> str:
        return f"ImageStrong({self.spec})"
