"""Cross-entropy (``ce``) and cost-sensitive cross-entropy (``cs_ce``)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..registry import LOSSES
from .base import LTLoss
from .weights import check_number


@LOSSES.register("ce")
class CELoss(LTLoss):
    """Softmax cross-entropy, optionally with label smoothing and class weights.

    ``l = -sum_k q_k log softmax(z)_k`` with ``q = (1 - eps) onehot(y) + eps / C`` (Szegedy et al.,
    "Rethinking the Inception Architecture", CVPR 2016, Sec. 7; ``eps = 0`` is plain CE). With
    ``weights`` it is the weighted CE of the re-weighting baselines (for example "CB RW" and, with
    ``weights_start_epoch``, the DRW schedule of Cao et al., NeurIPS 2019, Sec. 3.3).

    Deviation: with both label smoothing and weights, each sample's smoothed loss is multiplied
    by its target's weight; ``torch.nn.functional.cross_entropy`` instead weights every class term
    of the smoothing sum by that class's weight.

    Args:
        label_smoothing: ``eps`` in ``[0, 1)``.
        **base: ``weights``, ``weights_start_epoch`` and the context (or its shorthands
            ``class_counts``, ``num_classes``): see :class:`~lttoolbox.losses.base.LTLoss`.

    Example:
        >>> import torch
        >>> loss = CELoss(num_classes=3)
        >>> round(float(loss(torch.zeros(2, 3), torch.tensor([0, 2]))), 4)  # log 3
        1.0986
    """

    def __init__(self, label_smoothing: float = 0.0, **base: Any):
        super().__init__(**base)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, 0.0, 1.0,
                                            high_open=True)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, reduction="none",
                               label_smoothing=self.label_smoothing)


@LOSSES.register("cs_ce")
class CostSensitiveCELoss(CELoss):
    """Cost-sensitive cross-entropy of Bag of Tricks (Zhang et al., AAAI 2021, re-weighting).

    ``l = (n_min / n_y)^gamma * CE(z, y)``: ``gamma = 1`` is the plain cost-sensitive CE,
    ``gamma = 0.5`` the square-root ("smooth") form, ``gamma = 0`` plain CE. The weights are the
    ``cost_sensitive`` scheme of :mod:`lttoolbox.losses.weights` (not normalised, the rarest class
    weighs 1); the batch mean is the weighted mean ``sum w l / sum w`` like PyTorch's weighted CE.
    They are the loss itself, so this entry takes no ``weights`` (nor ``label_smoothing``)
    parameter; ``weights_start_epoch`` defers them (the DRW form).

    Args:
        gamma: Exponent, ``>= 0``.
        **base: ``weights_start_epoch`` (the epoch from which the weights apply; before it, plain
            CE) and the context, whose ``class_counts`` are required: see
            :class:`~lttoolbox.losses.base.LTLoss`.

    Example:
        >>> loss = CostSensitiveCELoss(gamma=1.0, class_counts=[100, 10, 1])
        >>> [round(float(w), 3) for w in loss.class_weights]
        [0.01, 0.1, 1.0]
    """

    fixed_parameters = ("label_smoothing", "weights")  # set here, not by a recipe

    def __init__(self, gamma: float = 1.0, **base: Any):
        gamma = check_number("gamma", gamma, 0.0)
        super().__init__(label_smoothing=0.0,
                         weights={"name": "cost_sensitive", "gamma": gamma}, **base)
        self.gamma = gamma
