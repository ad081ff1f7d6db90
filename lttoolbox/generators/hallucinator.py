"""The hallucinator (Wang, Girshick, Hebert and Hariharan, CVPR 2018, "Low-Shot Learning from
Imaginary Data"), made end to end at a model point of feature maps.

A generator ``G`` maps a rare seed sample ``x`` and a noise vector ``z ~ N(0, I)`` to a new
sample with the seed's label, ``x' = G(x, z)``, and is trained jointly with the classifier
through the classification loss of the hallucinated samples (the paper's meta-learned
hallucinator, trained end to end with the classifier on the base classes).

Choices where the paper leaves the detail open or the setting differs (docs/generators.md):

* ``G`` is the paper's three-layer MLP with ReLU, applied at every spatial position of a feature
  map (1x1 convolutions; at ``features``, exactly an MLP on vectors), on ``[x, z]`` with one
  noise vector per new sample broadcast over the positions.
* Identity-like start: ``G(x, z) = x + MLP([x, z])`` with the last layer initialised to zero,
  so the first hallucinations are copies of their seeds and cannot harm training (our choice;
  with the joint training the generator moves away from the identity only where that lowers
  the classification loss).
* Seeds are the batch's rare-class samples (read detached, as RSG reads them), ``s_new`` is
  RSG's rule (:func:`~lttoolbox.generators.base.generation_count`), so the generators compare
  like for like; the hallucinator has no auxiliary loss.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..checks import check_int
from ..registry import GENERATORS
from .base import FeatureGenerator, generation_count


@GENERATORS.register("hallucinator")
class Hallucinator(FeatureGenerator):
    """The hallucinator (Wang et al., CVPR 2018), end to end; see the module docstring.

    Args:
        noise_dim: Size of the noise vector ``z`` (default: the channels at the point; our choice).
        hidden: Width of the MLP's hidden layers (default: the channels at the point; our choice).
        **base: ``point``, ``feature_shape``, ``frequent_fraction``, ``transfer_strength``,
            ``start_epoch``, ``end_epoch`` and the context: see
            :class:`~lttoolbox.generators.base.FeatureGenerator`.

    Recipe::

        generator: {name: hallucinator, point: layer2}

    Example:
        >>> import torch
        >>> from lttoolbox.generators import Hallucinator
        >>> from lttoolbox.batch import Batch
        >>> gen = Hallucinator(num_classes=2, class_counts=[50, 5], feature_shape=(4, 2, 2),
        ...                    frequent_fraction=0.5, noise_dim=3)
        >>> h, y = torch.randn(3, 4, 2, 2), torch.tensor([0, 0, 1])
        >>> h2, batch = gen(h, Batch.plain(h, y))
        >>> torch.equal(h2[3], h[2]), batch.y_a.tolist()  # identity at the start
        (True, [0, 0, 1, 1, 1])
    """

    def __init__(self, noise_dim: int | None = None, hidden: int | None = None, **base: Any):
        super().__init__(**base)
        channels = self.feature_shape[0]
        self.noise_dim = check_int("noise_dim", channels if noise_dim is None else noise_dim, 1)
        hidden = check_int("hidden", channels if hidden is None else hidden, 1)
        self.mlp = nn.Sequential(nn.Conv2d(channels + self.noise_dim, hidden, 1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
                                 nn.Conv2d(hidden, channels, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def hallucinate(self, seeds: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``G(x, z) = x + MLP([x, z])`` with ``z`` broadcast over the positions."""
        z = noise[:, :, None, None].expand(-1, -1, *seeds.shape[2:]).to(seeds.dtype)
        return seeds + self.mlp(torch.cat([seeds, z], dim=1))

    def generate(self, maps: torch.Tensor, y: torch.Tensor):
        frequent, rare = self.split(y)
        total = generation_count(int(frequent.numel()), int(rare.numel()),
                                 self.transfer_strength)
        if total == 0:
            return None, None, None
        seed = rare[torch.arange(total, device=y.device) % rare.numel()]
        noise = torch.randn(total, self.noise_dim, device=maps.device)
        return self.hallucinate(maps.detach()[seed], noise), y[seed], None
