"""Margin losses for cosine classifiers: ``ldam`` (per-class margins) and ``am_softmax``
(one margin for all classes)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..registry import LOSSES
from .base import LTLoss, as_float_tensor
from .weights import check_number


def margin_cross_entropy(logits: torch.Tensor, target: torch.Tensor, margin: torch.Tensor,
                         scale: float) -> torch.Tensor:
    """Per-sample ``CE(s * (z - m_y onehot(y)), y)``: the margin comes off the target logit only,
    then every logit is scaled by ``s``.

    Args:
        logits: ``(B, C)`` scores (cosines for a cosine head).
        target: ``(B,)`` class indices.
        margin: ``(B,)`` margin of each sample's target class.
        scale: ``s > 0``.
    """
    shift = F.one_hot(target, logits.shape[1]).to(logits.dtype) * margin.to(logits.dtype)[:, None]
    return F.cross_entropy(scale * (logits - shift), target, reduction="none")


# Both margin losses work on cosine logits in [-1, 1]: a margin of 2 or more puts the true class's
# shifted logit below every other class's whatever the features, so nothing can be learned.
MAX_COSINE_MARGIN = 2.0


@LOSSES.register("ldam")
class LDAMLoss(LTLoss):
    """Label-distribution-aware margin loss (Cao et al., "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss", NeurIPS 2019, Sec. 3.2).

    ``l = -log( e^{s(z_y - m_y)} / (e^{s(z_y - m_y)} + sum_{j != y} e^{s z_j}) )`` with per-class
    margins ``m_c = C / n_c^{1/4}``, the constant ``C`` chosen (as in the reference code) so that
    the largest margin, that of the rarest class, equals ``max_m``. The logits are meant to be
    cosines (``model: {head: cosine}``), hence the scale ``s``. With
    ``weights: {name: effective_number, beta: 0.9999}`` and ``weights_start_epoch: 160`` this is
    LDAM-DRW (Sec. 3.3, Algorithm 1).

    Args:
        max_m: Largest margin, in ``(0, 2)`` (paper: 0.5).
        s: Logit scale, ``> 0`` (paper: 30).
        **base: ``weights``, ``weights_start_epoch`` and the context, whose ``class_counts``
            are required (shorthand: ``class_counts=[...]``): see
            :class:`~lttoolbox.losses.base.LTLoss`.

    Example:
        >>> loss = LDAMLoss(max_m=0.5, class_counts=[100, 10, 1])
        >>> [round(float(m), 4) for m in loss.margins]
        [0.1581, 0.2812, 0.5]
    """

    requires_counts = True

    def __init__(self, max_m: float = 0.5, s: float = 30.0, **base: Any):
        max_m = check_number("max_m", max_m, 0.0, MAX_COSINE_MARGIN, low_open=True, high_open=True)
        s = check_number("s", s, 0.0, low_open=True)
        super().__init__(**base)
        self.max_m, self.s = max_m, s
        quarter = self.counts ** -0.25
        self.register_buffer("margins", as_float_tensor(quarter * (max_m / quarter.max())),
                             persistent=False)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return margin_cross_entropy(logits, target, self.margins.to(target.device)[target], self.s)


@LOSSES.register("am_softmax")
class AMSoftmaxLoss(LTLoss):
    """Additive margin softmax (Wang et al., "Additive Margin Softmax for Face Verification",
    IEEE Signal Processing Letters 2018: the target cosine becomes ``psi(theta) = cos(theta) - m``).

    ``l = -log( e^{s(z_y - m)} / (e^{s(z_y - m)} + sum_{j != y} e^{s z_j}) )`` with one margin ``m``
    for every class; the logits are meant to be cosines (``model: {head: cosine}``). With DRW
    weights it is the M-DRW baseline of the LDAM paper (Table 2), which the RSG paper (Wang et al.,
    CVPR 2021) also reports.

    Args:
        m: Additive margin, in ``[0, 2)`` (paper: 0.35).
        s: Logit scale, ``> 0`` (paper: 30).
        **base: ``weights``, ``weights_start_epoch`` and the context (or its shorthands
            ``class_counts``, ``num_classes``): see :class:`~lttoolbox.losses.base.LTLoss`.

    Example:
        >>> import torch
        >>> loss = AMSoftmaxLoss(m=0.0, s=1.0, num_classes=2)
        >>> round(float(loss(torch.zeros(1, 2), torch.tensor([0]))), 4)  # log 2
        0.6931
    """

    def __init__(self, m: float = 0.35, s: float = 30.0, **base: Any):
        m = check_number("m", m, 0.0, MAX_COSINE_MARGIN, high_open=True)
        s = check_number("s", s, 0.0, low_open=True)
        super().__init__(**base)
        self.m, self.s = m, s

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        margin = torch.full(target.shape, self.m, dtype=logits.dtype, device=logits.device)
        return margin_cross_entropy(logits, target, margin, self.s)
