"""The Delta-encoder (Schwartz, Karlinsky, Shtok, Harary, Marder, Kumar, Feris, Giryes and
Bronstein, NeurIPS 2018, "Delta-encoder: an effective sample synthesis method for few-shot
object recognition"), made end to end at a model point of feature maps.

An encoder ``E`` takes a pair of same-class samples ``(x_a, x_b)`` and produces a
low-dimensional "delta" ``z = E(x_a, x_b)``; a decoder ``D`` applies a delta to an anchor and is
trained to reconstruct the pair's other member, ``D(x_b, z) ~ x_a``. New rare-class samples are
``D(x_rare, E(x_a, x_b))`` for frequent-class pairs ``(x_a, x_b)``: the frequent classes'
intra-class variation, applied to a rare anchor.

The reconstruction loss is the official code's (EliSchwartz/DeltaEncoder, ``deltaencoder.py``,
``_create_model``, lines 183-193 at 8691821), not the paper's plain L1: with ``d_j = |x_j -
x̂_j|`` over one sample's elements, the weights ``w_j = d_j^2 / (sum_k d_k^2 + 1e-7)`` make the
sample's loss ``sum_j w_j d_j = sum_j d_j^3 / (sum_k d_k^2 + 1e-7)``, a mean of the errors that
leans on the largest ones, and the batch loss is its mean over the pairs. The weights are not
detached (the code's gradient flows through them too). ``reconstruction: l1`` is the plain mean
absolute error of the paper's text instead. At a point of feature maps a sample's elements are all
of its map's values (at ``features``, its feature vector, as in the official code).

Made end to end (the paper trains the auto-encoder offline on the base classes' features, then
synthesises, then trains a classifier), with the simplest faithful choices:

* At a point of feature maps ``E`` and ``D`` work per spatial position (1x1 convolutions, i.e.
  the paper's MLPs applied at every position); the delta is one vector per pair (the encoder's
  output averaged over positions), so it carries a global variation. At ``features`` this is
  exactly the paper's MLP on vectors.
* ``E``: ``[x_a, x_b] -> hidden -> LeakyReLU(0.2) -> dropout -> average -> z``;
  ``D``: ``[x_b, W z] -> hidden -> LeakyReLU(0.2) -> dropout -> C``. The official code has one
  hidden layer in each, leaky ReLU 0.2, dropout 0.5 after it, no input dropout and a 16-d delta
  (``main.py`` at 8691821: ``encoder_size`` and ``decoder_size`` ``[8192]``, ``noise_size``
  16, ``drop_out_rate`` 0.5, ``drop_out_rate_input`` 0.0), on vectors of pre-extracted features.
  Here ``hidden`` defaults to 512, not 8192, a deliberate deviation for cost: the layers run at
  every position of a feature map, not once per vector. On ResNet-32's ``layer2`` (``C`` = 32
  channels, ``HW`` = 16 x 16) one pair costs ``(2 C h + h L) HW`` multiply-adds to encode and
  about ``2 C h HW`` to decode: 10.5 M and 8.4 M at ``h = 512``, 167.8 M and 134.3 M at 8192,
  against 68.9 M for a whole ResNet-32 forward of one 32 x 32 image. Parameters: 83,504 at 512,
  1,335,344 at 8192 (ResNet-32 has 464,154). docs/generators.md gives the training-step times
  measured with both widths.
* Pairs are the consecutive same-class frequent samples of the batch (in a random order, as the
  sampler's); new sample ``i`` uses pair ``i mod P`` and rare seed ``i mod s_rare``; the
  number of new samples is RSG's rule (:func:`~lttoolbox.generators.base.generation_count`).
* The auto-encoder learns only from the reconstruction loss (weight ``reconstruction_weight``),
  as in the paper and the official code: samples are synthesised without dropout and detached
  from it, and train the layers after the point through the classification loss. Inputs are read
  detached, as RSG reads them.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..losses.weights import check_number
from ..checks import check_int
from ..registry import GENERATORS
from .base import FeatureGenerator, generation_count


def same_class_pairs(positions: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs ``(a, b)`` of batch positions with ``y[a] == y[b]``: neighbours after a stable sort
    of ``positions`` by class (each class's samples in batch order)."""
    order = positions[torch.sort(y[positions], stable=True).indices]
    same = y[order[:-1]] == y[order[1:]]
    return order[:-1][same], order[1:][same]


RECONSTRUCTIONS = ("weighted_l1", "l1")
WEIGHT_EPS = 1e-7  # deltaencoder.py line 189 at 8691821


