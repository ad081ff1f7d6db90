"""lttoolbox: long-tailed visual recognition with interchangeable, registered tricks.

The families (``lttoolbox.data``, ``models``, ``samplers``, ``losses``, ``augment``,
``generators``) are imported when first used: reading a registry imports its family.
``lttoolbox.load_run(run_dir)`` returns a finished run's model and resolved recipe.

Example:
    >>> import lttoolbox
    >>> "ce" in lttoolbox.LOSSES.names()
    True
"""
import importlib

from .registry import AUGMENTS, DATASETS, GENERATORS, LOSSES, MODELS, SAMPLERS, Registry

__version__ = "0.1.0"
__all__ = ["AUGMENTS", "DATASETS", "GENERATORS", "LOSSES", "MODELS", "SAMPLERS", "Registry",
           "__version__", "load_run"]
_FAMILIES = ("augment", "data", "generators", "losses", "models", "samplers", "engine")


def __getattr__(name: str):
    """``lttoolbox.losses`` and the other families without importing them up front."""
    if name in _FAMILIES:
        return importlib.import_module(f".{name}", __name__)
    if name == "load_run":  # the trained model and recipe of a run directory (lttoolbox.runs)
        from .runs import load_run
        return load_run
    raise AttributeError(f"module 'lttoolbox' has no attribute '{name}'")
