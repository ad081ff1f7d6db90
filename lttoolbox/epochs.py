"""Epoch awareness shared by samplers, losses, augmentations and generators.

The trainer calls ``set_epoch(epoch)`` (0-based) on every component at the start of every epoch.
Any component may carry an epoch window ``[start_epoch, end_epoch)``, so deferred schedules
(deferred re-weighting or re-sampling, an augmentation switched off for the last epochs, a
generator's threshold) are configuration rather than code.
"""
from __future__ import annotations

from .errors import ConfigError


class UnreachableEpochWarning(UserWarning):
    """A component's epoch switch lies beyond the run it is built for.

    Components raise it when built alone; the trainer silences it and instead names every such
    recipe key once (:func:`lttoolbox.recipe.unreachable_epoch_keys`).
    """


class EpochAware:
    """Mixin: remembers the current epoch and whether it lies inside the component's window.

    Args:
        start_epoch: First epoch (0-based) on which the component is active.
        end_epoch: First epoch on which it is no longer active; ``None`` means never.
    """

    def __init__(self, start_epoch: int = 0, end_epoch: int | None = None):
        # bool is an int subclass: `end_epoch: true` would silently mean epoch 1
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
            raise ConfigError(f"start_epoch must be a non-negative integer, got {start_epoch!r}")
        if end_epoch is not None and (isinstance(end_epoch, bool) or not isinstance(end_epoch, int)
                                      or end_epoch <= start_epoch):
            raise ConfigError(
                f"end_epoch must be an integer greater than start_epoch ({start_epoch}), "
                f"got {end_epoch!r}")
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of every epoch (0-based)."""
        self.epoch = int(epoch)

    @property
    def active(self) -> bool:
        """Whether the current epoch lies in ``[start_epoch, end_epoch)``."""
        return self.epoch >= self.start_epoch and (self.end_epoch is None
                                                   or self.epoch < self.end_epoch)

    @property
    def epochs_since_start(self) -> int:
        """Epochs elapsed since the window opened (0 on its first epoch)."""
        return max(0, self.epoch - self.start_epoch)
