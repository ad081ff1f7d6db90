"""Samplers: one epoch's index stream at a time, reproducible in (seed, epoch) and rank-aware.

Importing this package registers every entry in :data:`lttoolbox.registry.SAMPLERS`:
``instance``, ``class_balanced``, ``square_root``, ``progressive``, ``cmo_weighted``,
``random_oversample`` and ``random_undersample``. Any of them defers re-sampling with
``start_epoch`` (DRS). See docs/samplers.md.
"""
from .base import LTSampler, check_labels
from .class_power import ClassBalancedSampler, SquareRootSampler
from .cmo import CMOWeightedSampler
from .instance import InstanceSampler
from .progressive import ProgressiveSampler
from .random_resample import RandomOverSampler, RandomUnderSampler

__all__ = [
    "LTSampler", "check_labels", "InstanceSampler", "ClassBalancedSampler", "SquareRootSampler",
    "ProgressiveSampler", "CMOWeightedSampler", "RandomOverSampler", "RandomUnderSampler",
]

# Every module of the package, so that a new entry file registers without being listed here.
from ..registry import import_submodules  # noqa: E402

import_submodules(__name__)
