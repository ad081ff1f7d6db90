"""The multi-label benchmarks' official training augmentation (lttoolbox.data.photometric):
the HSV conversions against Python's colorsys, the distortion against a per-pixel re-derivation
of the official PhotoMetricDistortion, the crop's boxes and resampling against numpy, and the
transforms that use them."""
from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from lttoolbox.data.photometric import (crop_boxes, crop_resize, distort, draw_distortion,
                                        hsv_to_rgb, rgb_to_hsv)
from lttoolbox.data.stream import StreamTransform
from lttoolbox.data.transforms import BatchTransform
from lttoolbox.errors import ConfigError


def pixels(seed: int, b: int = 2, h: int = 3, w: int = 4, low: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return low + (255.0 - low) * torch.rand(b, 3, h, w, generator=g, dtype=torch.float64)


def test_hsv_conversions_match_colorsys():
    x = pixels(0)
    x[0, :, 0, 0] = torch.tensor([90.0, 90.0, 90.0], dtype=torch.float64)  # grey: S = 0
    hsv = rgb_to_hsv(x)
    for b, i, j in np.ndindex(2, 3, 4):
        r, g, bl = x[b, :, i, j].tolist()
        h, s, v = colorsys.rgb_to_hsv(r, g, bl)  # h in [0, 1), v on the input's scale
        assert hsv[b, :, i, j].tolist() == pytest.approx([360 * h, s, v], abs=1e-6)
    # the inverse, with saturations above 1 (a saturation factor of 1.5 is not clipped) and a
    # hue of exactly 360
    hsv[..., 0] = torch.tensor([360.0, 1.4, 200.0], dtype=torch.float64)
    hsv[0, 1, 1, :] = 1.3
    back = hsv_to_rgb(hsv)
    for b, i, j in np.ndindex(2, 3, 4):
        h, s, v = hsv[b, :, i, j].tolist()
        assert back[b, :, i, j].tolist() == pytest.approx(
            list(colorsys.hsv_to_rgb((h / 360) % 1.0, s, v)), abs=1e-6)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-6)


def official_distortion(rgb, d):
    """extra_aug.py's PhotoMetricDistortion on one pixel, with its draws given: brightness,
    contrast first (mode 1) or last (mode 0), saturation and hue in HSV (hue wrapped into
    [0, 360] by -360 / +360), channel permutation. colorsys works on hue fractions."""
    x = [c + (d["brightness"] if d["apply_brightness"] else 0.0) for c in rgb]
    alpha = d["contrast"] if d["apply_contrast"] else 1.0
    if d["contrast_first"]:
        x = [c * alpha for c in x]
    h, s, v = colorsys.rgb_to_hsv(*x)
    h *= 360
    if d["apply_saturation"]:
        s *= d["saturation"]
    if d["apply_hue"]:
        h += d["hue"]
        h = h - 360 if h > 360 else h + 360 if h < 0 else h
    x = list(colorsys.hsv_to_rgb((h / 360) % 1.0, s, v))
    if not d["contrast_first"]:
        x = [c * alpha for c in x]
    if d["apply_swap"]:
        x = [x[k] for k in d["order"]]
    return x


@pytest.mark.parametrize("flags", [
    dict(apply_brightness=True, contrast_first=True, apply_contrast=True, apply_saturation=True,
         apply_hue=True, apply_swap=True),
    dict(apply_brightness=False, contrast_first=False, apply_contrast=True,
         apply_saturation=True, apply_hue=True, apply_swap=False),
    dict(apply_brightness=True, contrast_first=False, apply_contrast=False,
         apply_saturation=False, apply_hue=False, apply_swap=True),
])
def test_distortion_is_the_official_one_pixel_by_pixel(flags):
    # pixels from 40 up: a brightness shift of -32 keeps them positive, where colorsys and
    # OpenCV agree (OpenCV divides by |V|, colorsys by V)
    x = pixels(1, low=40.0)
    draws = {"brightness": torch.tensor([-31.0, 17.5]), "contrast": torch.tensor([1.4, 0.6]),
             "saturation": torch.tensor([1.45, 0.55]), "hue": torch.tensor([17.0, -17.9]),
             "order": torch.tensor([[2, 0, 1], [1, 2, 0]]),
             **{k: torch.tensor([v, v]) for k, v in flags.items()}}
    out = distort(x, draws)
    for b, i, j in np.ndindex(2, 3, 4):
        one = {k: (v[b].tolist() if v.dim() > 1 else v[b].item()) for k, v in draws.items()}
        expected = official_distortion(x[b, :, i, j].tolist(), one)
        assert out[b, :, i, j].tolist() == pytest.approx(expected, abs=1e-6)


