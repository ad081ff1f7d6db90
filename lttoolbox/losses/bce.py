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

from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..api import Context
from ..checks import check_int
from ..errors import ConfigError
from ..registry import LOSSES
from ..samplers.base import check_label_matrix
from .base import LTLoss, check_counts


class MultiLabelLoss(LTLoss):
    """Base of the losses on multi-hot targets: a subclass implements :meth:`elements`.

    The batch mean divides by the batch size (``batch_normalized``); per-class weights of a
    multi-label loss are its own (the single-label ``weights`` schemes weigh a sample by its one
    class, which a multi-hot row does not have), so this base refuses ``weights``.

    What depends on the training set comes from the context: ``class_counts`` (``n_i``, the
    images carrying label ``i``) and the multi-hot training labels ``(N, C)`` (``labels``), whose
    rows give ``num_train`` (``N``). Standalone, ``labels=`` or ``class_counts=`` with
    ``num_train=`` give them.

    Args:
        num_train: ``N``, the number of training images (default: the rows of the labels).
        labels: Shorthand for ``context.labels``, the multi-hot training labels ``(N, C)``; the
            class counts then follow from them (and must agree where also given).
        **base: The context (or its shorthands ``class_counts``, ``num_classes``): see
            :class:`~lttoolbox.losses.base.LTLoss`.

    Raises:
        ConfigError: ``weights`` given; counts, ``num_train`` and labels that disagree; a loss
            that needs ``N`` (``requires_num_train``) built without it.
        DataError: labels that are not a 0/1 matrix, or a label no image carries.
    """

    multilabel = True
    single_label = False
    batch_normalized = True
    # class weights are each loss's own; a recipe cannot give them (or their deferral)
    fixed_parameters = ("weights", "weights_start_epoch")
    #: Whether the training-set size ``N`` is needed.
    requires_num_train = False

    def __init__(self, weights: Any = None, *, num_train: int | None = None, **base: Any):
        if weights is not None:
            raise ConfigError("a multi-label loss weighs its classes itself; it takes no "
                              "weights", key="weights")
        # The training labels' shorthand joins the base's (class_counts, num_classes) here: the
        # counts follow from a multi-hot matrix.
        context = Context.given(base.pop("context", None), labels=base.pop("labels", None),
                                class_counts=base.pop("class_counts", None),
                                num_classes=base.pop("num_classes", None))
        if num_train is not None:
            num_train = check_int("num_train", num_train, minimum=1)
        if context.labels is not None and np.ndim(context.labels) == 2:
            _, _, from_labels = check_label_matrix(context.labels, context.num_classes)
            if context.class_counts is None:
                context = replace(context, class_counts=from_labels.tolist())
            elif not np.array_equal(check_counts(context.class_counts), from_labels):
                raise ConfigError("class_counts disagrees with the column sums of labels; give "
                                  "one of them")
            rows = int(np.shape(context.labels)[0])
            if num_train is not None and num_train != rows:
                raise ConfigError(f"num_train is {num_train} but labels has {rows} rows")
            num_train = rows
        super().__init__(context=context, **base)
        name = self.registry_name or type(self).__name__
        if num_train is None and self.requires_num_train:
            raise ConfigError(f"num_train (the number of training images) is required by "
                              f"{name}; give num_train=N or labels=(N, C)")
        if self.counts is not None and num_train is not None and self.counts.max() > num_train:
            c = int(np.argmax(self.counts))
            raise ConfigError(f"class_counts: class {c} has {self.counts[c]:g} images but "
                              f"num_train is {num_train}")
        self.num_train = num_train

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
