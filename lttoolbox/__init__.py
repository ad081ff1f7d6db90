"""lttoolbox: long-tailed visual recognition with interchangeable, registered tricks.

Example:
    >>> import lttoolbox
    >>> "ce" in lttoolbox.LOSSES.names()
    True
"""
from .registry import AUGMENTS, DATASETS, GENERATORS, LOSSES, MODELS, SAMPLERS, Registry

# Importing the families registers their entries.
from . import augment, data, generators, losses, models, samplers  # noqa: E402,F401  isort:skip

__version__ = "0.1.0"
__all__ = ["AUGMENTS", "DATASETS", "GENERATORS", "LOSSES", "MODELS", "SAMPLERS", "Registry",
           "__version__"]
