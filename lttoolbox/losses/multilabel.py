"""Multi-label losses: focal (``ml_focal``), class-balanced (``ml_cb``) and distribution-balanced
(``db``); binary cross-entropy (``bce``) and the base they share are in :mod:`.bce`.

A multi-label target is a float multi-hot tensor ``(B, C)`` (1.0: the label is present) and the
scores are logits ``(B, C)`` read through ``sigmoid``. Every loss here computes an element loss
``l_ki`` for each image ``k`` and class ``i`` and reduces it as the official code of the
distribution-balanced loss does: its trainer takes the mean over all ``B * C`` elements
(``parse_losses``, ``mllt/apis/train.py:28`` of wutong16/DistributionBalancedLoss at commit
14460d0acda6a3e77a8a6a5999b9746243cb1535; every ``file:line`` below is at that commit). Here:

* ``loss(logits, target)``: the mean over all ``B * C`` elements;
* ``loss(logits, target, reduction="none")``: ``(1 / C) sum_i l_ki`` per image, shape ``(B,)``,
  whose batch mean is the value above;
* ``loss.batch_loss(logits, batch)``: a mixed pair of multi-hot targets,
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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..checks import check_bool, check_number
from ..errors import ConfigError
from ..registry import LOSSES
from .bce import MultiLabelLoss
from .focal import check_gamma

__all__ = ["MultiLabelFocalLoss", "MultiLabelClassBalancedLoss", "DistributionBalancedLoss",
           "element_loss", "rebalance_ratio", "CB_MODES", "SAMPLINGS"]

#: The class-balanced weightings of ``ResampleLoss.CB_weight`` (resample_loss.py:170-191).
CB_MODES = ("by_class", "average_n", "average_w", "min_n")
#: The sampling frequencies the re-balanced weighting knows, for standalone use (in a run they
#: come from the run's sampler): class-aware sampling (the official pairing) and shuffling.
SAMPLINGS = ("class_aware", "instance")


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


def rebalance_ratio(target: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """``r_ki = P^C_i / P^I(x_k)``, shape ``(B, C)``, from the class-level sampling frequencies.

    ``frequencies`` is ``P^C_i``, the chance per draw of one given image through class ``i``'s
    draw (:meth:`~lttoolbox.samplers.base.LTSampler.class_level_frequencies`). A class-aware
    draw reaches an image through each of its labels, so ``P^I(x_k) = sum_j y_kj P^C_j``. Under
    class-aware sampling ``P^C_i = 1 / (C n_i)`` and the ``1/C`` cancels:
    ``r_ki = (1 / n_i) / sum_j y_kj / n_j`` (``rebalance_weight``, resample_loss.py:164-165),
    for every column, absent labels included (the code's comment at :166, "pos and neg are
    equally treated"). An image without labels is never drawn by such a sampler; its ratio is
    ``inf`` (no NaN), which the smoothing maps to ``alpha + 1``.
    """
    repeat_rate = (target * frequencies).sum(dim=1, keepdim=True)
    return frequencies / repeat_rate


@LOSSES.register("ml_focal")
class MultiLabelFocalLoss(MultiLabelLoss):
    """Sigmoid focal loss in the official code's form (``FocalLoss(use_sigmoid=True)``).

    ``l_ki = balance_param * (1 - p_t)^gamma * (-log p_t)`` with ``p_t = sigmoid(z)`` for a present
    label and ``1 - sigmoid(z)`` for an absent one (focal_loss.py:51-57), the mean over all
    elements. Defaults are the class's: ``gamma = 2``, ``balance_param = 0.25``
    (focal_loss.py:11-18). Unlike Lin et al.'s alpha-balancing (``alpha`` for positives,
    ``1 - alpha`` for negatives), ``balance_param`` multiplies every element alike, as the code
    does. The code puts an optional caller weight inside ``p_t`` (:51-52); this loss takes no
    weight, so that does not arise.

    Recipe::

        loss: {name: ml_focal, gamma: 2.0, balance_param: 0.25}

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

    def elements(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return element_loss(logits, target, gamma=self.gamma, scale=self.balance_param)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}, balance_param={self.balance_param:g}"


@LOSSES.register("ml_cb")
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

    Recipe::

        loss: {name: ml_cb, beta: 0.9, mode: average_w}

    Args:
        beta: ``CB_beta`` in ``[0, 1)``; default 0.9 (resample_loss.py:29).
        mode: One of :data:`CB_MODES`; default ``average_w`` (resample_loss.py:30).
        focal: Use the code's focal branch.
        gamma, balance_param: Its parameters (resample_loss.py:23-27: 2 and 2.0).
        **base: See :class:`MultiLabelLoss`; ``class_counts`` is required.

    Example:
        >>> import torch
        >>> cb = MultiLabelClassBalancedLoss(class_counts=[8, 3, 1], mode="by_class")
        >>> [round(float(v), 4) for v in cb.cb_weights]
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
        self.register_buffer("cb_weights", torch.as_tensor(
            self.effective_weight(self.counts), dtype=torch.float64), persistent=False)
        self.register_buffer("label_counts", torch.as_tensor(self.counts, dtype=torch.float64),
                             persistent=False)

    def effective_weight(self, n: Any) -> Any:
        """``(1 - beta) / (1 - beta^n)`` (numpy or torch); ``beta = 0`` gives 1."""
        return (1 - self.beta) / (1 - self.beta ** n)

    def weights(self, target: torch.Tensor) -> torch.Tensor:
        """The element weights, ``(C,)`` for ``by_class`` or ``(B, 1)`` for the per-image modes."""
        cb = self.cb_weights.to(target)
        if self.mode == "by_class":
            return cb
        n = self.label_counts.to(target)
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

    def elements(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.focal:
            return element_loss(logits, target, self.weights(target), gamma=self.gamma,
                                scale=self.balance_param)
        return element_loss(logits, target, self.weights(target))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, beta={self.beta:g}, mode={self.mode}, "
                f"focal={self.focal}")


