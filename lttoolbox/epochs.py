"""Epoch awareness shared by samplers, losses, augmentations and generators.

The trainer calls ``before_epoch(epoch)`` (0-based; by default ``set_epoch``) on every component
at the start of every epoch. Any component may carry an epoch window ``[start_epoch, end_epoch)``,
so deferred schedules (deferred re-weighting or re-sampling, an augmentation switched off for the
last epochs, a generator's threshold) are configuration rather than code.
"""
from __future__ import annotations

from .api import Component


class UnreachableEpochWarning(UserWarning):
    """A component's epoch switch lies beyond the run it is built for.

    Components raise it when built alone; the trainer silences it and instead names every such
    recipe key once (:func:`lttoolbox.recipe.unreachable_epoch_keys`).
    """


#: The epoch window every component has: :class:`lttoolbox.api.Component` (kept under this name
#: for code written against it).
EpochAware = Component
