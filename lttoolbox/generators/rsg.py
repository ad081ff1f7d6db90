"""RSG, the rare-class sample generator (Wang, Lukasiewicz, Hu, Cai and Xu, CVPR 2021, "RSG: A
Simple but Effective Module for Learning Imbalanced Datasets", Section 3, Eqs. 1-7, Algorithm 1).

RSG attaches at a model point of feature maps and has three parts:

* **Center estimation.** Each class ``l`` has ``K`` centers in the channel dimension,
  ``c_{l,k}`` in ``R^C`` (broadcast over the spatial positions). A sample ``x`` of class ``l``
  is assigned to them softly by ``gamma = softmax(A_l GAP(x) + b_l)``.
* **Contrastive module.** On two samples' maps concatenated along the channels,
  ``h = conv(ReLU(conv(.)))`` (``contrastive_channels`` filters; the first kernel is
  ``contrastive_kernel``), then GAP and a linear layer to 2 classes: same class or not.
* **Vector transformation.** ``T``, one 3x3 convolution with ``C`` filters. A frequent sample's
  feature displacement ``x_fd = x_freq - up(c_K)`` (``K`` its most assigned center, ``argmax
  gamma``) is transformed and added to a rare sample: ``x_new = T(x_fd) + x_rare``, labelled
  with the rare sample's class. A batch gains ``s_new = max(floor(beta s_freq / s_rare), 1)
  s_rare`` such samples (:func:`~lttoolbox.generators.base.generation_count`).

Losses (the total is ``L_cls + lambda1 L_CESC + lambda2 L_MV``, ``lambda1 = 0.1``,
``lambda2 = 0.01``):

* ``L_CESC`` = ``(1/s) sum_i sum_k gamma_ik ||x_i - up(c_{y_i,k})||^2`` plus the contrastive
  module's cross-entropy on ``s/2`` pairs (sample ``j`` with sample ``j + s//2``; with an odd
  ``s`` the middle sample sits out).
* ``L_MV`` per new sample, summed over the spatial positions ``p`` and averaged over the new
  samples: ``|1 - cos(T(x_fd_freq)_p, x_fd_rare_p)|`` (the transformed displacement should point
  along the rare sample's own displacement from its center), ``| ||T(x_fd)_p|| - ||x_fd_p|| |``
  (length preserving), plus the contrastive module's cross-entropy of the pair ``(x_freq,
  T(x_fd))`` against "not the same class" (``T`` must strip the frequent class's identity).

Schedule: before ``generation_start_epoch`` (the epoch at which the rate reaches 0.001: 160 of
the 200-epoch CIFAR protocol) only the centers, the assignment and the contrastive module learn;
from it on, samples are generated, ``L_CESC`` keeps only its center term and the contrastive
module is frozen through the optimizer (:meth:`RSG.frozen_parameters`: the trainer withholds its
gradients from the step; never by flipping ``requires_grad`` inside ``forward``).

Gradients, as the official code routes them (``Imbalanced_Classification/models/RSG.py`` at
commit 3c5074511455428d81af89e1621493dcdb5db6ce of https://github.com/Jianf-Wang/RSG): RSG
reads the maps detached, so neither its losses nor the generated samples reach the layers
before its point; the generated samples' classification loss trains ``T`` and the
layers after the point.

Deliberate deviations from the official code (docs/generators.md):

* Frequent classes by training count, not the first classes by index.
* Cosine and norm per spatial position over the channels: the code reshapes NCHW maps to rows of
  ``C`` without permuting, so its "norms" run over mixed channel/position blocks, and it takes
  ``|a_c b_c - 1|`` element-wise instead of the cosine.
* ``s_new`` follows the paper's formula in every case; the code generates only
  ``floor(beta s_rare / s_freq) s_freq`` samples when rare samples outnumber frequent ones and
  fails when ``beta s_freq > s_rare`` is not a whole batch of frequent samples.
* Odd batch sizes pair ``s//2`` samples (the code's halves differ in size and fail), any
  ``beta``, batches without frequent or rare samples, CPU.
* Cost, same numbers: the contrastive module's last convolution and its pooling are computed
  together (:func:`pooled_conv`), and after the threshold ``L_MV`` reads its frozen weights
  detached instead of computing weight gradients that are withheld anyway.

Ablations (the paper's Table 3) are configuration: ``mv_terms`` without one of ``cosine``,
``norm``, ``contrastive``; ``displace: centers`` adds ``T(x_fd)`` to the rare sample's center
instead of the sample; ``transform: false`` adds ``x_fd`` directly (no ``T``, no ``L_MV``).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_bool, check_epoch, check_int
from ..errors import ConfigError
from ..losses.weights import check_number
from ..registry import GENERATORS
from .base import FeatureGenerator

MV_TERMS = ("cosine", "norm", "contrastive")
DISPLACE = ("samples", "centers")


def per_sample(table: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``table[y]`` as a one-hot product: the backward of indexing accumulates repeated classes
    in a thread-dependent order on the CPU, which made resumed runs differ in the last bit."""
    one_hot = F.one_hot(y, table.shape[0]).to(table.dtype)
    return (one_hot @ table.flatten(1)).view(-1, *table.shape[1:])


