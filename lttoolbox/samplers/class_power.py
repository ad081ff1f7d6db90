"""Class-power sampling: p_j proportional to n_j^q (class-balanced q = 0, square-root q = 1/2)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..registry import SAMPLERS
from .base import LTSampler, check_real


class _ClassPowerSampler(LTSampler):
    """Shared body: a class-conditional draw with p_j = n_j^q / sum_i n_i^q."""

    q: float

    def _active_weights(self) -> np.ndarray:
        # In log space, shifted by the largest term, so that n_j^q cannot overflow for any q.
        log_w = self.q * np.log(self.class_counts)
        return np.exp(log_w - log_w.max())


@SAMPLERS.register("class_balanced")
class ClassBalancedSampler(_ClassPowerSampler):
    """Class-balanced sampling: p_j = 1 / C, then an image uniformly within the class.

    Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition",
    ICLR 2020, Sec. 3, p_j = n_j^q / sum_i n_i^q with q = 0. Bag of Tricks' official code (Zhang
    et al., AAAI 2021; trick_gallery.md at commit 66c2087, cao_cifar split, best test-set epoch)
    reports 27.55 / 64.76 top-1 error (CIFAR-10-LT / CIFAR-100-LT, ratio 100, ResNet-32; ratio
    50: 21.92 / 60.54) and, deferred to epoch 160 (DRS), 24.93 / 59.36 (ratio 50: 19.27 /
    54.58); its tables' baseline is 29.64 / 61.68.

    Deviation: classes are drawn i.i.d. (with replacement, as Bag of Tricks does); Kang et al.'s
    released ``ClassAwareSampler`` instead cycles through the classes in shuffled order, which
    has the same expected class frequencies but less variance within an epoch.

    Recipe::

        sampler: {name: class_balanced}                    # from the first epoch
        sampler: {name: class_balanced, start_epoch: 160}  # deferred re-sampling (DRS)

    Args:
        labels, num_samples, start_epoch, end_epoch (and the context): See
            :class:`~lttoolbox.samplers.base.LTSampler`.

    Example:
        >>> import numpy as np
        >>> s = ClassBalancedSampler(np.array([0] * 99 + [1]), seed=0)
        >>> s.class_probabilities()
        array([0.5, 0.5])
    """

    q = 0.0


@SAMPLERS.register("square_root")
class SquareRootSampler(_ClassPowerSampler):
    """Square-root sampling, or any power q: p_j = n_j^q / sum_i n_i^q (default q = 1/2).

    Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition",
    ICLR 2020, Sec. 3 (square-root sampling with q = 1/2, after Mahajan et al. 2018); q = 1 is
    the instance distribution (drawn with replacement here), q = 0 class-balanced, and q < 0
    favours the tail beyond balance. Bag of Tricks' official code (Zhang et al., AAAI 2021;
    trick_gallery.md at commit 66c2087, cao_cifar split, best test-set epoch) reports 28.58 /
    63.21 top-1 error for q = 1/2 (CIFAR-10-LT / CIFAR-100-LT, ratio 100, ResNet-32; ratio 50:
    22.32 / 58.87) and, deferred to epoch 160 (DRS), 26.78 / 59.64 (ratio 50: 21.15 / 55.46);
    its tables' baseline is 29.64 / 61.68.

    Recipe::

        sampler: {name: square_root}           # q = 0.5
        sampler: {name: square_root, q: 0.25}  # a flatter power

    Args:
        q: The power applied to the class counts.
        *args, **base: The labels (also positionally), the context, ``num_samples``,
            ``start_epoch`` and ``end_epoch``: see :class:`~lttoolbox.samplers.base.LTSampler`.

    Example:
        >>> import numpy as np
        >>> s = SquareRootSampler(np.array([0] * 81 + [1] * 9))
        >>> s.class_probabilities()
        array([0.75, 0.25])
    """

    def __init__(self, *args: Any, q: float = 0.5, **base: Any):
        super().__init__(*args, **base)
        self.q = check_real("q", q)
