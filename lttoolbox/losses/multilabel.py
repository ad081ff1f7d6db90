"""Multi-label losses: binary cross-entropy, focal, class-balanced and distribution-balanced.

A multi-label target is a float multi-hot tensor ``(B, C)`` (1.0: the label is present) and the
scores are logits ``(B, C)`` read through ``sigmoid``. Every loss here computes an element loss
``l_ki`` for each image ``k`` and class ``i`` and reduces it as the official code of the
distribution-balanced loss does: its trainer takes the mean over all ``B * C`` elements
(``parse_losses``, ``mllt/apis/train.py:28`` of wutong16/DistributionBalancedLoss at commit
14460d0acda6a3e77a8a6a5999b9746243cb1535; every ``file:line`` below is at that commit). Here:

* ``loss(logits, target)``: the mean over all ``B * C`` elements;
* ``loss(logits, target, reduction="none")``: ``(1 / C) sum_i l_ki`` per image, shape ``(B,)``,
  whose batch mean is the value above;
* :meth:`MultiLabelLoss.batch_loss`: a mixed pair of multi-hot targets,
  ``mean_k [lam_k L_k(y_a) + (1 - lam_k) L_k(y_b)]``.

Every element loss is one form, written once (:func:`element_loss`): with ``t`` the log-odds of
the wrong answer (``-z`` for a present label, ``lambda * z`` for an absent one),
``c * softplus(t) * sigmoid(t)^gamma``, the focal factor taken in log space
(``exp(gamma * logsigmoid(t))``) so that it stays exact where ``p_t`` rounds to 0 or 1. Targets are
expected in {0, 1} (not checked, which would cost a device synchronisation per step); a soft value
interpolates linearly between the present and absent forms.

The paper (Wu et al., "Distribution-Balanced Loss for Multi-Label Classification in Long-Tailed
Datasets", ECCV 2020) could not be read for this module: every reference is to the official code,
and no paper equation number is cited.

Example:
    >>> import torch
    >>> from lttoolbox.losses.multilabel import DistributionBalancedLoss
    >>> loss = DistributionBalancedLoss(class_counts=[8, 3, 1], num_train=10)
    >>> z = torch.tensor([[1.0, -0.5, -2.0], [0.2, 0.3, -1.0]])
    >>> y = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    >>> round(float(loss(z, y)), 6), tuple(loss(z, y, reduction="none").shape)
    (0.466114, (2,))
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..api import Component, Context, ModuleComponent
from ..checks import check_int, check_number
from ..errors import ConfigError, DataError
from .base import REDUCTIONS, check_counts
from .focal import check_gamma

__all__ = ["MultiLabelLoss", "MultiLabelBCELoss", "MultiLabelFocalLoss",
           "MultiLabelClassBalancedLoss", "DistributionBalancedLoss", "element_loss",
           "check_multilabel_labels", "rebalance_ratio", "CB_MODES", "DB_SAMPLERS"]

#: The class-balanced weightings of ``ResampleLoss.CB_weight`` (resample_loss.py:170-191).
CB_MODES = ("by_class", "average_n", "average_w", "min_n")
#: The samplers whose sampling frequencies the re-balanced weighting knows, by the names they
#: are to be registered under (:class:`~lttoolbox.samplers.class_aware_ml.ClassAwareMLSampler`
#: and plain shuffling).
DB_SAMPLERS = ("class_aware_ml", "instance")


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool; anything else (``1``, ``"yes"``) is refused."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def check_multilabel_labels(labels: Any) -> np.ndarray:
    """A training label matrix ``(N, C)`` of 0/1 values as float64.

    Raises:
        DataError: not two-dimensional, empty, or a value other than 0 and 1.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    try:
        arr = np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError("labels must be a multi-hot matrix (images, classes) of 0/1") from None
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"labels must be a non-empty multi-hot matrix (images, classes), got "
                        f"shape {arr.shape}")
    bad = ~((arr == 0) | (arr == 1))
    if bad.any():
        k, i = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(f"labels must hold only 0 and 1, got {arr[k, i]!r} at image {k}, "
                        f"class {i}")
    return arr