def pooled_conv(conv: nn.Conv2d, r: torch.Tensor, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """``conv(r).mean(dim=(2, 3))`` for a stride-1, same-padded convolution, without the
    convolution.

    Both are linear, so the average of the output is the kernel applied to the average of each
    shifted copy of ``r``: for kernel offset ``(a, b)`` that is the sum of ``r`` over the rows and
    columns the shift keeps inside the map (zero padding outside), i.e. the total minus the
    dropped border rows and columns plus their corner block. For RSG's 256-channel 3x3 layer on
    16x16 maps this replaces ~9.7 GMAC per 64 pairs with two reductions and a matrix product
    (docs/generators.md, "Cost").

    Args:
        conv: The convolution (its kernel size and padding; its weights unless given).
        r: Its input ``(N, C, H, W)``.
        weight, bias: Use these instead of ``conv``'s (detached ones, for a frozen module).
    """
    weight = conv.weight if weight is None else weight
    bias = conv.bias if bias is None else bias
    n, c, h, w = r.shape
    k, pad = conv.kernel_size[0], conv.padding[0]
    r = r.float()
    rows, cols = r.sum(dim=3), r.sum(dim=2)          # (N, C, H), (N, C, W)
    total = rows.sum(dim=2)

    def dropped(sums: torch.Tensor, offset: int) -> torch.Tensor:
        # The border a shift by ``offset`` pushes out of the map: the first rows for a positive
        # offset (the kernel reads r[i + offset]), the last ones for a negative one.
        if offset > 0:
            return sums[:, :, :offset].sum(dim=2)
        if offset < 0:
            return sums[:, :, offset:].sum(dim=2)
        return torch.zeros_like(total)

    def corner(dy: int, dx: int) -> torch.Tensor:
        if dy == 0 or dx == 0:
            return torch.zeros_like(total)
        ys = slice(None, dy) if dy > 0 else slice(dy, None)
        xs = slice(None, dx) if dx > 0 else slice(dx, None)
        return r[:, :, ys, xs].sum(dim=(2, 3))

    sums = torch.stack([torch.stack([total - dropped(rows, a - pad) - dropped(cols, b - pad)
                                     + corner(a - pad, b - pad) for b in range(k)], dim=-1)
                        for a in range(k)], dim=-2)  # (N, C, k, k)
    out = torch.einsum("ocab,ncab->no", weight.float(), sums / (h * w))
    return out + bias.float() if bias is not None else out


def center_distances(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """``||x_i - up(c_ik)||^2`` summed over channels and positions, shape ``(B, K)``.

    Args:
        x: Maps ``(B, C, H, W)``.
        centers: Each sample's class centers ``(B, K, C)``.

    Expanded as ``sum x^2 - 2 sum_c c_c sum_p x_cp + HW sum_c c_c^2`` so no ``(B, K, C, H, W)``
    tensor is built.
    """
    hw = x.shape[2] * x.shape[3]
    squares = x.pow(2).sum(dim=(1, 2, 3))
    sums = x.sum(dim=(2, 3))
    return (squares[:, None] - 2.0 * torch.einsum("bc,bkc->bk", sums, centers)
            + hw * centers.pow(2).sum(-1))


@GENERATORS.register("rsg")
class RSG(FeatureGenerator):
    """RSG (Wang et al., CVPR 2021); see the module docstring for the mechanism.

    Args:
        num_centers: ``K``, centers per class (15).
        contrastive_channels: Filters of the contrastive module's convolutions (256).
        contrastive_kernel: Kernel of its first convolution: 3 as the paper says (the official
            code uses 1); odd.
        generation_start_epoch: First 0-based epoch that generates (160 of 200 epochs).
        cesc_weight: ``lambda1`` (0.1).
        mv_weight: ``lambda2`` (0.01).
        mv_terms: The terms of ``L_MV`` (all three by default; drop one for Table 3's ablations).
        displace: ``samples`` (``x_new = T(x_fd) + x_rare``) or ``centers`` (``+ up(c_rare)``).
        transform: Apply ``T`` (true); false adds ``x_fd`` directly and drops ``L_MV``.
        **base: ``frequent_fraction``, ``transfer_strength``, ``point``, ``feature_shape``,
            ``start_epoch``, ``end_epoch`` and the context: see
            :class:`~lttoolbox.generators.base.FeatureGenerator` (alpha 0.2 and beta 1.0 for
            long-tailed data, 0.5 and 0.01 for step imbalance). The context's ``total_epochs``
            is only read to warn about a ``generation_start_epoch`` never reached.

    Recipe::

        generator: {name: rsg, point: layer2, generation_start_epoch: 160}

    Example:
        >>> import torch
        >>> from lttoolbox.generators import RSG
        >>> from lttoolbox.batch import Batch
        >>> rsg = RSG(num_classes=3, class_counts=[50, 5, 5], feature_shape=(4, 2, 2),
        ...           frequent_fraction=0.34, generation_start_epoch=0, contrastive_channels=8)
        >>> h, y = torch.randn(4, 4, 2, 2), torch.tensor([0, 0, 1, 2])
        >>> h2, batch = rsg(h, Batch.plain(h, y))
        >>> tuple(h2.shape), batch.y_a.tolist()  # s_new = max(floor(2 / 2), 1) * 2
        ((6, 4, 2, 2), [0, 0, 1, 2, 1, 2])
    """

    def __init__(self, num_centers: int = 15, contrastive_channels: int = 256,
                 contrastive_kernel: int = 3, generation_start_epoch: int = 160,
                 cesc_weight: float = 0.1, mv_weight: float = 0.01,
                 mv_terms: Sequence[str] = MV_TERMS, displace: str = "samples",
                 transform: bool = True, **base: Any):
        super().__init__(**base)
        channels = self.feature_shape[0]
        self.num_centers = check_int("num_centers", num_centers, 1)
        width = check_int("contrastive_channels", contrastive_channels, 1)
        kernel = check_int("contrastive_kernel", contrastive_kernel, 1)
        if kernel % 2 == 0:
            raise ConfigError(f"must be odd (the maps keep their size), got {kernel}",
                              key="contrastive_kernel")
        self.generation_start_epoch = check_epoch("generation_start_epoch",
                                                  generation_start_epoch)
        self.warn_unreachable("generation_start_epoch", self.generation_start_epoch,
                              self.context.total_epochs)
        self.cesc_weight = check_number("cesc_weight", cesc_weight, 0.0)
        self.mv_weight = check_number("mv_weight", mv_weight, 0.0)
        if (isinstance(mv_terms, str) or not isinstance(mv_terms, (list, tuple))
                or any(t not in MV_TERMS for t in mv_terms) or len(set(mv_terms)) != len(mv_terms)):
            raise ConfigError(f"must be a list of distinct terms from {', '.join(MV_TERMS)}, got "
                              f"{mv_terms!r}", key="mv_terms")
        self.mv_terms = tuple(mv_terms)
        if displace not in DISPLACE:
            raise ConfigError(f"must be one of {', '.join(DISPLACE)}, got {displace!r}",
                              key="displace")
        self.displace = displace
        check_bool("transform", transform)

        classes, k = self.num_classes, self.num_centers
        # Initialised as the official code: A ~ N(0, 1), b = 1, centers 0.
        self.assign_weight = nn.Parameter(torch.randn(classes, channels, k))
        self.assign_bias = nn.Parameter(torch.ones(classes, k))
        self.centers = nn.Parameter(torch.zeros(classes, k, channels))
        self.contrastive = nn.Sequential(
            nn.Conv2d(2 * channels, width, kernel, padding=kernel // 2), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1))
        self.contrastive_fc = nn.Linear(width, 2)
        self.transform = nn.Conv2d(channels, channels, 3, padding=1) if transform else None
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def generating(self) -> bool:
        return self.epoch >= self.generation_start_epoch

    def frozen_parameters(self) -> list:
        if not self.generating:
            return []
        return [*self.contrastive.parameters(), *self.contrastive_fc.parameters()]

    # -------------------------------------------------------------------------------- the parts
    def assignment(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``gamma = softmax(A_y GAP(x) + b_y)``, shape ``(B, K)``."""
        pooled = x.mean(dim=(2, 3))
        return torch.softmax(torch.einsum("bc,bck->bk", pooled, per_sample(self.assign_weight, y))
                             + per_sample(self.assign_bias, y), dim=1)

    def same_class_logits(self, a: torch.Tensor, b: torch.Tensor,
                          frozen: bool = False) -> torch.Tensor:
        """The contrastive module's 2-way logits (0: not the same class, 1: the same class):
        ``fc(GAP(conv2(ReLU(conv1([a, b])))))``, the last convolution and the pooling taken
        together (:func:`pooled_conv`). ``frozen``: through detached weights, so gradients reach
        the inputs only (the module is frozen once RSG generates; computing its weight
        gradients only to withhold them would double the cost of ``L_MV``'s third term)."""
        first, relu, second = self.contrastive
        parts = [first.weight, first.bias, second.weight, second.bias,
                 self.contrastive_fc.weight, self.contrastive_fc.bias]
        if frozen:
            parts = [p.detach() for p in parts]
        hidden = relu(F.conv2d(torch.cat([a, b], dim=1), parts[0], parts[1],
                               padding=first.padding))
        pooled = pooled_conv(second, hidden, parts[2], parts[3]).to(hidden.dtype)
        return F.linear(pooled, parts[4], parts[5])

    def pair_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of "same class?" on the pairs ``(j, j + s//2)``."""
        half = x.shape[0] // 2
        if half == 0:
            return x.new_zeros(())
        logits = self.same_class_logits(x[:half], x[half:2 * half])
        return F.cross_entropy(logits.float(), (y[:half] == y[half:2 * half]).long())

    def mv_loss(self, x_freq: torch.Tensor, moved: torch.Tensor, displacement: torch.Tensor,
                rare_displacement: torch.Tensor) -> torch.Tensor:
        """``L_MV`` averaged over the new samples (each term summed over positions)."""
        loss = moved.new_zeros((), dtype=torch.float32)
        moved32 = moved.float()
        if "cosine" in self.mv_terms:
            cos = F.cosine_similarity(moved32, rare_displacement.float(), dim=1)
            loss = loss + (1.0 - cos).abs().sum(dim=(1, 2)).mean()
        if "norm" in self.mv_terms:
            gap = moved32.norm(dim=1) - displacement.float().norm(dim=1)
            loss = loss + gap.abs().sum(dim=(1, 2)).mean()
        if "contrastive" in self.mv_terms:
            logits = self.same_class_logits(x_freq, moved, frozen=True)
            loss = loss + F.cross_entropy(logits.float(), torch.zeros(
                moved.shape[0], dtype=torch.long, device=moved.device))
        return loss

    # ------------------------------------------------------------------------------- generation
    def generate(self, maps: torch.Tensor, y: torch.Tensor):
        x = maps.detach()
        with torch.autocast(x.device.type, enabled=False):  # sums of squares in float32
            x32 = x.float()
            gamma = self.assignment(x32, y)
            cesc = (gamma * center_distances(x32, per_sample(self.centers, y))).sum() / x.shape[0]
        if not self.generating:
            return None, None, self.cesc_weight * (cesc + self.pair_loss(x, y))
        aux = self.cesc_weight * cesc
        frequent, rare = self.split(y)
        if frequent.numel() == 0 or rare.numel() == 0:
            return None, None, aux
        source, seed = self.pairing(frequent, rare)
        nearest = gamma.detach().argmax(dim=1)
        centers = self.centers.detach()
        freq_center = centers[y[source], nearest[source]][:, :, None, None]
        rare_center = centers[y[seed], nearest[seed]][:, :, None, None]
        displacement = x[source] - freq_center.to(x.dtype)
        moved = self.transform(displacement) if self.transform is not None else displacement
        base = x[seed] if self.displace == "samples" else rare_center.to(x.dtype).expand_as(moved)
        new = base + moved
        if self.transform is not None:
            rare_displacement = x[seed] - rare_center.to(x.dtype)
            aux = aux + self.mv_weight * self.mv_loss(x[source], moved, displacement,
                                                      rare_displacement)
        return new, y[seed], aux
