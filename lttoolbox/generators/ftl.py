"""Feature transfer learning, FTL (Yin, Yu, Sohn, Liu and Chandraker, CVPR 2019, "Feature
Transfer Learning for Face Recognition with Under-Represented Data"), made end to end at a
model point of feature maps.

FTL transfers the intra-class variance of the regular (frequent) classes to the
under-represented (rare) ones: with class centers ``c`` and ``Q`` the principal directions of
the frequent classes' residuals ``x - c_y``, a new sample of rare class ``r`` is
``c_r + Q Q^T (x_freq - c_{y_freq})``: the rare center plus a frequent sample's residual
projected onto those directions (the paper's feature transfer).

Choices where the paper leaves the detail open or the setting differs (docs/generators.md):

* Statistics per epoch: during an epoch the generator accumulates each class's sum of maps and
  the frequent classes' channel scatter (detached, in float64); at the start of the next epoch
  the centers become that epoch's class means and ``Q`` the top ``components`` eigenvectors of
  the frequent classes' within-class scatter ("refreshed each epoch"). Nothing is generated in
  the first epoch of the window, before any statistics exist. A class absent from an epoch
  keeps its previous center.
* At a point of feature maps a center is a whole map (``C x H x W``) and the principal
  directions are in the channel space, every spatial position of every frequent residual
  counting as one observation (a ``C x C`` scatter instead of a ``CHW x CHW`` one); at
  ``features`` this is ordinary PCA of the feature vectors.
* FTL has no learned parameters here: the paper's encoder/decoder and alternating training
  schedule belong to its face-recognition pipeline; the transfer itself is the part compared.
  The new samples carry no gradient and train the layers after the point.
* ``s_new`` is RSG's rule (:func:`~lttoolbox.generators.base.generation_count`).
"""
from __future__ import annotations

from typing import Any

import torch

from ..checks import check_int
from ..registry import GENERATORS
from .base import FeatureGenerator


@GENERATORS.register("ftl")
class FTL(FeatureGenerator):
    """Feature transfer learning (Yin et al., CVPR 2019), end to end; see the module docstring.

    Args:
        components: Principal directions kept (10, our choice; at most the channels at the point).
        **base: ``point``, ``feature_shape``, ``frequent_fraction``, ``transfer_strength``,
            ``start_epoch``, ``end_epoch`` and the context: see
            :class:`~lttoolbox.generators.base.FeatureGenerator`.

    Recipe::

        generator: {name: ftl, point: layer2}

    Example:
        >>> import torch
        >>> from lttoolbox.generators import FTL
        >>> from lttoolbox.batch import Batch
        >>> gen = FTL(num_classes=2, class_counts=[50, 5], feature_shape=(3, 1, 1),
        ...           frequent_fraction=0.5, components=1)
        >>> h, y = torch.randn(4, 3, 1, 1), torch.tensor([0, 0, 0, 1])
        >>> _ = gen(h, Batch.plain(h, y))      # epoch 0: statistics only
        >>> gen.set_epoch(1)                   # centers and directions from epoch 0
        >>> h2, batch = gen(h, Batch.plain(h, y))
        >>> tuple(h2.shape), batch.y_a.tolist()
        ((7, 3, 1, 1), [0, 0, 0, 1, 1, 1, 1])
    """

    def __init__(self, components: int = 10, **base: Any):
        super().__init__(**base)
        channels, height, width = self.feature_shape
        self.components = min(check_int("components", components, 1), channels)
        shape = (self.num_classes, channels, height, width)
        # The statistics are state: saved in every checkpoint, so a resumed run refreshes from
        # exactly the same sums.
        self.register_buffer("sums", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(self.num_classes, dtype=torch.float64))
        self.register_buffer("gram", torch.zeros(channels, channels, dtype=torch.float64))
        self.register_buffer("centers", torch.zeros(shape))
        self.register_buffer("basis", torch.zeros(channels, self.components))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if bool(self.counts.sum() > 0):
            self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Centers and principal directions from the statistics gathered since the last refresh."""
        seen = self.counts > 0
        means = self.sums / self.counts.clamp(min=1.0)[:, None, None, None]
        self.centers[seen] = means[seen].to(self.centers.dtype)
        frequent = seen & self.is_frequent.to(seen.device)
        if frequent.any():
            # Within-class scatter: sum x x^T - sum_y n_y sum_p mu_yp mu_yp^T, positions as
            # observations.
            weighted = means[frequent] * self.counts[frequent][:, None, None, None]
            scatter = self.gram - torch.einsum("ychw,ydhw->cd", weighted, means[frequent])
            _, vectors = torch.linalg.eigh((scatter + scatter.T) / 2)
            self.basis.copy_(vectors[:, -self.components:].flip(1).to(self.basis.dtype))
            self.ready.fill_(True)
        self.sums.zero_()
        self.counts.zero_()
        self.gram.zero_()

    @torch.no_grad()
    def accumulate(self, x: torch.Tensor, y: torch.Tensor, frequent: torch.Tensor) -> None:
        x64 = x.double()
        self.sums.index_add_(0, y, x64)
        self.counts.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
        xf = x64[frequent]
        self.gram += torch.einsum("bchw,bdhw->cd", xf, xf)

    def generate(self, maps: torch.Tensor, y: torch.Tensor):
        x = maps.detach()
        frequent, rare = self.split(y)
        ready = bool(self.ready)  # read before this batch joins the statistics
        self.accumulate(x, y, frequent)
        if not ready or frequent.numel() == 0 or rare.numel() == 0:
            return None, None, None
        source, seed = self.pairing(frequent, rare)
        with torch.no_grad():
            residual = x[source].float() - self.centers[y[source]]
            projector = self.basis @ self.basis.T
            new = self.centers[y[seed]] + torch.einsum("cd,bdhw->bchw", projector, residual)
        return new, y[seed], None