def test_distortion_draws_follow_the_official_ranges_and_probabilities():
    d = draw_distortion(20000, generator=torch.Generator().manual_seed(3))
    for key in ("apply_brightness", "contrast_first", "apply_contrast", "apply_saturation",
                "apply_hue", "apply_swap"):
        assert abs(d[key].float().mean().item() - 0.5) < 0.02, key
    for key, (low, high) in {"brightness": (-32, 32), "contrast": (0.5, 1.5),
                             "saturation": (0.5, 1.5), "hue": (-18, 18)}.items():
        assert low <= d[key].min() and d[key].max() <= high, key
        assert d[key].min() < low + 0.05 * (high - low) and d[key].max() > high - 0.05 * (
            high - low), key
    assert (d["order"].sort(1).values == torch.arange(3)).all()
    assert len({tuple(o) for o in d["order"].tolist()}) == 6


def test_crop_boxes_follow_the_official_rule():
    g = torch.Generator().manual_seed(4)
    boxes = crop_boxes(5000, 100, 60, 0.8, generator=g)
    top, left, h, w = boxes.T
    assert ((h >= 79) & (h <= 100) & (w >= 47) & (w <= 60)).all()
    assert ((top >= 0) & (top + h <= 100) & (left >= 0) & (left + w <= 60)).all()
    # the corner starts at 0 (the code's numpy.random.uniform(w - new_w) starts at 1)
    assert (left == 0).any() and (top == 0).any()
    # h / w = 100/60 x [0.8, 1.25]: up to 2.08 > 2, so some tries are refused, none kept
    assert ((h.float() / w.float()) <= 2.0 + 1 / 47).all()
    # a picture 10 times wider than high: no try has h / w >= 0.5, the whole image is kept
    assert crop_boxes(7, 10, 100, 0.8, generator=g).tolist() == [[0, 0, 10, 100]] * 7
    assert crop_boxes(3, 9, 9, 1.0, generator=g).tolist() == [[0, 0, 9, 9]] * 3


def bilinear(img: np.ndarray, y: float, x: float) -> np.ndarray:
    """Bilinear sample of ``img`` (C, H, W) at pixel coordinates, edges clamped."""
    _, hh, ww = img.shape
    y, x = min(max(y, 0.0), hh - 1.0), min(max(x, 0.0), ww - 1.0)
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    y1, x1 = min(y0 + 1, hh - 1), min(x0 + 1, ww - 1)
    fy, fx = y - y0, x - x0
    return ((1 - fy) * ((1 - fx) * img[:, y0, x0] + fx * img[:, y0, x1])
            + fy * ((1 - fx) * img[:, y1, x0] + fx * img[:, y1, x1]))


def test_crop_resize_samples_the_box_at_pixel_centres():
    x = pixels(5, b=2, h=8, w=8)
    boxes = torch.tensor([[1, 2, 4, 5], [0, 0, 8, 8]])
    out = crop_resize(x, boxes).numpy()
    img = x.numpy()
    for b, (top, left, h, w) in enumerate(boxes.tolist()):
        for i, j in np.ndindex(8, 8):
            y = top + (i + 0.5) * h / 8 - 0.5
            xx = left + (j + 0.5) * w / 8 - 0.5
            assert out[b, :, i, j] == pytest.approx(bilinear(img[b], y, xx), abs=1e-9)


def test_batch_transform_crops_and_distorts_repeatably():
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(6))
    make = lambda: BatchTransform((0.5,) * 3, (0.25,) * 3, hflip=True,  # noqa: E731
                                  min_crop_size=0.8, photometric=True,
                                  generator=torch.Generator().manual_seed(7))
    plain = BatchTransform((0.5,) * 3, (0.25,) * 3)
    a, b = make()(x), make()(x)
    assert torch.equal(a, b) and make().random and not plain.random
    assert a.shape == x.shape and a.dtype == torch.float32
    assert not torch.equal(a, plain(x))
    # not clipped: distorted pixels leave 0..255, i.e. [-2, 2] once normalised
    assert a.min() < -2.0 - 1e-3 or a.max() > 2.0 + 1e-3
    with pytest.raises(ConfigError, match="min_crop_size"):
        BatchTransform((0.5,) * 3, (0.25,) * 3, min_crop_size=0)
    with pytest.raises(ConfigError, match="photometric"):
        BatchTransform((0.5,), (0.25,), photometric=True)


def test_stream_transform_keeps_the_whole_of_an_elongated_image():
    """The official crop keeps the whole image when no box has h / w in [0.5, 2]; then the
    output is the plain resize of the whole image (aspect ratio not kept)."""
    image = torch.randint(0, 256, (3, 10, 100), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(8))
    t = StreamTransform(8, True, hflip=False, min_crop_size=0.8)
    whole = StreamTransform(8, False, centre_crop=False)(image, None)
    assert torch.equal(t(image, torch.Generator().manual_seed(9)), whole)
    distorted = StreamTransform(8, True, hflip=False, min_crop_size=0.8, photometric=True)
    out = distorted(image, torch.Generator().manual_seed(9))
    assert out.dtype == torch.uint8 and out.shape == (3, 8, 8)
    assert torch.equal(out, distorted(image, torch.Generator().manual_seed(9)))
    assert "random crop (min side 0.8)" in repr(distorted) and "photometric" in repr(distorted)
