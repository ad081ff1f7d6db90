"""Multi-label losses on multi-hot targets: the base :class:`MultiLabelLoss` and ``bce``.

A multi-label loss scores logits ``(B, C)`` against a float multi-hot target ``(B, C)``. Its
``reduction="none"`` form is one value per sample, the element losses summed over the classes and
divided by ``C`` (the element mean per sample), so that the batch mean is the mean over all
``B * C`` elements, which is the reduction of the official Distribution-Balanced Loss code
(wutong16/DistributionBalancedLoss@14460d0, ``mllt/apis/train.py:28``, ``loss_value.mean()``;
``mllt/models/losses/utils.py:44``). A mixed batch is ``lam * L(y_a) + (1 - lam) * L(y_b)`` per
sample, as for every loss (:func:`~lttoolbox.losses.base.mixed_loss`).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import LOSSES
from .base import LTLoss


class MultiLabelLoss(LTLoss):
    """Base of the losses on multi-hot targets: a subclass implements :meth:`elements`.

    The batch mean divides by the batch size (``batch_normalized``); per-class weights of a
    multi-label loss are its own (the single-label ``weights`` schemes weigh a sample by its one
    class, which a multi-hot row does not have), so this base refuses ``weights``.

    Args:
        **base: The context (or its shorthands ``class_counts``, ``num_classes``): see
            :class:`~lttoolbox.losses.base.LTLoss`.
    """

    multilabel = True
    single_label = False
    batch_normalized = True

    def __init__(self, weights: Any = None, **base: Any):
        if weights is not None:
            raise ConfigError("a multi-label loss weighs its classes itself; it takes no "
                              "weights", key="weights")
        super().__init__(**base)

    def elements(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of every element, ``(B, C)``; ``target`` is float multi-hot."""
        raise NotImplementedError

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.elements(logits, target.to(logits.dtype)).mean(dim=1)

    def sample_weights(self, target: torch.Tensor) -> None:
        return None

    def _check(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if logits.dim() != 2:
            raise ValueError(f"logits must have shape (batch, classes), got {tuple(logits.shape)}")
        if target.shape != logits.shape:
            raise ValueError(f"a multi-label loss takes multi-hot targets of the logits' shape "
                             f"{tuple(logits.shape)}, got {tuple(target.shape)}")
        if self.num_classes is not None and logits.shape[1] != self.num_classes:
            raise ConfigError(f"the logits have {logits.shape[1]} classes but the loss was "
                              f"built for {self.num_classes}; the model head and the loss "
                              f"disagree")


@LOSSES.register("bce")
class BCELoss(MultiLabelLoss):
    """Binary cross-entropy with logits, one sigmoid per class (the multi-label baseline).

    ``l_i = (1 / C) sum_c [-y_ic log sigmoid(z_ic) - (1 - y_ic) log(1 - sigmoid(z_ic))]``: the
    official code's plain BCE, ``F.binary_cross_entropy_with_logits(pred, y, reduction='none')``
    followed by the mean over the ``B * C`` elements (DistributionBalancedLoss@14460d0,
    ``mllt/models/losses/cross_entropy_loss.py:47-63``).

    Recipe::

        loss: {name: bce}

    Example:
        >>> import torch
        >>> loss = BCELoss(num_classes=2)
        >>> round(float(loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))), 4)  # log 2
        0.6931
    """

    def elements(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none")
