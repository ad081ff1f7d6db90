"""The training augmentation of the multi-label benchmarks' official code: a photometric
distortion and a random crop of at least ``min_crop_size`` of each side.

The distribution-balanced loss (Wu et al., ECCV 2020; official code
wutong16/DistributionBalancedLoss, ``mllt/datasets/extra_aug.py``, configured in
``configs/voc/LT_resnet50_pfc_DB.py`` and ``configs/coco/LT_resnet50_pfc_DB.py``: ``extra_aug``)
trains VOC-MLT and COCO-MLT on images that go, in this order, through

1. ``PhotoMetricDistortion`` (the SSD distortion as mmdetection wrote it), on float32 pixels on
   the 0..255 scale and never clipped: with probability 1/2 each, a brightness shift
   ``U(-32, 32)``; a contrast factor ``U(0.5, 1.5)`` (multiplied in, before the HSV steps or
   after them, each order with probability 1/2); in HSV (OpenCV's float conversion: hue in
   degrees), a saturation factor ``U(0.5, 1.5)`` and a hue shift ``U(-18, 18)`` wrapped into
   ``[0, 360]``; and a random permutation of the three channels;
2. ``RandomCrop(min_crop_size=0.8)``: up to 50 tries of a box with sides ``U(0.8 w, w)`` and
   ``U(0.8 h, h)``, kept when its ``h / w`` lies in ``[0.5, 2]`` (else the whole image), its
   corner uniform, its edges truncated to integers;
3. the horizontal flip (``flip_ratio=0.5``) and the resize to 224 x 224 (aspect ratio not kept).

Here the same draws act on a whole batch on the device (:func:`distort`, :func:`crop_boxes`,
:func:`crop_resize`; :class:`~lttoolbox.data.transforms.BatchTransform` uses them on the
in-memory path, :class:`~lttoolbox.data.stream.StreamTransform` per image on the streaming
path). Deviations, each documented where it is made:

* The code draws the crop's corner with ``numpy.random.uniform(w - new_w)``: ``low = w - new_w``
  and numpy's default ``high = 1``, so the corner falls in ``[1, w - new_w]`` instead of
  ``[0, w - new_w]`` (and at 0 when the slack is under a pixel). The corner here is uniform in
  ``[0, w - new_w]``, as the comment and the crop's intent say.
* The in-memory path holds the images already resized to ``image_size`` square, so it crops that
  image and resizes the crop back (one more bilinear resampling than the code's crop of the
  original), and the ``h / w`` test sees the square's sides (every box passes, where the code
  keeps the whole image for a picture more than 2.5 times wider than high or the reverse), and
  it rounds the resampled crop back to uint8 for the steps that follow.
* The distortion acts after the crop and the flip, not before: its steps act on each pixel
  alone, so they commute with cropping and mirroring; only the resampling of the resize sits on
  the other side of the non-linear HSV steps.
* The streaming path hands uint8 images to the batch, so there the distorted pixels are clipped
  to 0..255; the in-memory path distorts the float batch before normalising it, unclipped, as
  the code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import check_number

#: ``PhotoMetricDistortion``'s defaults, which both official configs set explicitly.
BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18.0
#: The crop's tries and its ``h / w`` bounds (``extra_aug.py``, ``RandomCrop.__call__``).
CROP_TRIES = 50
CROP_ASPECT = (0.5, 2.0)
_EPS = torch.finfo(torch.float32).eps


def check_min_crop_size(value: object) -> float:
    """``min_crop_size`` in ``(0, 1]`` (1: no crop)."""
    return check_number("min_crop_size", value, 0.0, 1.0, low_open=True)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB -> HSV of a float batch ``(B, 3, H, W)`` as OpenCV converts float images: ``V`` the
    channel maximum (any scale), ``S = (V - min) / |V|``, ``H`` in degrees ``[0, 360)``.

    Example:
        >>> rgb_to_hsv(torch.tensor([255.0, 0.0, 0.0]).view(1, 3, 1, 1)).flatten().tolist()
        [0.0, 1.0, 255.0]
    """
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    diff = v - x.min(1).values
    s = diff / (v.abs() + _EPS)
    k = 60.0 / (diff + _EPS)
    h = torch.where(v == r, (g - b) * k, torch.where(v == g, (b - r) * k + 120.0,
                                                     (r - g) * k + 240.0))
    h = torch.where(h < 0, h + 360.0, h)
    return torch.stack((h, s, v), 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """HSV (hue in degrees, any value: it is taken modulo 360) -> RGB, the inverse of
    :func:`rgb_to_hsv`, with OpenCV's six sectors. A saturation above 1 (after a saturation
    factor) gives channels below 0, unclipped, as OpenCV's float conversion does.

    Example:
        >>> hsv_to_rgb(torch.tensor([120.0, 1.0, 200.0]).view(1, 3, 1, 1)).flatten().tolist()
        [0.0, 200.0, 0.0]
    """
    h, s, v = x.unbind(1)
    h6 = torch.remainder(h, 360.0) / 60.0
    # OpenCV's six sectors in closed form: channel n (5: R, 3: G, 1: B) is
    # v - v s clamp(min(k, 4 - k), 0, 1) with k = (n + h6) mod 6, the same piecewise-linear
    # function of the hue as the sector table (0 (v, t, p), 1 (q, v, p), ... 5 (v, p, q))
    k = torch.remainder(torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device)
                        .view(1, 3, 1, 1) + h6.unsqueeze(1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * ramp


def draw_distortion(b: int, device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """One sample's worth of ``PhotoMetricDistortion``'s draws for each of ``b`` images: the
    values are drawn for every image and ``apply_*`` says (probability 1/2 each) which steps
    act; ``contrast_first`` picks the contrast's place. Each value is ``(B,)``, ``order`` is a
    permutation of the channels per image ``(B, 3)``."""
    u = torch.rand(b, 10, device=device, generator=generator)
    uniform = lambda col, low, high: low + (high - low) * u[:, col]  # noqa: E731
    return {"apply_brightness": u[:, 0] < 0.5,
            "brightness": uniform(1, -BRIGHTNESS_DELTA, BRIGHTNESS_DELTA),
            "contrast_first": u[:, 2] < 0.5, "apply_contrast": u[:, 3] < 0.5,
            "contrast": uniform(4, *CONTRAST_RANGE),
            "apply_saturation": u[:, 5] < 0.5, "saturation": uniform(6, *SATURATION_RANGE),
            "apply_hue": u[:, 7] < 0.5, "hue": uniform(8, -HUE_DELTA, HUE_DELTA),
            "apply_swap": u[:, 9] < 0.5,
            "order": torch.rand(b, 3, device=device, generator=generator).argsort(1)}


def distort(x: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
    """``PhotoMetricDistortion`` of a float batch ``(B, 3, H, W)`` of RGB pixels on the 0..255
    scale with the draws of :func:`draw_distortion`, unclipped.

    Example:
        >>> x = torch.full((2, 3, 1, 1), 100.0)
        >>> d = draw_distortion(2, generator=torch.Generator().manual_seed(0))
        >>> tuple(distort(x, d).shape)
        (2, 3, 1, 1)
    """
    b = x.shape[0]
    col = lambda t: t.view(b, 1, 1, 1)  # noqa: E731
    one = torch.ones((), dtype=x.dtype, device=x.device)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    x = x + col(torch.where(draws["apply_brightness"], draws["brightness"], zero))
    contrast = torch.where(draws["apply_contrast"], draws["contrast"], one)
    x = x * col(torch.where(draws["contrast_first"], contrast, one))
    hsv = rgb_to_hsv(x)
    h, s, v = hsv.unbind(1)
    s = s * torch.where(draws["apply_saturation"], draws["saturation"], one).view(b, 1, 1)
    h = h + torch.where(draws["apply_hue"], draws["hue"], zero).view(b, 1, 1)
    # the code's wrap: subtract 360 above 360, add 360 below 0 (a hue of 360 stays 360)
    h = torch.where(h > 360, h - 360, torch.where(h < 0, h + 360, h))
    x = hsv_to_rgb(torch.stack((h, s, v), 1))
    x = x * col(torch.where(draws["contrast_first"], one, contrast))
    order = torch.where(draws["apply_swap"].view(b, 1), draws["order"],
                        torch.arange(3, device=x.device).expand(b, 3))
    return x.gather(1, order.view(b, 3, 1, 1).expand_as(x))


def crop_boxes(b: int, height: int, width: int, min_crop_size: float,
               device: torch.device | str = "cpu",
               generator: torch.Generator | None = None) -> torch.Tensor:
    """``RandomCrop``'s boxes for ``b`` images of ``height`` x ``width``: ``(B, 4)`` integer
    ``(top, left, h, w)``. Each image takes the first of 50 candidate boxes whose ``h / w`` lies
    in ``[0.5, 2]`` (sides ``U(min w, w)``, ``U(min h, h)``), or the whole image when none does;
    the corner is uniform over the free space and the edges are truncated to integers.

    Example:
        >>> crop_boxes(1, 10, 10, 1.0).tolist()
        [[0, 0, 10, 10]]
    """
    u = torch.rand(b, CROP_TRIES, 4, device=device, generator=generator, dtype=torch.float64)
    new_w = width * (min_crop_size + (1 - min_crop_size) * u[..., 0])
    new_h = height * (min_crop_size + (1 - min_crop_size) * u[..., 1])
    aspect = new_h / new_w
    ok = (aspect >= CROP_ASPECT[0]) & (aspect <= CROP_ASPECT[1])
    first = ok.to(torch.float32).argmax(1)  # the first valid try (0 when none is: masked below)
    pick = lambda t: t.gather(1, first.view(b, 1)).squeeze(1)  # noqa: E731
    new_w, new_h = pick(new_w), pick(new_h)
    left = pick(u[..., 2]) * (width - new_w)
    top = pick(u[..., 3]) * (height - new_h)
    x0, y0 = left.floor(), top.floor()
    # int(left + new_w) - int(left): the code's patch edges, truncated
    w, h = (left + new_w).floor() - x0, (top + new_h).floor() - y0
    boxes = torch.stack((y0, x0, h, w), 1).long()
    whole = torch.tensor([0, 0, height, width], device=device).expand(b, 4)
    return torch.where(ok.any(1).view(b, 1), boxes, whole)


def crop_resize(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Crop each image of a float batch ``(B, C, H, W)`` to its box ``(top, left, h, w)`` and
    resize the crop bilinearly back to ``H x W`` (pixel centres, as ``align_corners=False``),
    in one batched resampling.

    Example:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> bool((crop_resize(x, torch.tensor([[0, 0, 4, 4]])) == x).all())
        True
    """
    b, _, height, width = x.shape
    top, left, h, w = boxes.to(torch.float64).unbind(1)
    theta = torch.zeros(b, 2, 3, dtype=torch.float64, device=x.device)
    # an output coordinate u in [-1, 1] reads the input at (2 left + w) / W - 1 + u w / W
    theta[:, 0, 0] = w / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta.to(x.dtype), [b, 1, height, width], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
