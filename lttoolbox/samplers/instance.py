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
        labels, num_classes, seed, rank, world_size, total_epochs, num_samples, start_epoch,
        end_epoch: See :class:`~lttoolbox.samplers.base.LTSampler`.

    Example:
        >>> import numpy as np
        >>> s = InstanceSampler(np.array([0, 0, 0, 1]), seed=1)
        >>> sorted(s.indices().tolist())
        [0, 1, 2, 3]
    """

    def __init__(self, labels, num_classes=None, seed=0, rank=None, world_size=None,
                 total_epochs=None, num_samples=None, start_epoch=0, end_epoch=None):
        super().__init__(labels, num_classes=num_classes, seed=seed, rank=rank,
                         world_size=world_size, total_epochs=total_epochs,
                         num_samples=num_samples, start_epoch=start_epoch, end_epoch=end_epoch)

    def _active_probabilities(self) -> np.ndarray:
        return self.instance_probabilities

    def _active_stream(self, rng: np.random.Generator) -> np.ndarray:
        return self._instance_stream(rng, self.num_samples)
