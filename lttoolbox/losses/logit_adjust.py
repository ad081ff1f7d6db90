"""Training-time logit adjustments by class frequency: ``balanced_softmax`` (an additive offset)
and ``cdt`` (a class-dependent temperature). Both change only the training loss; at test time the
model's plain logits are used, which is where the compensation shows."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..registry import LOSSES
from .base import LTLoss, as_float_tensor
from .weights import check_number


@LOSSES.register("balanced_softmax")
class BalancedSoftmaxLoss(LTLoss):
    """Balanced softmax / logit-adjusted cross-entropy.

    ``l = CE(z + tau * log n, y)``. With ``tau = 1`` this is the Balanced Softmax of Ren et al.,
    "Balanced Meta-Softmax for Long-Tailed Visual Recognition", NeurIPS 2020, Sec. 3.1
    (``phi_j = n_j e^{z_j} / sum_i n_i e^{z_i}``); general ``tau`` is the logit-adjusted loss of
    Menon et al., "Long-Tail Learning via Logit Adjustment", ICLR 2021 (they add
    ``tau * log pi_y`` with class priors ``pi``; ``log n`` differs by a constant, which the
    softmax ignores). Training only: evaluate the plain logits ``z``.

    Args:
        tau: Strength of the adjustment, ``>= 0`` (``0`` is plain CE).
        **base: ``weights``, ``weights_start_epoch`` and the context, whose ``class_counts``
            are required (shorthand: ``class_counts=[...]``): see
            :class:`~lttoolbox.losses.base.LTLoss`.

    Example:
        >>> import torch
        >>> loss = BalancedSoftmaxLoss(class_counts=[3, 1])
        >>> round(float(loss(torch.zeros(1, 2), torch.tensor([1]))), 4)  # -log(1/4)
        1.3863
    """

    requires_counts = True

    def __init__(self, tau: float = 1.0, **base: Any):
        tau = check_number("tau", tau, 0.0)
        super().__init__(**base)
        self.tau = tau
        self.register_buffer("offsets", as_float_tensor(tau * np.log(self.counts)),
                             persistent=False)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.offsets.to(logits.device), target, reduction="none")


@LOSSES.register("cdt")
class CDTLoss(LTLoss):
    """Class-dependent temperatures (Ye et al., "Identifying and Compensating for Feature
    Deviation in Imbalanced Deep Learning", arXiv:2001.01385, 2020).

    ``l = CE(z / a, y)`` with ``a_c = (n_max / n_c)^gamma``: during training a rare class's logit
    is divided by a larger temperature, so the network must learn larger raw logits for it, which
    offsets the feature deviation of rare classes when the plain logits are evaluated. The paper
    searches ``gamma`` in ``[0, 0.4]`` on CIFAR-10 and ``[0, 0.2]`` on CIFAR-100.

    Deviation: the paper divides ``w_c^T x`` (a bias-free classifier); here the whole logit,
    bias included, is divided (as the Bag of Tricks implementation does).

    Args:
        gamma: Exponent ``>= 0`` (``0`` is plain CE).
        **base: ``weights``, ``weights_start_epoch`` and the context, whose ``class_counts``
            are required (shorthand: ``class_counts=[...]``): see
            :class:`~lttoolbox.losses.base.LTLoss`.

    Example:
        >>> loss = CDTLoss(gamma=0.5, class_counts=[100, 25, 1])
        >>> [round(float(a), 2) for a in loss.temperatures]
        [1.0, 2.0, 10.0]
    """

    requires_counts = True

    def __init__(self, gamma: float = 0.2, **base: Any):
        gamma = check_number("gamma", gamma, 0.0)
        super().__init__(**base)
        self.gamma = gamma
        self.register_buffer("temperatures",
                             as_float_tensor((self.counts.max() / self.counts) ** gamma),
                             persistent=False)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits / self.temperatures.to(logits.device), target,
                               reduction="none")
