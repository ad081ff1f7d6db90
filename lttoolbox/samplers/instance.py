"""Instance-balanced sampling: plain shuffling, the baseline every re-sampler is compared with."""
from __future__ import annotations

import numpy as np

from ..registry import SAMPLERS
from .base import LTSampler


@SAMPLERS.register("instance")
class InstanceSampler(LTSampler):
    """Every image once per epoch in random order: p_j = n_j / N.

    This is the instance-balanced sampling of Kang et al., "Decoupling Representation and
    Classifier for Long-Tailed Recognition", ICLR 2020, Sec. 3 (q = 1 in p_j = n_j^q / sum_i n_i^q),
    drawn without replacement as ordinary shuffling is. An epoch longer than N (``num_samples``)
    chains fresh permutations, so every image appears once before any appears twice.

    Recipe::

        sampler: {name: instance}

    Args:
        labels, num_samples, start_epoch, end_epoch (and the context): See
            :class:`~lttoolbox.samplers.base.LTSampler`.

    Example:
        >>> import numpy as np
        >>> s = InstanceSampler(np.array([0, 0, 0, 1]), seed=1)
        >>> sorted(s.indices().tolist())
        [0, 1, 2, 3]
    """

    multilabel = True  # it reads only the number of images

    def _active_probabilities(self) -> np.ndarray:
        return self.instance_probabilities

    def _active_stream(self, rng: np.random.Generator) -> np.ndarray:
        return self._instance_stream(rng, self.num_samples)

    def class_level_frequencies(self) -> None:
        """``None``: shuffling draws every image with ``1 / N``, whatever its classes."""
        return None
