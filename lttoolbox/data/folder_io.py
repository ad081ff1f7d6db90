"""Reading ``root/<split>/<class>/*.png|jpg|jpeg`` trees into uint8 arrays, with a decode cache.

Decoding 60,000 small JPEGs with PIL takes tens of seconds, so the decoded split is saved once as a
``.npy`` file under the cache directory and reused while the files stay the same: its name holds
the sha1 of the folder's absolute path, the target image size, a format version and the sorted
relative file list, then the sha1 of each file's size and mtime. A new version of the same files
replaces the older entry. The cache always holds the whole split as listed; the long-tail
selection happens after loading, since it is cheap. Files are written atomically (temporary file +
``os.replace``) so an interrupted or concurrent run never leaves a truncated cache behind.

Example:
    >>> split = list_split("/data/cifar10-jpg", "train")            # doctest: +SKIP
    >>> images = load_split(split, image_size=32, cache_dir=None)   # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import re
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..rundir import atomic_write
from ..errors import DataError
from .images import check_files, image_error, load_image
from .path_choice import choose_path
from .progress import decode_progress

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# 2: 16-bit images scaled to 8 bits instead of clipped at 255 (entries of format 1 of the same
# split are deleted when its format-2 entry is written).
CACHE_VERSION = 2
# Below this many files a process pool costs more than it saves.
POOL_MIN_FILES = 2048
CHUNK = 1024


def default_cache_dir() -> Path:
    """``$LTTOOLBOX_CACHE`` if set, else ``~/.cache/lttoolbox``."""
    return Path(os.environ.get("LTTOOLBOX_CACHE") or "~/.cache/lttoolbox").expanduser()


@dataclass
class SplitListing:
    """The image files of one split (listed from a folder, or given by a split file).

    Attributes:
        root: The split folder (or the root a split file's paths start from).
        classes: Class folder names found, sorted (or the split file's class names).
        files: Relative paths ``<class>/<name>``, sorted (a split file keeps its own order); the
            order of the cached array.
        labels: Index into ``classes`` of each file.
        sizes: File sizes in bytes.
        mtimes: Modification times in ns.
    """

    root: Path
    classes: list[str]
    files: list[str]
    labels: np.ndarray
    sizes: list[int]
    mtimes: list[int]

    def subset(self, keep: np.ndarray) -> "SplitListing":
        """The listing restricted to positions ``keep`` (kept in sorted order)."""
        keep = np.sort(np.asarray(keep, dtype=np.int64))
        return SplitListing(self.root, self.classes, [self.files[i] for i in keep],
                            self.labels[keep], [self.sizes[i] for i in keep],
                            [self.mtimes[i] for i in keep])

    def cache_name(self, image_size: int, format_version: int = CACHE_VERSION
                   ) -> tuple[str, str]:
        """``(prefix, file name)`` of this listing's decode cache entry (in the cache format
        ``format_version``).

        The prefix names *which* split it is: the folder's absolute path, the image size, the
        cache format and the file names. The rest of the name is the sha1 of each file's size and
        mtime, *which version* of those files. A copy of the same files with new mtimes (a
        remounted share) therefore keeps its prefix, and its older entry can be recognised as
        stale; a slice (``max_per_class``) lists other names, so it has an entry of its own.
        """
        split = hashlib.sha1(f"lttoolbox-folder-v{format_version}|{image_size}|"
                             f"{Path(self.root).resolve()}\n".encode())
        version = hashlib.sha1()
        for name, size, mtime in zip(self.files, self.sizes, self.mtimes):
            split.update(f"{name}\n".encode())
            version.update(f"{size}\t{mtime}\n".encode())
        prefix = f"folder-{self.root.name}-{image_size}px-{split.hexdigest()[:16]}-"
        return prefix, f"{prefix}{version.hexdigest()[:16]}.npy"


def list_split(root: str | Path, split: str) -> SplitListing:
    """List ``root/split/<class>/*`` (hidden entries and other extensions are skipped).

    Raises:
        DataError: missing split folder, no class folder, a class folder without images, or a
            folder that cannot be listed (no permission, a symbolic-link loop), named.
    """
    split_dir = Path(root) / split
    try:
        return _list_split(split_dir, split)
    except OSError as err:
        where = err.filename or split_dir
        raise DataError(f"cannot list {where}: {err.strerror or err}") from None


def _list_split(split_dir: Path, split: str) -> SplitListing:
    if not split_dir.is_dir():
        raise DataError(f"no '{split}' folder at {split_dir}")
    classes = sorted(e.name for e in os.scandir(split_dir)
                     if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{split_dir} has no class folders (expected {split}/<class>/<image>)")
    files, labels, sizes, mtimes = [], [], [], []
    for label, name in enumerate(classes):
        entries = sorted((e for e in os.scandir(split_dir / name)
                          if not e.name.startswith(".") and e.is_file()
                          and e.name.lower().endswith(IMAGE_EXTENSIONS)), key=lambda e: e.name)
        if not entries:
            raise DataError(f"class folder {split_dir / name} has no .png/.jpg/.jpeg image")
        for entry in entries:
            stat = entry.stat()
            files.append(f"{name}/{entry.name}")
            labels.append(label)
            sizes.append(stat.st_size)
            mtimes.append(stat.st_mtime_ns)
    return SplitListing(split_dir, classes, files, np.asarray(labels, dtype=np.int64), sizes,
                        mtimes)


def decode_image(path: str, image_size: int, channels: int = 3) -> np.ndarray:
    """One image as uint8 ``(channels, image_size, image_size)``: RGB (or grey for one channel,
    16-bit images scaled to 8 bits: :func:`~lttoolbox.data.images.load_image`), resized to a
    square with bilinear filtering where the size differs.

    Raises:
        DataError: naming the file PIL cannot read.
    """
    from PIL import Image

    img = load_image(path, "RGB" if channels == 3 else "L")
    try:
        if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
    except Exception as err:  # PIL raises many types; the user needs the file name
        raise image_error(path, err) from None
    return array.transpose(2, 0, 1) if array.ndim == 3 else array[None]


def decode_files(paths: list[str], image_size: int) -> np.ndarray:
    """Decode images to a uint8 ``(n, 3, image_size, image_size)`` array (see
    :func:`decode_image`).

    Raises:
        DataError: naming the first file PIL cannot read.
    """
    out = np.empty((len(paths), 3, image_size, image_size), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = decode_image(path, image_size)
    return out


def _decode_all(paths: list[str], image_size: int, workers: int,
                advance: Callable[[int], None] = lambda n: None) -> np.ndarray:
    chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
    out = np.empty((len(paths), 3, image_size, image_size), dtype=np.uint8)
    start = 0
    if len(paths) < POOL_MIN_FILES or workers <= 1:
        parts = (decode_files(chunk, image_size) for chunk in chunks)
        for part in parts:
            out[start:start + len(part)] = part
            start += len(part)
            advance(len(part))
        return out
    # fork starts the workers in milliseconds; the workers run PIL and numpy only.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for part in pool.map(decode_files, chunks, [image_size] * len(chunks)):
            out[start:start + len(part)] = part
            start += len(part)
            advance(len(part))
    return out


def _write_atomic(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda handle: np.save(handle, array), binary=True)


def file_paths(listing: SplitListing) -> tuple[np.ndarray, str]:
    """The streaming path's counterpart of :func:`load_split`: the listing's absolute file paths
    (an object array, indexed like the decoded images would be) and ``"stream"``.

    Every file is checked first (:func:`~lttoolbox.data.images.check_files`: its header and its
    ending, about 0.12 s per 1,000 files in the page cache), so a broken file stops the run
    before anything is written rather than in a DataLoader worker hours later.

    Raises:
        DataError: naming an unreadable file.
    """
    paths = [str(listing.root / name) for name in listing.files]
    check_files(paths, listing.root)
    return np.asarray(paths, dtype=object), "stream"


def load_split(listing: SplitListing, image_size: int, cache_dir: str | Path | None,
               workers: int | None = None) -> tuple[np.ndarray, str]:
    """Decoded images of a listing, in ``listing.files`` order, from the cache when possible.

    Args:
        listing: What to load.
        image_size: Side of the square output images.
        cache_dir: Folder of the decode cache; ``None`` uses :func:`default_cache_dir`.
        workers: Decoding processes (default ``min(4, cpu count)``).

    Returns:
        ``(images, status)``: uint8 ``(N, 3, image_size, image_size)`` and ``"hit"`` or ``"miss"``.
    """
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    prefix, name = listing.cache_name(image_size)
    path = cache_dir / name
    expected = (len(listing.files), 3, image_size, image_size)
    if path.is_file():
        try:
            images = np.load(path, allow_pickle=False)
            if images.shape == expected and images.dtype == np.uint8:
                return images, "hit"
        except (OSError, ValueError):
            pass  # unreadable cache: decode again and overwrite it
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    paths = [str(listing.root / name) for name in listing.files]
    with decode_progress(len(paths), listing.root) as advance:
        images = _decode_all(paths, image_size, workers, advance)
    try:
        _write_atomic(path, images)
    except OSError as err:
        warnings.warn(f"could not write the decode cache {path}: {err}", RuntimeWarning,
                      stacklevel=2)
    else:
        _remove_stale(cache_dir, prefix, keep=path)
        for older in range(1, CACHE_VERSION):  # the same split decoded by an older format
            _remove_stale(cache_dir, listing.cache_name(image_size, older)[0], keep=path)
    return images, "miss"


def _remove_stale(cache_dir: Path, prefix: str, keep: Path) -> None:
    """Delete the entries of the same split for older versions of its files: without this, every
    change of mtimes (a share mounted again) left another full decoded copy behind (184 MB per
    CIFAR-10 train/test pair)."""
    stale = re.compile(re.escape(prefix) + r"[0-9a-f]{16}\.npy")  # not a writer's temporary file
    for entry in cache_dir.iterdir():
        if stale.fullmatch(entry.name) and entry.name != keep.name:
            with contextlib.suppress(OSError):  # gone already, or not ours to delete
                entry.unlink()


def load_folder_splits(root: Path, train_dir: str, test_dir: str, image_size: int,
                       cache_dir: str | Path | None, class_order: list[str] | None = None,
                       max_per_class: int | None = None, test_max_per_class: int | None = None,
                       path: str = "memory"):
    """Load a ``train``/``test`` image-folder pair with a shared class order.

    Args:
        path: ``memory`` decodes the images; ``stream`` gives their file paths instead (an
            object array in the same order); ``auto`` chooses by the training split's decoded
            size (:func:`~lttoolbox.data.path_choice.choose_path`), recorded as ``info["path"]``.
        class_order: Class names in label order; ``None`` means sorted folder names.
        max_per_class: Keep only the first (by file name) images of each training class before
            decoding; ``test_max_per_class`` the same for the test split.

    Returns:
        ``(classes, (train_images, train_labels, train_index), (test_images, test_labels), info)``
        with samples grouped by class in label order, files sorted by name within a class;
        ``train_index`` is each image's position in the full (uncapped) training listing, and
        ``info`` says whether each split came from the cache.

    Raises:
        DataError: class folders that differ between the two splits, or any listing/decoding error.
    """
    listings = {split: list_split(root, name) for split, name in
                (("train", train_dir), ("test", test_dir))}
    train_classes, test_classes = listings["train"].classes, listings["test"].classes
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise DataError(f"class folders differ between {root / train_dir} and {root / test_dir}: "
                        f"only in {train_dir}: {only_train or '-'}; only in {test_dir}: "
                        f"{only_test or '-'}")
    classes = class_order or train_classes
    remap = np.asarray([classes.index(name) for name in train_classes], dtype=np.int64)
    out, info = {}, {}
    if path == "auto":
        train_count = (len(listings["train"].files) if max_per_class is None else
                       int(np.minimum(np.bincount(listings["train"].labels), max_per_class).sum()))
        path = choose_path(path, train_count, image_size)
    info["path"] = path
    for split, cap in (("train", max_per_class), ("test", test_max_per_class)):
        images, labels, numbers, info[split] = _load_grouped(
            listings[split], remap, len(classes), cap, path, image_size, cache_dir)
        out[split] = (images, labels, numbers)
    return classes, out["train"], out["test"][:2], info


def _load_grouped(full: SplitListing, remap: np.ndarray, num_classes: int, cap: int | None,
                  path: str, image_size: int, cache_dir: str | Path | None):
    """One split's images (decoded, or their paths when ``path`` is ``stream``), grouped by class
    in label order and sorted by name within a class, keeping the first ``cap`` of each class.

    Returns:
        ``(images, labels, numbers, status)``: ``numbers`` is each image's position in the full
        (uncapped) listing's class-grouped order; ``status`` is ``hit``, ``miss`` or ``stream``.
    """
    labels = remap[full.labels]
    # class-grouped, name-sorted order of the full listing: this is the split's numbering
    order = np.lexsort((np.arange(len(labels)), labels))
    if cap is not None:
        ranks = np.empty(len(order), dtype=np.int64)
        for c in range(num_classes):
            members = order[labels[order] == c]
            ranks[members] = np.arange(len(members))
        positions = np.flatnonzero(ranks < cap)
        listing = full.subset(positions)
    else:
        positions = np.arange(len(full.files))
        listing = full
    images, status = (file_paths(listing) if path == "stream" else
                      load_split(listing, image_size, cache_dir))
    # listing positions (sorted relative paths) -> full-listing position -> class order
    number = np.empty(len(full.files), dtype=np.int64)
    number[order] = np.arange(len(order))
    sample_number = number[positions]
    regroup = np.argsort(sample_number, kind="stable")
    if not np.array_equal(regroup, np.arange(len(regroup))):  # spare a copy when sorted
        images = images[regroup]
    return images, labels[positions][regroup], sample_number[regroup], status


def load_test_folder(folder: Path, classes: list[str], image_size: int,
                     cache_dir: str | Path | None, cap: int | None = None,
                     path: str = "memory"):
    """Load one ``folder/<class>/*`` tree for evaluation, its labels given by ``classes``.

    The class folders may be any of ``classes`` (a test set of some classes only); each image's
    label is the index of its folder's name in ``classes``, so a trained model's class order is
    kept whatever folders are present.

    Args:
        classes: The class names in label order (a trained model's).
        cap: Keep only the first ``cap`` images (by file name) of each class.
        path: ``memory`` decodes the images, ``stream`` gives their file paths.

    Returns:
        ``(images, labels, status)``, grouped by class in label order, files sorted by name
        within a class; ``status`` says whether the decoded images came from the cache.

    Raises:
        DataError: a class folder whose name is not in ``classes``, or any listing/decoding error.
    """
    listing = list_split(folder.parent, folder.name)
    unknown = [name for name in listing.classes if name not in classes]
    if unknown:
        shown = ", ".join(classes[:20]) + (", ..." if len(classes) > 20 else "")
        raise DataError(f"class folder(s) {', '.join(unknown[:10])} of {folder} are not classes of "
                        f"the model (its classes: {shown})")
    remap = np.asarray([classes.index(name) for name in listing.classes], dtype=np.int64)
    images, labels, _, status = _load_grouped(listing, remap, len(classes), cap, path,
                                              image_size, cache_dir)
    return images, labels, status