def element_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                 gamma: float = 0.0, scale: float = 1.0, neg_scale: float = 1.0) -> torch.Tensor:
    """Element-wise binary loss ``(B, C)`` in the form the official losses share.

    With ``p = sigmoid(z)`` and ``lambda = neg_scale``, for a present label (``y = 1``) and an
    absent one (``y = 0``):

    * ``y = 1``: ``scale * w * softplus(-z) * sigmoid(-z)^gamma``  (``-log p * (1 - p)^gamma``)
    * ``y = 0``: ``scale * (w / lambda) * softplus(lambda z) * sigmoid(lambda z)^gamma``

    This is ``ResampleLoss.forward`` (resample_loss.py:111-124: the negatives' logits scaled by
    lambda and their weight divided by it at :158-160, ``F.binary_cross_entropy_with_logits``
    with ``weight``, and the focal factor from the *unweighted* ``p_t`` times
    ``balance_param = scale``); with ``lambda = 1``, ``gamma = 0``, ``w = 1`` it is the binary
    cross-entropy.

    Args:
        logits: ``(B, C)`` logits (any bias already added).
        target: ``(B, C)`` multi-hot float target.
        weight: Element weights broadcastable to ``(B, C)``, or ``None`` (all 1).
        gamma: Focusing parameter (``0``: no focal factor).
        scale: Constant factor (the official focal branch's ``balance_param``).
        neg_scale: lambda, the negative-tolerant scale of absent labels' logits.
    """
    pos_t = -logits
    neg_t = logits * neg_scale if neg_scale != 1.0 else logits
    pos, neg = F.softplus(pos_t), F.softplus(neg_t)
    if gamma != 0:
        pos = pos * torch.exp(gamma * F.logsigmoid(pos_t))
        neg = neg * torch.exp(gamma * F.logsigmoid(neg_t))
    if neg_scale != 1.0:
        neg = neg / neg_scale
    loss = target * pos + (1 - target) * neg
    if weight is not None:
        loss = loss * weight
    return loss * scale if scale != 1.0 else loss


def rebalance_ratio(target: torch.Tensor, inv_counts: torch.Tensor) -> torch.Tensor:
    """``r_ki = P^C_i / P^I(x_k)`` under class-aware sampling, shape ``(B, C)``.

    Class-aware sampling picks a class uniformly (``1 / C``), then one of its ``n_i`` images, so
    an image of class ``i`` is drawn at the class level with ``P^C_i = 1 / (C n_i)`` and, since
    it is drawn through each of its labels, with ``P^I(x_k) = sum_j y_kj / (C n_j)``. The ``1/C``
    cancels: ``r_ki = (1 / n_i) / sum_j y_kj / n_j`` (``rebalance_weight``,
    resample_loss.py:164-165), for every column, absent labels included (the code's comment at
    :166, "pos and neg are equally treated"). An image without labels is never drawn by that
    sampler; its ratio is ``inf`` (no NaN), which the smoothing maps to ``alpha + 1``.
    """
    repeat_rate = (target * inv_counts).sum(dim=1, keepdim=True)
    return inv_counts / repeat_rate


