"""Open sets: images from outside a data set's label set, as uint8 arrays of its image shape.

Open-sampling (:class:`~lttoolbox.augment.open_sampling.OpenSampling`) trains on such images with
labels it draws itself. An open set is declared in the recipe as one of:

* ``{source: folder, root: DIR}``: every ``.png``/``.jpg``/``.jpeg`` file below ``DIR`` (any
  depth, hidden entries skipped, sorted by relative path); no class folders needed;
* ``{source: list, file: LIST, root: DIR}``: the images a text list names, one per line as
  ``<relative/path>`` or ``<relative/path> <label>`` (the label is ignored, so an ImageNet-LT
  style list serves), relative to ``root`` (default: the list's folder);
* ``{source: noise, kind: gaussian | uniform, size: N, seed: S}``: pixel noise, drawn once from
  ``numpy.random.default_rng(seed)``. ``gaussian`` is the official open-sampling code's
  ``Gaussian`` set (``dataset/utils.py`` lines 67-71 at hongxin001/open-sampling 79fcaf2:
  ``clip(N(0, 0.5), -1, 1)`` on the ``[-1, 1]`` scale), written as pixels
  ``round((v + 1) * 127.5)``; ``uniform`` is every pixel uniform over 0..255;
* ``{source: digits}``: scikit-learn's 1,797 handwritten 8x8 digits (bundled with it, no
  download), scaled to 0..255 as ``digits_lt`` does, resized bilinearly to the images' size and
  repeated over the channels: a small real set with no object of CIFAR's classes, so honestly
  out of distribution for CIFAR-10/100 (it is not for ``digits_lt``, whose images these are).

Files are read as the data package reads its own (:func:`~lttoolbox.data.folder_io.load_split`:
decoded once, resized to a square, cached), and every error names the recipe key or the file, so
a bad open set stops the run before anything is written. A training set with one channel gets
the images' luminance (the ITU-R 601-2 weights of Pillow's ``convert("L")``, rounded to the
nearest level).

``max_images`` keeps the first images of a folder or list (in its order).

Example:
    >>> images = load_open_set({"source": "noise", "size": 4, "seed": 0}, (3, 8, 8))
    >>> tuple(images.shape), images.dtype
    ((4, 3, 8, 8), torch.uint8)
    >>> load_open_set({"source": "digits"}, (3, 32, 32)).shape[0]
    1797
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..checks import check_int
from ..errors import ConfigError, DataError
from .folder_io import IMAGE_EXTENSIONS, SplitListing, load_split
from .split_files import _relative, _stat, _text_lines, split_file

SOURCES = ("folder", "list", "noise", "digits")
NOISE_KINDS = ("gaussian", "uniform")
#: Each source's keys beside ``source``.
KEYS = {"folder": ("root", "max_images", "cache_dir"),
        "list": ("file", "root", "max_images", "cache_dir"),
        "noise": ("kind", "size", "seed"),
        "digits": ()}


def open_set_config(cfg: Any, key: str = "open") -> dict:
    """The open set's recipe entry as a dict with its ``source`` checked (a bare string names a
    source with its defaults: ``open: digits``)."""
    if isinstance(cfg, str):
        cfg = {"source": cfg}
    if not isinstance(cfg, dict) or "source" not in cfg:
        raise ConfigError(f"must be a mapping with a 'source' ({', '.join(SOURCES)}), got "
                          f"{cfg!r}", key=key)
    source = cfg["source"]
    if source not in SOURCES:
        raise ConfigError(f"must be one of {', '.join(SOURCES)}, got {source!r}",
                          key=f"{key}.source")
    unknown = sorted(set(cfg) - {"source", *KEYS[source]})
    if unknown:
        allowed = ", ".join(KEYS[source]) or "none"
        raise ConfigError(f"unknown key for source '{source}' (its keys: {allowed})",
                          key=f"{key}.{unknown[0]}")
    return dict(cfg)


def load_open_set(cfg: Any, shape: tuple[int, int, int], key: str = "open") -> torch.Tensor:
    """The open set's images as uint8 ``(N, C, H, W)`` of the training images' ``shape``.

    Raises:
        ConfigError: a bad entry, naming its key (``open.root``).
        DataError: a file that cannot be read, naming it.
    """
    cfg = open_set_config(cfg, key)
    channels, height, width = (int(v) for v in shape)
    if channels not in (1, 3):
        raise ConfigError(f"open sets are made for 1- or 3-channel images; the training images "
                          f"have {channels}", key=key)
    source = cfg["source"]
    if source == "noise":
        return torch.from_numpy(noise_images(cfg, (channels, height, width), key))
    if source == "digits":
        return torch.from_numpy(digits_images((channels, height, width)))
    if height != width:
        raise ConfigError(f"image files are read as squares; the training images are "
                          f"{height}x{width}", key=key)
    cap = check_int(f"{key}.max_images", cfg.get("max_images"), 1, optional=True)
    listing = (folder_listing(cfg, key) if source == "folder" else list_listing(cfg, key))
    if cap is not None and cap < len(listing.files):
        listing = listing.subset(np.arange(cap))
    cache_dir = cfg.get("cache_dir")
    if cache_dir is not None and (not isinstance(cache_dir, str) or not cache_dir):
        raise ConfigError(f"must be a folder path, got {cache_dir!r}", key=f"{key}.cache_dir")
    images, _ = load_split(listing, height, cache_dir)
    return torch.from_numpy(to_channels(images, channels))


def _folder(value: Any, key: str) -> Path:
    if value is None or isinstance(value, bool) or not isinstance(value, (str, os.PathLike)) \
            or not str(value):
        raise ConfigError(f"must be a folder path, got {value!r}", key=key)
    path = Path(str(value)).expanduser().absolute()
    if not path.is_dir():
        raise ConfigError(f"no folder at {path}", key=key)
    return path


def folder_listing(cfg: dict, key: str = "open") -> SplitListing:
    """Every image below ``cfg["root"]``, sorted by relative path, as a listing of one class.

    Raises:
        ConfigError: no folder at ``root`` (naming ``open.root``).
        DataError: a folder that cannot be listed, or one without an image.
    """
    root = _folder(cfg.get("root"), f"{key}.root")
    files, sizes, mtimes = [], [], []

    def failed(err: OSError):
        raise DataError(f"cannot list {err.filename or root}: {err.strerror or err}")

    seen = {os.path.realpath(root)}
    for folder, dirs, names in os.walk(root, onerror=failed, followlinks=True):
        kept = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            real = os.path.realpath(os.path.join(folder, d))
            if real not in seen:  # a linked folder once, and no cycle of links
                seen.add(real)
                kept.append(d)
        dirs[:] = kept
        for name in sorted(names):
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = Path(folder) / name
            try:
                stat = path.stat()
            except OSError as err:  # a broken link, a file removed while listing
                raise DataError(f"cannot read {path}: {err.strerror or err}") from None
            files.append(path.relative_to(root).as_posix())
            sizes.append(stat.st_size)
            mtimes.append(stat.st_mtime_ns)
    if not files:
        raise DataError(f"no .png/.jpg/.jpeg image below {root}")
    order = np.argsort(np.asarray(files, dtype=object), kind="stable")
    return SplitListing(root, ["open"], [files[i] for i in order],
                        np.zeros(len(files), dtype=np.int64), [sizes[i] for i in order],
                        [mtimes[i] for i in order])


def list_listing(cfg: dict, key: str = "open") -> SplitListing:
    """The images a list file names (``<relative/path>`` or ``<relative/path> <label>`` per
    line), in its order, relative to ``cfg["root"]`` (default: the list's folder).

    Raises:
        ConfigError: no ``file`` given, or no folder at ``root``.
        DataError: a missing or unreadable list, a line with more than two fields, a missing
            image (``file:line``), or a list without any image.
    """
    value = cfg.get("file")
    if value is None or isinstance(value, bool) or not isinstance(value, (str, os.PathLike)) \
            or not str(value):
        raise ConfigError(f"must be the path of an image list, got {value!r}", key=f"{key}.file")
    path = split_file(value)
    root = (_folder(cfg["root"], f"{key}.root") if cfg.get("root") is not None
            else path.parent)
    files, sizes, mtimes = [], [], []
    for number, text in _text_lines(path):
        fields = text.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) > 2:
            raise DataError(f"{where}: expected '<relative/path>' or '<relative/path> <label>', "
                            f"got {text.strip()!r}")
        relative = _relative(fields[0])
        size, mtime = _stat(root, relative, where)
        files.append(relative)
        sizes.append(size)
        mtimes.append(mtime)
    if not files:
        raise DataError(f"{path} lists no image (expected one '<relative/path>' per line)")
    return SplitListing(root, ["open"], files, np.zeros(len(files), dtype=np.int64), sizes,
                        mtimes)


def noise_images(cfg: dict, shape: tuple[int, int, int], key: str = "open") -> np.ndarray:
    """``size`` noise images of ``shape`` as uint8, from ``default_rng(seed)``."""
    kind = cfg.get("kind", "gaussian")
    if kind not in NOISE_KINDS:
        raise ConfigError(f"must be one of {', '.join(NOISE_KINDS)}, got {kind!r}",
                          key=f"{key}.kind")
    size = check_int(f"{key}.size", cfg.get("size", 10000), 1)
    seed = check_int(f"{key}.seed", cfg.get("seed", 0), 0)
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.integers(0, 256, size=(size, *shape), dtype=np.uint8)
    # the official Gaussian set: clip(N(0, 0.5), -1, 1) on the [-1, 1] scale
    values = np.clip(rng.normal(0.0, 0.5, size=(size, *shape)).astype(np.float32), -1.0, 1.0)
    return np.rint((values + 1.0) * 127.5).astype(np.uint8)


def digits_images(shape: tuple[int, int, int]) -> np.ndarray:
    """scikit-learn's digits as uint8 ``(1797, C, H, W)``: ``round(x * 255 / 16)`` (as
    ``digits_lt``), resized bilinearly (half-pixel centres) and repeated over the channels."""
    from sklearn.datasets import load_digits

    channels, height, width = shape
    gray = torch.from_numpy(np.rint(load_digits().images * (255.0 / 16.0)))[:, None]
    if gray.shape[-2:] != (height, width):
        gray = F.interpolate(gray, size=(height, width), mode="bilinear", align_corners=False)
    images = gray.round().clamp(0, 255).to(torch.uint8).numpy()
    return np.repeat(images, channels, axis=1)


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """RGB uint8 images ``(N, 3, H, W)`` with ``channels`` channels: as they are, or their
    luminance ``(299 R + 587 G + 114 B) / 1000`` rounded (Pillow's ``convert("L")`` weights)
    for one."""
    if channels == 3:
        return images
    weights = np.array([299, 587, 114], dtype=np.int64).reshape(1, 3, 1, 1)
    luma = ((images.astype(np.int64) * weights).sum(axis=1, keepdims=True) + 500) // 1000
    return luma.astype(np.uint8)
