"""Progressively-balanced sampling: from the instance to the class-balanced distribution."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..registry import SAMPLERS
from .base import LTSampler


@SAMPLERS.register("progressive")
class ProgressiveSampler(LTSampler):
    """p_j(t) = (1 - t/T) * n_j / N + (t/T) * 1 / C, moving from instance to class balance.

    Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition",
    ICLR 2020, Sec. 3 (progressively-balanced sampling), used by Bag of Tricks (Zhang et al.,
    AAAI 2021), whose official code reports 28.02 / 60.96 top-1 error (CIFAR-10-LT / CIFAR-100-LT,
    ratio 100, ResNet-32; ratio 50: 21.43 / 56.88) and, deferred to epoch 160, 26.15 / 59.59
    (ratio 50: 19.47 / 54.79): trick_gallery.md at commit 66c2087 (cao_cifar split), best
    test-set epoch; its tables' baseline is 29.64 / 61.68.

    ``t`` counts epochs since the sampler's own start (``epoch - start_epoch``, 0-based epochs)
    and ``T`` is the length of its own window, ``(end_epoch or total_epochs) - start_epoch``, so a
    deferred progressive sampler starts at exactly the instance distribution and ends near
    balance. As in the paper, t runs over 0 .. T-1, so the last epoch uses (T-1)/T, not 1.

    Deviations from Bag of Tricks' released code (lib/dataset/cao_cifar.py line 90 at 66c2087),
    which mixes by ``epoch / MAX_EPOCH`` with 1-based epochs: over the whole run this sampler is
    one epoch behind it (0-based epoch e uses e / T here, (e + 1) / T there, so its last epoch is
    fully balanced and ours is not). Deferred, that code keeps the global epoch, so its sampler
    (on from 0-based epoch 160, as here) starts at 161/200 = 0.805 of the way to class balance;
    its DRS-progressive numbers come from that schedule, not from this one.

    Recipe::

        sampler: {name: progressive}                    # T = train.epochs
        sampler: {name: progressive, start_epoch: 160}  # DRS: instance, then t/T over 40 epochs

    Args:
        *args, **base: The labels (also positionally), the context, ``num_samples``,
            ``start_epoch`` and ``end_epoch``: see :class:`~lttoolbox.samplers.base.LTSampler`.
            The context's ``total_epochs`` (``train.epochs``) gives T when ``end_epoch`` is not
            set.

    Raises:
        ConfigError: neither ``total_epochs`` nor ``end_epoch`` given.

    Example:
        >>> import numpy as np
        >>> s = ProgressiveSampler(np.array([0] * 9 + [1]), total_epochs=4)
        >>> s.set_epoch(2)
        >>> s.class_probabilities()  # 0.5 * [0.9, 0.1] + 0.5 * [0.5, 0.5]
        array([0.7, 0.3])
    """

    def __init__(self, *args: Any, **base: Any):
        super().__init__(*args, **base)
        last = self.end_epoch if self.end_epoch is not None else self.total_epochs
        if last is None:
            raise ConfigError(
                "total_epochs is required (the trainer passes train.epochs; set it, or end_epoch, "
                "when building the sampler by hand): T, the schedule's length, depends on it")
        # A window that never opens (start_epoch >= total_epochs, e.g. after a protocol scaled
        # the epochs down) is warned about by the base class; T = 1 keeps the schedule defined.
        self.schedule_epochs = max(1, last - self.start_epoch)

    @property
    def progress(self) -> float:
        """t / T of the current epoch, clipped to [0, 1]."""
        return min(1.0, self.epochs_since_start / self.schedule_epochs)

    def _active_weights(self) -> np.ndarray:
        a = self.progress
        return (1.0 - a) * self.instance_probabilities + a / self.num_classes
