"""Focal losses: softmax ``focal`` and one-vs-all ``sigmoid_focal`` (Lin et al., ICCV 2017).

Both compute the modulating factor ``(1 - p_t)^gamma`` in log space, ``exp(gamma * log(1 - p_t))``,
with ``log(1 - p_t)`` taken directly from the logits:

* softmax: ``log(1 - p_t) = logsumexp_{j != y} z_j - logsumexp_j z_j``;
* sigmoid: ``log(1 - p_t) = logsigmoid(-s)`` with ``s = z`` for the true class, ``-z`` otherwise.

This stays exact where ``p_t`` rounds to 0 or 1. The class-balanced loss reference code computes the
sigmoid factor as ``exp(-gamma*y*z - gamma*log1p(exp(-z)))``: for a large negative logit of the true
class ``exp(-z)`` overflows and the factor becomes 0 (or NaN) where it should be 1, and the naive
``(1 - p_t)**gamma`` has an infinite gradient at ``p_t = 1`` when ``gamma < 1``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..registry import LOSSES
from .base import LTLoss
from .weights import check_number


# Lin et al. (ICCV 2017, Sec. 5.1) use gamma in [0, 5]. Far beyond that the modulating factor
# (1 - p_t)^gamma vanishes before anything is learned: at gamma 20 a sample classified with
# p_t = 0.5 keeps 1e-6 of its loss and one with p_t = 0.99 keeps 1e-40, below float32's smallest
# normal number (at gamma 30 it is exactly 0), so training stalls. Such values are refused.
MAX_GAMMA = 20.0


def check_gamma(gamma: object) -> float:
    """``gamma`` as a float in ``[0, MAX_GAMMA]``."""
    return check_number("gamma", gamma, 0.0, MAX_GAMMA)


def softmax_focal(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample softmax focal loss ``-(1 - p_t)^gamma log p_t`` (Lin et al. 2017, Eq. 4).

    Args:
        logits: ``(B, C)`` float scores.
        target: ``(B,)`` class indices.
        gamma: Focusing parameter ``>= 0``; ``0`` gives cross-entropy.
    """
    log_norm = torch.logsumexp(logits, dim=1)
    log_pt = logits.gather(1, target[:, None]).squeeze(1) - log_norm
    if gamma == 0:
        return -log_pt
    is_target = F.one_hot(target, logits.shape[1]).bool()
    log_rest = torch.logsumexp(logits.masked_fill(is_target, float("-inf")), dim=1)
    modulator = torch.exp(gamma * (log_rest - log_norm))
    return -modulator * log_pt


def sigmoid_focal(logits: torch.Tensor, target: torch.Tensor, gamma: float,
                  alpha: float | None = None) -> torch.Tensor:
    """Per-sample one-vs-all sigmoid focal loss summed over classes.

    ``sum_c -a_c (1 - p_c)^gamma log p_c`` with ``p_c = sigmoid(z_c)`` for the true class and
    ``1 - sigmoid(z_c)`` for the others (Lin et al. 2017, Eq. 5 applied to each binary task; the
    form of Cui et al. 2019, Sec. 4). ``a_c`` is ``alpha`` for the true class and ``1 - alpha``
    otherwise, or 1 when ``alpha`` is None. ``gamma = 0`` gives the sigmoid cross-entropy.
    """
    positive = F.one_hot(target, logits.shape[1]).to(logits.dtype)
    signed = logits * (2 * positive - 1)  # log-odds of the correct binary answer, per class
    loss = F.softplus(-signed)  # -log p_t, stable for any sign and size
    if gamma != 0:
        loss = torch.exp(gamma * F.logsigmoid(-signed)) * loss
    if alpha is not None:
        loss = (alpha * positive + (1 - alpha) * (1 - positive)) * loss
    return loss.sum(dim=1)


@LOSSES.register("focal")
class FocalLoss(LTLoss):
    """Softmax focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, Eq. 4).

    ``l = -(1 - p_t)^gamma log p_t`` with ``p_t = softmax(z)_y``; the batch mean of ``l``. Class
    weights act as the alpha-balancing factor (Eq. 5 with ``alpha_t = w_y``); with weights the mean
    is ``sum w l / sum w`` (PyTorch's weighted-CE convention, used by every softmax loss here).

    Deviation: the LDAM-DRW reference code computes ``p_t`` as ``exp(-w_y CE)``, i.e. from the
    already weighted loss, so its factor changes with the weights; here the factor uses the true
    ``p_t`` and the weights multiply the result, as in Eq. 5. The LDAM-DRW code hard-codes
    ``gamma = 1``, which the recipes set; the default here is Lin et al.'s 2. No paper prints a
    CIFAR-LT number for this loss: the LDAM paper's "Focal" row (29.62 / 61.59) is Cui et al.'s
    one-vs-all sigmoid focal loss (:class:`SigmoidFocalLoss`).

    Args:
        gamma: Focusing parameter ``>= 0``.
        **base: ``weights``, ``weights_start_epoch`` and the context (or its shorthands
            ``class_counts``, ``num_classes``): see :class:`~lttoolbox.losses.base.LTLoss`.

    Example:
        >>> import torch
        >>> loss = FocalLoss(gamma=2.0, num_classes=2)
        >>> round(float(loss(torch.tensor([[0.0, 0.0]]), torch.tensor([0]))), 4)  # 0.25 * log 2
        0.1733
    """

    def __init__(self, gamma: float = 2.0, **base: Any):
        gamma = check_gamma(gamma)
        super().__init__(**base)
        self.gamma = gamma

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return softmax_focal(logits, target, self.gamma)


@LOSSES.register("sigmoid_focal")
class SigmoidFocalLoss(LTLoss):
    """One-vs-all sigmoid focal loss, the form used by the class-balanced loss paper.

    ``l = sum_c -a_c (1 - p_c)^gamma log p_c`` over the ``C`` binary one-vs-all tasks (Lin et al.,
    ICCV 2017, Eq. 5; Cui et al., CVPR 2019, Sec. 4, "class-balanced focal loss"); the batch value
    is ``sum_i w_{y_i} l_i / B``: summed over classes and divided by the batch size (the number of
    positive labels), as in the class-balanced loss code, *also with weights* (this entry is
    batch-size normalised). ``gamma = 0`` is the sigmoid cross-entropy.

    The class-balanced paper initialises the classifier bias to ``-log((1 - pi) / pi)`` with
    ``pi = 0.1`` for sigmoid losses; that belongs to the model and is not done here.

    Args:
        gamma: Focusing parameter ``>= 0``.
        alpha: Lin et al.'s alpha-balancing of positives (``alpha``) against negatives
            (``1 - alpha``), in ``[0, 1]``; ``None`` (default) for none, as in Cui et al.
        **base: ``weights``, ``weights_start_epoch`` and the context (or its shorthands
            ``class_counts``, ``num_classes``): see :class:`~lttoolbox.losses.base.LTLoss`.

    Example:
        >>> import torch
        >>> loss = SigmoidFocalLoss(gamma=0.0, num_classes=2)
        >>> round(float(loss(torch.zeros(1, 2), torch.tensor([1]))), 4)  # 2 log 2
        1.3863
    """

    batch_normalized = True

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, **base: Any):
        gamma = check_gamma(gamma)
        alpha = None if alpha is None else check_number("alpha", alpha, 0.0, 1.0)
        super().__init__(**base)
        self.gamma, self.alpha = gamma, alpha

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sigmoid_focal(logits, target, self.gamma, self.alpha)
