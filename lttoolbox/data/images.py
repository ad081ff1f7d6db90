"""Reading one image file: the decode every reader shares (the in-memory path's
:func:`~lttoolbox.data.folder_io.decode_image`, the streaming path's
:func:`~lttoolbox.data.stream.read_image`, and through them ``ltpredict``), the errors that name
the file, and the cheap check of every file that the streaming path runs before training
(:func:`check_image`, :func:`check_files`).

16-bit images. Pillow opens a 16-bit greyscale PNG in mode ``I;16`` (``I`` before Pillow 10), and
its ``convert("RGB")`` clips those values at 255: a 0..65535 gradient came out 99.6 % white. They
are scaled to 8 bits here by keeping the high byte (``v >> 8``), which is what Pillow itself does
with a 16-bit RGB PNG and what :func:`to_8bit_tensor` does with ``torchvision.io``'s uint16
output, so both decoders agree. An 8-bit image stored with 16 bits (``v * 257``) comes back
exactly. Mode ``I`` (32-bit integers) is read as 16-bit data when its values lie in 0..65535 and
refused otherwise; 32-bit floating-point pixels (mode ``F``) have no 8-bit scale and are refused.

Example:
    >>> import tempfile, os
    >>> from PIL import Image
    >>> path = os.path.join(tempfile.mkdtemp(), "ramp.png")
    >>> Image.fromarray(np.array([[0, 257 * 128, 65535]], dtype=np.uint16)).save(path)
    >>> load_image(path, "L").getpixel((1, 0)), Image.open(path).mode
    (128, 'I;16')
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from .progress import decode_progress

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class UnreadableImage(DataError):
    """An image file that cannot be read or decoded (the message names it)."""


def to_8bit(img):
    """An 8-bit version of a PIL image: 16-bit greyscale scaled to ``L`` (``v >> 8``), other
    modes unchanged.

    Raises:
        ValueError: mode ``F`` (floating point), or mode ``I`` with values outside 0..65535.
    """
    from PIL import Image

    if img.mode == "F":
        raise ValueError("32-bit floating-point pixels (mode F) have no 8-bit scale; save the "
                         "image with 8 or 16 bits per channel")
    if img.mode not in SIXTEEN_BIT_MODES and img.mode != "I":
        return img
    values = np.asarray(img)
    if img.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"32-bit integer pixels ({values.min()}..{values.max()}) have no "
                         f"8-bit scale; save the image with 8 or 16 bits per channel")
    return Image.fromarray((values.astype(np.uint32) >> 8).astype(np.uint8))  # mode L


def to_8bit_tensor(image):
    """``torchvision.io``'s decode of a 16-bit PNG is uint16: its high byte, as uint8 (the same
    values as :func:`to_8bit` and Pillow's own 16-bit RGB reduction)."""
    import torch

    if image.dtype == torch.uint8:
        return image
    if image.dtype != torch.uint16:
        raise ValueError(f"{image.dtype} pixels have no 8-bit scale")
    return (image.to(torch.int32) >> 8).to(torch.uint8)


def load_image(path: str, mode: str = "RGB"):
    """The image at ``path`` decoded to an 8-bit PIL image in ``mode`` (``RGB`` or ``L``).

    Raises:
        DataError: naming the file that cannot be read, decoded or scaled to 8 bits.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return to_8bit(img).convert(mode)
    except Exception as err:  # PIL raises many types; the user needs the file name
        raise image_error(path, err) from None


def image_error(path: str, err: BaseException) -> UnreadableImage:
    """The one-line error for an image file that cannot be used: the path, then why."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):
        import os
        try:
            empty = os.path.getsize(path) == 0
        except OSError:
            empty = False
        why = "the file is empty" if empty else "not an image file Pillow can read"
    elif isinstance(err, Image.DecompressionBombError):
        why = f"{err} (Image.MAX_IMAGE_PIXELS sets Pillow's limit)"
    elif isinstance(err, OSError) and err.strerror:
        why = err.strerror
    elif isinstance(err, OSError) and "truncated" in str(err):
        why = f"the file is cut short ({err})"
    else:
        why = f"{type(err).__name__}: {err}"
    return UnreadableImage(f"cannot read image {path}: {why}")


# How a complete file ends: a JPEG with its end-of-image marker, a PNG with its IEND chunk. Some
# writers append bytes after them (camera trailers), hence a search in the last TAIL bytes.
ENDINGS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
TAIL = 1024


def check_image(path: str) -> None:
    """A cheap check that ``path`` is a readable image: its header (format, size, mode; Pillow's
    decompression-bomb limit) and, for JPEG and PNG, that the file ends as a complete one does.
    Only a file whose ending is missing (or of another format) is decoded in full, so a file is
    refused only when Pillow cannot decode it.

    Not found: a file that is damaged in its middle but ends well; the decode names it when a
    batch needs it.

    Raises:
        DataError: naming the file and why it cannot be read.
    """
    import os

    from PIL import Image

    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            with Image.open(handle) as img:
                if img.mode in ("F", "I"):  # no 8-bit scale, or one its values decide
                    to_8bit(img)
                end = ENDINGS.get(img.format)
                tail = os.pread(handle.fileno(), TAIL, max(0, size - TAIL))
                if end is None or end not in tail:
                    img.load()
    except Exception as err:  # PIL raises many types; the user needs the file name
        raise image_error(path, err) from None


# Below this many files a thread pool costs more than it saves. Threads, not processes: the
# check waits on the storage (an open and two small reads per file), which they overlap.
POOL_MIN_FILES = 2048
CHECK_THREADS = 8


CHUNK = 256


def _problems(paths: list[str]) -> list[str | None]:
    """Each file's problem (``None``: readable)."""
    problems: list[str | None] = []
    for path in paths:
        try:
            check_image(path)
            problems.append(None)
        except DataError as err:
            problems.append(str(err))
    return problems


def check_files(paths, root=None) -> None:
    """:func:`check_image` on every file, before a streamed run writes anything.

    Raises:
        DataError: naming the first unreadable file (in the given order) and how many others
            there are.
    """
    from concurrent.futures import ThreadPoolExecutor

    paths = [str(p) for p in paths]
    with decode_progress(len(paths), root, f"checking {len(paths):,} images"
                         + (f" of {root}" if root else "")) as advance:
        if len(paths) < POOL_MIN_FILES:
            problems = _problems(paths)
        else:
            problems = []
            with ThreadPoolExecutor(CHECK_THREADS) as pool:
                chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
                for part in pool.map(_problems, chunks):
                    problems += part
                    advance(len(part))
    bad = [p for p in problems if p is not None]
    if bad:
        more = f" (and {len(bad) - 1} more unreadable file(s) in this split)" if len(bad) > 1 \
            else ""
        raise UnreadableImage(bad[0] + more)
