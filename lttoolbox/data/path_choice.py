"""Which data path a data set takes (``data.path``): ``memory``, ``stream`` or ``auto``.

Its own module because both the readers that list files (:mod:`lttoolbox.data.folder_io`,
:mod:`lttoolbox.data.listed`) and the data paths built from what they read
(:mod:`lttoolbox.data.datapath`) need the choice, and the readers must not import the paths.

Example:
    >>> choose_path("auto", 115_846, 224), choose_path("auto", 12_406, 32)
    ('stream', 'memory')
"""
from __future__ import annotations

from ..errors import ConfigError

PATHS = ("auto", "memory", "stream")
# ``path: auto`` streams a set whose decoded training images would take more than this.
AUTO_MEMORY_BYTES = 4 * 2 ** 30


def choose_path(path: str, num_images: int, image_size: int, channels: int = 3) -> str:
    """``memory`` or ``stream`` for ``data.path`` (``auto``: by the decoded size).

    Example:
        >>> choose_path("memory", 10 ** 9, 224)
        'memory'
    """
    if path not in PATHS:
        raise ConfigError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
    if path != "auto":
        return path
    return "stream" if num_images * channels * image_size ** 2 > AUTO_MEMORY_BYTES else "memory"