class MultiLabelLoss(ModuleComponent):
    """Base of the multi-label losses: shape checks, dtype handling and the reductions.

    A subclass implements :meth:`elementwise` (the ``(B, C)`` element losses). The loss is
    computed in float32 (float64 inputs stay float64) with autocast switched off.

    Args:
        context: What the data tell the loss; it reads ``class_counts``, ``num_classes`` and a
            two-dimensional ``labels`` (the multi-hot training labels).
        class_counts: ``n_i``, the number of training images with label ``i`` (shorthand for
            the context's field).
        num_train: ``N``, the number of training images (default: the rows of ``labels``).
        labels: The training label matrix ``(N, C)``; when given, ``class_counts`` and
            ``num_train`` follow from it (and must agree with them where also given).
        num_classes: C, checked against the counts and the logits.

    Raises:
        ConfigError: counts that are not positive, disagreeing sizes, or a loss that needs the
            counts (``requires_counts``) built without them.
    """

    requires_counts = False
    #: Whether the training-set size ``N`` is needed (the DB bias).
    requires_num_train = False

    def __init__(self, *, context: Context | None = None,
                 class_counts: Sequence[float] | None = None, num_train: int | None = None,
                 labels: Any = None, num_classes: int | None = None):
        nn.Module.__init__(self)
        context = Context.given(context, class_counts=class_counts, num_classes=num_classes)
        Component.__init__(self, context=context)
        name = type(self).__name__
        counts = context.class_counts
        if labels is None and context.labels is not None and np.ndim(context.labels) == 2:
            labels = context.labels
        if num_train is not None:
            num_train = check_int("num_train", num_train, minimum=1)
        if labels is not None:
            matrix = check_multilabel_labels(labels)
            from_labels = matrix.sum(axis=0)
            if counts is not None and not np.array_equal(
                    check_counts(counts), from_labels):
                raise ConfigError("class_counts disagrees with the column sums of labels; give "
                                  "one of them")
            if num_train is not None and num_train != matrix.shape[0]:
                raise ConfigError(f"num_train is {num_train} but labels has "
                                  f"{matrix.shape[0]} rows")
            counts, num_train = from_labels, matrix.shape[0]
        counts = check_counts(counts, context.num_classes)
        if counts is None and self.requires_counts:
            raise ConfigError(f"class_counts is required by {name}; give class_counts=[...] "
                              f"or labels=(N, C)")
        if num_train is None and self.requires_num_train:
            raise ConfigError(f"num_train (the number of training images) is required by "
                              f"{name}; give num_train=N or labels=(N, C)")
        if counts is not None and num_train is not None and counts.max() > num_train:
            c = int(np.argmax(counts))
            raise ConfigError(f"class_counts: class {c} has {counts[c]:g} images but num_train "
                              f"is {num_train}")
        self.counts = counts
        self.num_train = num_train
        self.num_classes = int(counts.size) if counts is not None else context.num_classes
        # Per-class buffers are float64 and cast to the logits' dtype in the forward, so that a
        # float64 check sees no float32 rounding of them.
        self.register_buffer("class_counts", None if counts is None else torch.as_tensor(
            counts, dtype=torch.float64), persistent=False)

    def elementwise(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The ``(B, C)`` element losses of float32/float64 logits."""
        raise NotImplementedError

    def _check(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if logits.dim() != 2:
            raise ValueError(f"logits must have shape (batch, classes), got {tuple(logits.shape)}")
        if target.shape != logits.shape:
            raise ValueError(f"a multi-label target must have the logits' shape "
                             f"{tuple(logits.shape)}, got {tuple(target.shape)}")
        if self.num_classes is not None and logits.shape[1] != self.num_classes:
            raise ConfigError(f"the logits have {logits.shape[1]} classes but the loss was "
                              f"built for {self.num_classes}; the model head and the loss "
                              f"disagree")

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                reduction: str = "mean") -> torch.Tensor:
        """The loss.

        Args:
            logits: ``(B, C)`` scores, any floating dtype.
            target: ``(B, C)`` multi-hot target.
            reduction: ``"mean"`` (over all ``B * C`` elements), ``"sum"`` (of the per-image
                values) or ``"none"`` (``(B,)``: each image's mean over its ``C`` elements).
        """
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self._check(logits, target)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
            per_image = self.elementwise(z, target.to(z.dtype)).mean(dim=1)
            if reduction == "none":
                return per_image
            return per_image.sum() if reduction == "sum" else per_image.mean()

    def batch_loss(self, logits: torch.Tensor, batch: Any) -> torch.Tensor:
        """The loss of a possibly mixed batch (``batch.y_a``, ``batch.y_b``: ``(B, C)``
        targets, ``batch.lam``: ``(B,)``): ``mean_k [lam_k L_k(y_a) + (1 - lam_k) L_k(y_b)]``,
        just ``loss(logits, y_a)`` for an unmixed batch."""
        if not batch.mixed:
            return self(logits, batch.y_a)
        lam = batch.lam.float()
        return (lam * self(logits, batch.y_a, reduction="none")
                + (1 - lam) * self(logits, batch.y_b, reduction="none")).mean()



class MultiLabelBCELoss(MultiLabelLoss):
    """Binary cross-entropy on each label, the mean over all ``B * C`` elements.

    ``l_ki = -y log sigmoid(z) - (1 - y) log(1 - sigmoid(z))``: the official
    ``CrossEntropyLoss(use_sigmoid=True)`` (cross_entropy_loss.py:47-63, ``reduction='mean'``),
    i.e. ``F.binary_cross_entropy_with_logits`` averaged over the elements. Its optional
    ``thrds`` and ``partial`` variants (:66-88, :149-155) are not reproduced.

    Args:
        **base: See :class:`MultiLabelLoss` (no counts needed).

    Example:
        >>> import torch
        >>> bce = MultiLabelBCELoss()
        >>> round(float(bce(torch.zeros(2, 3), torch.ones(2, 3))), 4)  # log 2
        0.6931
    """

    def elementwise(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return element_loss(logits, target)


class MultiLabelFocalLoss(MultiLabelLoss):
    """Sigmoid focal loss in the official code's form (``FocalLoss(use_sigmoid=True)``).

    ``l_ki = balance_param * (1 - p_t)^gamma * (-log p_t)`` with ``p_t = sigmoid(z)`` for a present
    label and ``1 - sigmoid(z)`` for an absent one (focal_loss.py:51-57), the mean over all
    elements. Defaults are the class's: ``gamma = 2``, ``balance_param = 0.25``
    (focal_loss.py:11-18). Unlike Lin et al.'s alpha-balancing (``alpha`` for positives,
    ``1 - alpha`` for negatives), ``balance_param`` multiplies every element alike, as the code
    does. The code puts an optional caller weight inside ``p_t`` (:51-52); this loss takes no
    weight, so that does not arise.

    Args:
        gamma: Focusing parameter in ``[0, 20]``.
        balance_param: Constant factor ``> 0``.
        **base: See :class:`MultiLabelLoss`.

    Example:
        >>> import torch
        >>> focal = MultiLabelFocalLoss()
        >>> round(float(focal(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))), 6)  # .25*.25*log 2
        0.043322
    """

    def __init__(self, gamma: float = 2.0, balance_param: float = 0.25, **base: Any):
        super().__init__(**base)
        self.gamma = check_gamma(gamma)
        self.balance_param = check_number("balance_param", balance_param, 0.0, low_open=True)

    def elementwise(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return element_loss(logits, target, gamma=self.gamma, scale=self.balance_param)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}, balance_param={self.balance_param:g}"


class MultiLabelClassBalancedLoss(MultiLabelLoss):
    """Class-balanced binary cross-entropy (effective number of samples), the code's CB modes.

    With ``cb_i = (1 - beta) / (1 - beta^{n_i})`` (Cui et al., CVPR 2019, effective number), the
    element weight ``w_ki`` is, by ``mode`` (``ResampleLoss.CB_weight``,
    resample_loss.py:170-191):

    * ``by_class``: ``cb_i`` for every image, present and absent labels alike (:171-173);
    * ``average_n``: one weight per image, ``(1 - beta) / (1 - beta^{m_k})`` with ``m_k`` the mean
      ``n_i`` of its present labels (:174-178);
    * ``average_w`` (the code's default): one weight per image, the mean ``cb_i`` of its present
      labels (:179-183);
    * ``min_n``: one weight per image, ``cb`` of its rarest present label (:184-188).

    The per-image modes weigh all ``C`` elements of an image alike. The weights are not
    normalised (with ``beta = 0.9`` they lie in ``(0.1, 1]``), as in the code. The loss is
    ``w_ki * BCE_ki`` (``ResampleLoss`` with ``reweight_func='CB'`` and no logit
    regularisation), or with ``focal: true`` the code's focal branch,
    ``balance_param * (1 - p_t)^gamma * w_ki * BCE_ki`` (:115-124, ``p_t`` unweighted).

    Deviation: an image without any present label has no defined per-image weight (the code's
    ``average_n``/``average_w`` give 0/0 = NaN); here it gets ``1 - beta``, the weight of a class
    with infinitely many images (the limit the code's ``min_n`` sentinel of 100000 reaches).

    Args:
        beta: ``CB_beta`` in ``[0, 1)``; default 0.9 (resample_loss.py:29).
        mode: One of :data:`CB_MODES`; default ``average_w`` (resample_loss.py:30).
        focal: Use the code's focal branch.
        gamma, balance_param: Its parameters (resample_loss.py:23-27: 2 and 2.0).
        **base: See :class:`MultiLabelLoss`; ``class_counts`` is required.

    Example:
        >>> import torch
        >>> cb = MultiLabelClassBalancedLoss(class_counts=[8, 3, 1], mode="by_class")
        >>> [round(float(v), 4) for v in cb.class_weights]
        [0.1756, 0.369, 1.0]
    """

    requires_counts = True

    def __init__(self, beta: float = 0.9, mode: str = "average_w", focal: bool = False,
                 gamma: float = 2.0, balance_param: float = 2.0, **base: Any):
        super().__init__(**base)
        self.beta = check_number("beta", beta, 0.0, 1.0, high_open=True)
        if mode not in CB_MODES:
            raise ConfigError(f"mode must be one of {', '.join(CB_MODES)}, got {mode!r}")
        self.mode = mode
        self.focal = check_bool("focal", focal)
        self.gamma = check_gamma(gamma)
        self.balance_param = check_number("balance_param", balance_param, 0.0, low_open=True)
        self.register_buffer("class_weights", torch.as_tensor(
            self.effective_weight(self.counts), dtype=torch.float64), persistent=False)

    def effective_weight(self, n: Any) -> Any:
        """``(1 - beta) / (1 - beta^n)`` (numpy or torch); ``beta = 0`` gives 1."""
        return (1 - self.beta) / (1 - self.beta ** n)

    def weights(self, target: torch.Tensor) -> torch.Tensor:
        """The element weights, ``(C,)`` for ``by_class`` or ``(B, 1)`` for the per-image modes."""
        cb = self.class_weights.to(target)
        if self.mode == "by_class":
            return cb
        n = self.class_counts.to(target)
        present = target.sum(dim=1, keepdim=True)
        empty = present == 0
        if self.mode == "average_w":
            w = (target * cb).sum(dim=1, keepdim=True) / present.clamp_min(1)
        elif self.mode == "average_n":
            mean_n = (target * n).sum(dim=1, keepdim=True) / present.clamp_min(1)
            w = self.effective_weight(mean_n.clamp_min(1))
        else:  # min_n
            smallest = torch.where(target > 0, n, torch.full_like(n, math.inf)).amin(
                dim=1, keepdim=True)
            w = self.effective_weight(smallest.clamp_max(torch.finfo(target.dtype).max))
        return torch.where(empty, torch.full_like(w, 1 - self.beta), w)

    def elementwise(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.focal:
            return element_loss(logits, target, self.weights(target), gamma=self.gamma,
                                scale=self.balance_param)
        return element_loss(logits, target, self.weights(target))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, beta={self.beta:g}, mode={self.mode}, "
                f"focal={self.focal}")


class DistributionBalancedLoss(MultiLabelLoss):
    """Distribution-balanced loss (Wu et al., ECCV 2020): re-balanced weighting, negative-tolerant
    regularisation and focal, each switchable (official ``ResampleLoss``, resample_loss.py).

    With ``y`` the multi-hot target, ``z`` the logits, ``n_i`` the class counts and ``N`` the
    training-set size:

    * **re-balanced weighting** (``reweight``; ``rebalance_weight``, resample_loss.py:163-168):
      ``r_ki = P^C_i / P^I(x_k)`` from the sampler's class- and instance-level sampling
      frequencies (:func:`rebalance_ratio`: ``(1/n_i) / sum_j y_kj/n_j`` under class-aware
      sampling; ``1`` under instance sampling, derived here and not from the code, which pairs
      the loss with class-aware sampling only: every image is then drawn with ``1/N`` whatever
      class it is counted under), smoothed to
      ``w_ki = alpha + sigmoid(beta (r_ki - mu))``, for absent labels too (:166);
    * **negative-tolerant regularisation** (``logit_reg``; ``logit_reg_functions``, :153-161):
      a class bias ``nu_i = kappa * b_i`` with ``b_i = -log(N / n_i - 1)`` added to the logits
      (:157), then the absent labels' logits scaled by ``lambda`` and their weight divided by it
      (:158-160): the element loss of an absent label is
      ``(w / lambda) * log(1 + exp(lambda (z + nu)))``;
    * **focal** (``focal``; :115-124): ``balance_param * (1 - p_t)^gamma`` times the weighted loss,
      ``p_t`` from the regularised logits without the weight.

    The loss is the mean over all ``B * C`` elements (see the module docstring).

    Defaults are the VOC-MLT configuration (``configs/voc/LT_resnet50_pfc_DB.py:23-28``):
    ``alpha = 0.1``, ``beta = 10``, ``mu = 0.3`` (the code's ``map_param['gamma']``),
    ``neg_scale = 5`` (lambda), ``init_bias = 0.05`` (kappa), focal ``gamma = 2``,
    ``balance_param = 2``. COCO-MLT uses ``mu = 0.2`` and ``neg_scale = 2``
    (``configs/coco/LT_resnet50_pfc_DB.py:26-27``). The class defaults of ``ResampleLoss``
    (``map_param`` alpha 10, beta 0.2, gamma 0.1, resample_loss.py:32-36) are not used: no
    shipped configuration uses them.

    Deviations from the code, each deliberate:

    * The bias: the code computes ``nu_i = kappa * b_i / lambda`` (resample_loss.py:90-91); the
      maintainer confirmed on 2021-01-26
      (https://github.com/wutong16/DistributionBalancedLoss/issues/8) that the ``/ neg_scale``
      "is indeed not supposed to be here", making kappa effectively lambda times smaller. Here
      ``nu_i = kappa * b_i``; ``reproduce_bias_bug=True`` restores the code's division (the
      released checkpoints were trained with it; with ``kappa = 0.05`` its effective value is
      0.01 on VOC-MLT and 0.025 on COCO-MLT).
    * The code adds the bias to the caller's logits in place (:157); here the logits are not
      modified.
    * With ``logit_reg`` and no re-weighting the code fails (a ``None`` weight divided by
      lambda, :160); here the weight is then 1.
    * The code takes ``N = n_0 + neg_0`` from its frequency file (:84); here ``N`` is given
      (``num_train``, or the rows of ``labels``).
    * Only ``rebalance`` weighting: the code's other weightings are the class-balanced loss
      (:class:`MultiLabelClassBalancedLoss`) and inverse-frequency weights.

    Args:
        reweight: Use the re-balanced weighting.
        logit_reg: Use the negative-tolerant regularisation.
        focal: Use the focal factor.
        alpha: Lower bound of the smoothed weight, ``>= 0``.
        beta: Steepness of the smoothing, ``> 0``.
        mu: Centre of the smoothing (the code's ``map_param['gamma']``).
        neg_scale: lambda, the scale of absent labels' logits, ``> 0``.
        init_bias: kappa, the scale of the class bias ``b_i`` (``0``: no bias).
        reproduce_bias_bug: Divide the bias by ``neg_scale``, as the official code does.
        gamma: Focal focusing parameter in ``[0, 20]``.
        balance_param: Focal constant factor ``> 0`` (the code's default 2.0 doubles the loss).
        sampler: The training sampler whose frequencies the re-balancing uses, one of
            :data:`DB_SAMPLERS` (the code pairs the loss with class-aware sampling,
            ``class_aware_ml``: configs/voc/LT_resnet50_pfc_DB.py:53).
        **base: See :class:`MultiLabelLoss`; ``class_counts`` is required, and ``num_train``
            when the bias is used (``logit_reg`` with ``init_bias != 0``).

    Raises:
        ConfigError: a parameter out of range, or a class present in no image or in every image
            while the bias ``-log(N / n_i - 1)`` is used (it would be infinite).

    Example:
        >>> import torch
        >>> db = DistributionBalancedLoss(class_counts=[8, 3, 1], num_train=10)
        >>> y = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
        >>> [[round(v, 4) for v in row] for row in db.weights(y).tolist()]
        [[0.5322, 1.0862, 1.1], [0.2128, 0.4775, 1.089]]
    """

    requires_counts = True

    def __init__(self, reweight: bool = True, logit_reg: bool = True, focal: bool = True,
                 alpha: float = 0.1, beta: float = 10.0, mu: float = 0.3,
                 neg_scale: float = 5.0, init_bias: float = 0.05,
                 reproduce_bias_bug: bool = False, gamma: float = 2.0,
                 balance_param: float = 2.0, sampler: str = "class_aware_ml", **base: Any):
        self.reweight = check_bool("reweight", reweight)
        self.logit_reg = check_bool("logit_reg", logit_reg)
        self.focal = check_bool("focal", focal)
        self.alpha = check_number("alpha", alpha, 0.0)
        self.beta = check_number("beta", beta, 0.0, low_open=True)
        self.mu = check_number("mu", mu)
        self.neg_scale = check_number("neg_scale", neg_scale, 0.0, low_open=True)
        self.init_bias = check_number("init_bias", init_bias)
        self.reproduce_bias_bug = check_bool("reproduce_bias_bug", reproduce_bias_bug)
        self.gamma = check_gamma(gamma)
        self.balance_param = check_number("balance_param", balance_param, 0.0, low_open=True)
        if sampler not in DB_SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(DB_SAMPLERS)}, got {sampler!r}")
        self.sampler = sampler
        self.requires_num_train = self.logit_reg and self.init_bias != 0
        super().__init__(**base)
        bias = np.zeros(self.counts.size)
        if self.requires_num_train:
            full = np.flatnonzero(self.counts >= self.num_train)
            if full.size:
                raise ConfigError(f"class_counts: class {int(full[0])} is present in all "
                                  f"{self.num_train} training images, so its bias "
                                  f"-log(N / n - 1) is infinite; set init_bias: 0")
            bias = -np.log(self.num_train / self.counts - 1) * self.init_bias
            if self.reproduce_bias_bug:
                bias = bias / self.neg_scale
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float64),
                             persistent=False)

    def ratio(self, target: torch.Tensor) -> torch.Tensor:
        """``r_ki`` for the configured sampler, ``(B, C)``."""
        if self.sampler == "instance":  # both frequencies are 1 / N
            return torch.ones_like(target)
        return rebalance_ratio(target, 1 / self.class_counts.to(target))

    def weights(self, target: torch.Tensor) -> torch.Tensor:
        """The smoothed re-balanced weights ``alpha + sigmoid(beta (r - mu))``, ``(B, C)``."""
        return self.alpha + torch.sigmoid(self.beta * (self.ratio(target) - self.mu))

    def elementwise(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = self.weights(target) if self.reweight else None
        neg_scale = 1.0
        if self.logit_reg:
            logits = logits + self.bias.to(logits)
            neg_scale = self.neg_scale
        if self.focal:
            return element_loss(logits, target, weight, gamma=self.gamma,
                                scale=self.balance_param, neg_scale=neg_scale)
        return element_loss(logits, target, weight, neg_scale=neg_scale)

    def extra_repr(self) -> str:
        parts = [f"num_classes={self.num_classes}", f"sampler={self.sampler}"]
        if self.reweight:
            parts.append(f"reweight(alpha={self.alpha:g}, beta={self.beta:g}, mu={self.mu:g})")
        if self.logit_reg:
            bug = ", reproduce_bias_bug" if self.reproduce_bias_bug else ""
            parts.append(f"logit_reg(neg_scale={self.neg_scale:g}, "
                         f"init_bias={self.init_bias:g}{bug})")
        if self.focal:
            parts.append(f"focal(gamma={self.gamma:g}, balance_param={self.balance_param:g})")
        return ", ".join(parts)
