"""The vector-scaling (VS) loss: a multiplicative and an additive logit adjustment per class."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..registry import LOSSES
from .base import LTLoss, as_float_tensor
from .weights import check_number


@LOSSES.register("vs")
class VSLoss(LTLoss):
    """Vector-scaling loss (Kini, Paraskevas, Oymak, Thrampoulidis, "Label-Imbalanced and
    Group-Sensitive Classification under Overparameterization", NeurIPS 2021, arXiv:2103.01550).

    ``l = CE(Delta * z + iota, y)`` with, per class ``c``, ``Delta_c = (n_c / n_max)^gamma``
    (multiplicative: sets the margins late in training) and ``iota_c = tau * log pi_c``
    (additive, ``pi_c = n_c / N``: speeds up the start), as the official code computes them
    (orparask/VS-Loss at 7ade9c9, ``class_imbalance/losses.py`` lines 36-53). ``gamma = 0`` is
    the logit-adjusted loss (Menon et al.), ``tau = 0`` class-dependent temperatures (Ye et
    al.); with class weights (``weights``, or DRW with ``weights_start_epoch``) it is the paper's
    weighted VS loss. Training only: the model is evaluated on its plain logits ``z``.

    The official code divides the logits by a list it names ``Delta_list`` that holds
    ``(n_max / n_c)^gamma``, i.e. multiplies by ``Delta`` above; here ``Delta`` is stored as the
    factor itself (:attr:`scales`). Its unused ``mixed`` loss (plain CE for the first 6 epochs)
    is not reproduced. The paper's own equation and tuned values could not be checked against
    the paper's text here: the defaults are the code's (``gamma 0.3, tau 1.0``,
    ``train.py`` lines 32-33); the CIFAR-10-LT recipe uses its README's command
    (``gamma 0.2, tau 1.2``).

    Args:
        gamma: Exponent of the multiplicative adjustment, ``>= 0``.
        tau: Strength of the additive adjustment, ``>= 0``.
        **base: ``weights``, ``weights_start_epoch`` and the context, whose ``class_counts``
            are required (shorthand: ``class_counts=[...]``): see
            :class:`~lttoolbox.losses.base.LTLoss`.

    Example:
        >>> import torch
        >>> loss = VSLoss(gamma=0.2, tau=1.2, class_counts=[1000, 100, 10])
        >>> [round(float(d), 4) for d in loss.scales]  # (n_c / n_max)^0.2
        [1.0, 0.631, 0.3981]
        >>> round(float(loss(torch.tensor([[2.0, 1.0, 0.5]]), torch.tensor([2]))), 4)
        7.3437
    """

    requires_counts = True

    def __init__(self, gamma: float = 0.3, tau: float = 1.0, **base: Any):
        gamma = check_number("gamma", gamma, 0.0)
        tau = check_number("tau", tau, 0.0)
        super().__init__(**base)
        self.gamma, self.tau = gamma, tau
        counts = np.asarray(self.counts, dtype=np.float64)
        self.register_buffer("scales", as_float_tensor((counts / counts.max()) ** gamma),
                             persistent=False)
        self.register_buffer("offsets", as_float_tensor(tau * np.log(counts / counts.sum())),
                             persistent=False)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        adjusted = logits * self.scales.to(logits.device) + self.offsets.to(logits.device)
        return F.cross_entropy(adjusted, target, reduction="none")

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, tau={self.tau}, " + super().extra_repr()