@LOSSES.register("db")
class DistributionBalancedLoss(MultiLabelLoss):
    """Distribution-balanced loss (Wu et al., ECCV 2020): re-balanced weighting, negative-tolerant
    regularisation and focal, each switchable (official ``ResampleLoss``, resample_loss.py).

    With ``y`` the multi-hot target, ``z`` the logits, ``n_i`` the class counts and ``N`` the
    training-set size:

    * **re-balanced weighting** (``reweight``; ``rebalance_weight``, resample_loss.py:163-168):
      ``r_ki = P^C_i / P^I(x_k)`` from the sampler's class- and instance-level sampling
      frequencies (:func:`rebalance_ratio`: ``(1/n_i) / sum_j y_kj/n_j`` under class-aware
      sampling; ``1`` under plain shuffling, derived here and not from the code, which pairs
      the loss with class-aware sampling only: every image is then drawn with ``1/N`` whatever
      class it is counted under), smoothed to
      ``w_ki = alpha + sigmoid(beta (r_ki - mu))``, for absent labels too (:166). In a run the
      frequencies are the run's sampler's
      (:meth:`~lttoolbox.samplers.base.LTSampler.class_level_frequencies`, read at every epoch's
      start, so a deferred sampler's switch is followed), as the paper ties the weighting to
      the sampler;
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
        sampling: Standalone only: the sampling whose frequencies the re-balancing assumes,
            one of :data:`SAMPLINGS` (default ``class_aware``, the code's pairing:
            configs/voc/LT_resnet50_pfc_DB.py:53). In a run they come from the run's sampler,
            and giving ``sampling`` too is refused.
        **base: See :class:`MultiLabelLoss`; ``class_counts`` is required, and ``num_train``
            when the bias is used (``logit_reg`` with ``init_bias != 0``).

    Recipe::

        sampler: {name: class_aware_ml}
        loss: {name: db, mu: 0.3, neg_scale: 5.0, init_bias: 0.05}

    Raises:
        ConfigError: a parameter out of range, ``sampling`` given in a run, or a class present in
            no image or in every image while the bias ``-log(N / n_i - 1)`` is used (it would be
            infinite).

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
                 balance_param: float = 2.0, sampling: str | None = None, **base: Any):
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
        if sampling is not None and sampling not in SAMPLINGS:
            raise ConfigError(f"sampling must be one of {', '.join(SAMPLINGS)}, got "
                              f"{sampling!r}")
        self.requires_num_train = self.logit_reg and self.init_bias != 0
        super().__init__(**base)
        self.run_sampler = self.context.sampler
        if self.run_sampler is not None and sampling is not None:
            raise ConfigError("sampling is read from the run's sampler; drop it (or change the "
                              "sampler)", key="sampling")
        self.sampling = sampling or "class_aware"
        self.register_buffer("label_counts", torch.as_tensor(self.counts, dtype=torch.float64),
                             persistent=False)
        self.register_buffer("frequencies", None, persistent=False)
        self._read_frequencies()
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

    def _read_frequencies(self) -> None:
        """``P^C_i`` of this epoch's stream into the ``frequencies`` buffer (``None``: plain
        shuffling, every ratio 1)."""
        if self.run_sampler is None:
            freq = None if self.sampling == "instance" else 1.0 / self.counts
        else:
            freq = self.run_sampler.class_level_frequencies()
        device = self.label_counts.device
        self.frequencies = (None if freq is None else
                            torch.as_tensor(np.asarray(freq, dtype=np.float64), device=device))

    def set_epoch(self, epoch: int) -> None:
        """Remember the epoch and read the run's sampler's frequencies of it (the trainer sends
        the sampler the epoch first)."""
        super().set_epoch(epoch)
        self._read_frequencies()

    def ratio(self, target: torch.Tensor) -> torch.Tensor:
        """``r_ki = P^C_i / P^I(x_k)`` of this epoch's sampling, ``(B, C)``."""
        if not target.is_floating_point():
            target = target.double()
        if self.frequencies is None:  # shuffling: both frequencies are 1 / N
            return torch.ones_like(target)
        return rebalance_ratio(target, self.frequencies.to(target))

    def weights(self, target: torch.Tensor) -> torch.Tensor:
        """The smoothed re-balanced weights ``alpha + sigmoid(beta (r - mu))``, ``(B, C)``."""
        return self.alpha + torch.sigmoid(self.beta * (self.ratio(target) - self.mu))

    def elements(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
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
        sampling = ("the run's sampler" if self.run_sampler is not None else self.sampling)
        parts = [f"num_classes={self.num_classes}", f"sampling={sampling}"]
        if self.reweight:
            parts.append(f"reweight(alpha={self.alpha:g}, beta={self.beta:g}, mu={self.mu:g})")
        if self.logit_reg:
            bug = ", reproduce_bias_bug" if self.reproduce_bias_bug else ""
            parts.append(f"logit_reg(neg_scale={self.neg_scale:g}, "
                         f"init_bias={self.init_bias:g}{bug})")
        if self.focal:
            parts.append(f"focal(gamma={self.gamma:g}, balance_param={self.balance_param:g})")
        return ", ".join(parts)