def weighted_l1(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The official Delta-encoder reconstruction loss (``deltaencoder.py`` lines 183-193 at
    8691821): per sample, ``sum_j w_j d_j`` with ``d = |target - reconstruction|`` and
    ``w = d^2 / (sum d^2 + 1e-7)``, averaged over the samples (weights not detached).

    Example:
        >>> d = torch.tensor([[1.0, 3.0]])          # errors 1 and 3: (1 + 27) / (1 + 9)
        >>> round(float(weighted_l1(d, torch.zeros(1, 2))), 4)
        2.8
    """
    d = (target - reconstruction).abs().flatten(1)
    w = d.pow(2)
    w = w / (w.sum(dim=1, keepdim=True) + WEIGHT_EPS)
    return (w * d).sum(dim=1).mean()


@GENERATORS.register("delta_encoder")
class DeltaEncoder(FeatureGenerator):
    """The Delta-encoder (Schwartz et al., NeurIPS 2018), end to end; see the module docstring.

    Args:
        hidden: Width of the encoder's and decoder's hidden layer (512; the official code's is
            8192, see the module docstring for the cost).
        latent_dim: Size of the delta ``z`` (16, the official code's).
        dropout: Dropout after each hidden layer (0.5, the paper's).
        reconstruction: ``weighted_l1`` (the official code's, :func:`weighted_l1`) or ``l1``
            (the plain mean absolute error).
        reconstruction_weight: Weight of the reconstruction loss (1.0).
        **base: ``point``, ``feature_shape``, ``frequent_fraction``, ``transfer_strength``,
            ``start_epoch``, ``end_epoch`` and the context: see
            :class:`~lttoolbox.generators.base.FeatureGenerator`.

    Recipe::

        generator: {name: delta_encoder, point: layer2}

    Example:
        >>> import torch
        >>> from lttoolbox.generators import DeltaEncoder
        >>> from lttoolbox.batch import Batch
        >>> gen = DeltaEncoder(num_classes=3, class_counts=[50, 40, 5], feature_shape=(4, 2, 2),
        ...                    frequent_fraction=0.67, hidden=8, latent_dim=2)
        >>> h, y = torch.randn(5, 4, 2, 2), torch.tensor([0, 1, 0, 2, 1])
        >>> h2, batch = gen(h, Batch.plain(h, y))
        >>> tuple(h2.shape), batch.y_a.tolist()[5:]  # s_new = max(floor(4 / 1), 1) * 1
        ((9, 4, 2, 2), [2, 2, 2, 2])
    """

    def __init__(self, hidden: int = 512, latent_dim: int = 16, dropout: float = 0.5,
                 reconstruction: str = "weighted_l1", reconstruction_weight: float = 1.0,
                 **base: Any):
        super().__init__(**base)
        channels = self.feature_shape[0]
        hidden = check_int("hidden", hidden, 1)
        self.latent_dim = check_int("latent_dim", latent_dim, 1)
        dropout = check_number("dropout", dropout, 0.0, 1.0, high_open=True)
        if reconstruction not in RECONSTRUCTIONS:
            raise ConfigError(f"reconstruction must be one of {', '.join(RECONSTRUCTIONS)}, got "
                              f"{reconstruction!r}")
        self.reconstruction = reconstruction
        self.reconstruction_weight = check_number("reconstruction_weight",
                                                  reconstruction_weight, 0.0)
        self.encoder = nn.Sequential(nn.Conv2d(2 * channels, hidden, 1), nn.LeakyReLU(0.2),
                                     nn.Dropout(dropout), nn.Conv2d(hidden, self.latent_dim, 1))
        self.expand = nn.Linear(self.latent_dim, hidden)
        self.decoder_in = nn.Conv2d(channels, hidden, 1)
        self.decoder_out = nn.Sequential(nn.LeakyReLU(0.2), nn.Dropout(dropout),
                                         nn.Conv2d(hidden, channels, 1))

    def encode(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The delta of a pair, ``(P, latent_dim)``."""
        return self.encoder(torch.cat([a, b], dim=1)).mean(dim=(2, 3))

    def decode(self, anchor: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``D(anchor, z)``: the anchor moved by the delta ``z`` (same shape as the anchor)."""
        # A linear layer on [anchor, W z] is the sum of its two parts.
        return self.decoder_out(self.decoder_in(anchor) + self.expand(z)[:, :, None, None])

    def generate(self, maps: torch.Tensor, y: torch.Tensor):
        x = maps.detach()
        frequent, rare = self.split(y)
        a, b = same_class_pairs(frequent, y)
        if a.numel() == 0:
            return None, None, None
        rec = self.decode(x[b], self.encode(x[a], x[b])).float()
        loss = weighted_l1 if self.reconstruction == "weighted_l1" else F.l1_loss
        aux = self.reconstruction_weight * loss(rec, x[a].float())
        total = generation_count(int(frequent.numel()), int(rare.numel()),
                                 self.transfer_strength)
        if total == 0:
            return None, None, aux
        i = torch.arange(total, device=y.device)
        pair, seed = i % a.numel(), rare[i % rare.numel()]
        training = self.training
        try:  # synthesis as the paper's, by the trained auto-encoder: no dropout, no gradient
            self.train(False)
            with torch.no_grad():
                new = self.decode(x[seed], self.encode(x[a[pair]], x[b[pair]]))
        finally:
            self.train(training)
        return new, y[seed], aux
