"""Random over-sampling and under-sampling: balance the epoch by repeating or dropping images."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..registry import SAMPLERS
from .base import LTSampler


class _BalancedEpochSampler(LTSampler):
    """Every class contributes exactly ``per_class`` images to the epoch (C * per_class draws).

    The epoch length is fixed by the definition, so these samplers take no ``num_samples``; the
    deferred (pre-``start_epoch``) instance phase has N draws.
    """

    per_class: int
    fixed_parameters = ("num_samples",)  # the epoch length is the definition's

    def __init__(self, *args: Any, **base: Any):
        super().__init__(*args, num_samples=None, **base)

    def _active_length(self) -> int:
        return self.num_classes * self.per_class

    def _active_probabilities(self) -> np.ndarray:
        return np.full(self.num_classes, 1.0 / self.num_classes)

    def _active_stream(self, rng: np.random.Generator) -> np.ndarray:
        m = self.per_class
        sorted_labels = self.labels[self._by_class]
        copies, extra = np.divmod(m, self.class_counts)
        # Class j: all its images floor(m / n_j) times, plus the first (m mod n_j) images of its
        # freshly shuffled block, i.e. a random subset without replacement (for m < n_j that
        # subset is all the class contributes). The final shuffle makes the order irrelevant.
        position = np.arange(self.num_images) - self._class_start[sorted_labels]
        chosen = self._within_class_shuffle(rng)[position < extra[sorted_labels]]
        stream = np.concatenate((np.repeat(self._by_class, copies[sorted_labels]), chosen))
        rng.shuffle(stream)
        return stream


@SAMPLERS.register("random_oversample")
class RandomOverSampler(_BalancedEpochSampler):
    """Random over-sampling: repeat minority images until every class has n_max; C * n_max draws.

    Buda, Maki and Mazurowski, "A systematic study of the class imbalance problem in
    convolutional neural networks", Neural Networks 2018, Sec. 2 (random minority
    over-sampling). Class j's n_j images all appear, each ⌊n_max/n_j⌋ or ⌈n_max/n_j⌉ times
    (which ones get the extra copy is drawn afresh every epoch), so p_j = 1 / C exactly and every
    image of a class is equally likely.

    Deviation: imbalanced-learn's ``RandomOverSampler`` keeps the originals and adds
    ``n_max - n_j`` draws with replacement, so an image may be repeated far more often than
    others; the spread-out repetition here has the same expectation and less variance.

    Recipe::

        sampler: {name: random_oversample}

    Args:
        *args, **base: The labels (also positionally), the context, ``start_epoch`` and
            ``end_epoch``: see :class:`~lttoolbox.samplers.base.LTSampler` (no ``num_samples``:
            the epoch has C * n_max draws by definition).

    Example:
        >>> import numpy as np
        >>> s = RandomOverSampler(np.array([0, 0, 0, 1]))
        >>> len(s), np.bincount(s.labels[s.indices().numpy()]).tolist()
        (6, [3, 3])
    """

    @property
    def per_class(self) -> int:
        return int(self.class_counts.max())


@SAMPLERS.register("random_undersample")
class RandomUnderSampler(_BalancedEpochSampler):
    """Random under-sampling: keep n_min random images of every class; C * n_min draws.

    Buda, Maki and Mazurowski, "A systematic study of the class imbalance problem in
    convolutional neural networks", Neural Networks 2018, Sec. 2 (random majority
    under-sampling). Each class keeps a random subset of n_min of its images, without
    replacement, so p_j = 1 / C exactly.

    Deviation: the subset is drawn afresh every epoch (from ``(seed, epoch)``) rather than once
    for the whole run, so over many epochs the majority images are all seen; a fixed subset
    would throw the same images away for good.

    Recipe::

        sampler: {name: random_undersample}

    Args:
        *args, **base: The labels (also positionally), the context, ``start_epoch`` and
            ``end_epoch``: see :class:`~lttoolbox.samplers.base.LTSampler` (no ``num_samples``:
            the epoch has C * n_min draws by definition).

    Example:
        >>> import numpy as np
        >>> s = RandomUnderSampler(np.array([0, 0, 0, 1]))
        >>> len(s), np.bincount(s.labels[s.indices().numpy()]).tolist()
        (2, [1, 1])
    """

    @property
    def per_class(self) -> int:
        return int(self.class_counts.min())
