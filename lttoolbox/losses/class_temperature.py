"""Class-wise temperature scaling (``class_temperature``), DBN-Mix's training loss."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..registry import LOSSES
from .base import LTLoss, as_float_tensor
from .weights import check_number

#: Where ``p_c`` rounds to 1, ``log(1 - p_c)`` is evaluated at ``p_c = 1 - 1e-7``.
LOG_P_MAX = -1e-7


def temperatures(counts: np.ndarray, epsilon: float, eta: float) -> np.ndarray:
    """``T_c = (max_k phi_k / phi_c)^(1 / eta)`` with ``phi_c = epsilon K n_c / n_max +
    (1 - epsilon)`` (DBN-Mix ``losses.py`` lines 36-38): 1 for the largest class, larger for
    rarer ones."""
    counts = np.asarray(counts, dtype=np.float64)
    phi = epsilon * counts.size * counts / counts.max() + (1.0 - epsilon)
    return (phi.max() / phi) ** (1.0 / eta)


def log1m_exp(log_p: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(log_p))`` for ``log_p < 0``, accurate at both ends (Maechler 2012)."""
    return torch.where(log_p > -0.6931471805599453, torch.log(-torch.expm1(log_p)),
                       torch.log1p(-torch.exp(log_p)))


@LOSSES.register("class_temperature")
class ClassTemperatureLoss(LTLoss):
    """Class-wise temperature scaling of DBN-Mix (Baik, Yoon, Choi, "DBN-Mix: Training Dual
    Branch Network Using Bilateral Mixup Augmentation for Long-Tailed Visual Recognition",
    arXiv:2207.02173, Pattern Recognition 2024; official code soony1213/DBN-Mix at 4359585,
    ``losses.py`` lines 27-45; equation numbers: see the paper).

    The logits are divided per class by ``T_c`` (:func:`temperatures`; ``T = 1`` for the
    largest class, up to ``(max phi / min phi)^(1/eta)`` for the rarest), ``p = softmax(z / T)``,
    and the loss of a target distribution ``t`` is softmax cross-entropy plus a complement
    term on the same probabilities::

        l = - sum_c t_c log p_c - sum_c (1 - t_c) log(1 - p_c)

    For a one-hot target ``y``: ``-log p_y - sum_{c != y} log(1 - p_c)``. It is affine in ``t``
    with coefficients that sum to one, so for a mixed target ``lam e_a + (1 - lam) e_b`` it is
    ``lam l(a) + (1 - lam) l(b)``: the two-target batch's loss (:func:`mixed_loss`) is exactly
    the code's loss of the mixed one-hot target. The temperatures act in training only; the
    model is evaluated on its raw logits (``main.py`` lines 392-395).

    Deviation: the code takes ``log(1 - p)`` of the softmax with no bound, which is ``-inf``
    (and ``0 * -inf = NaN`` for the target's own class) when a probability rounds to 1; here
    the target's class is left out of the complement sum rather than multiplied by 0, and
    ``log(1 - p_c)`` is computed stably and evaluated at ``p_c = 1 - 1e-7`` at most.

    Args:
        epsilon: ``epsilon`` in ``[0, 1]`` (the scripts' ``--temp-epsilon 0.6`` for CIFAR-10-LT
            and CIFAR-100-LT; ``main.py``'s default 0.05 is not what they run). 0: every
            ``T_c = 1``.
        eta: ``eta > 0`` (the scripts' ``--temp-eta``: 3 for CIFAR-10-LT, 7 for CIFAR-100-LT).
        **base: ``weights``, ``weights_start_epoch`` and the context, whose ``class_counts``
            are required: see :class:`~lttoolbox.losses.base.LTLoss`.

    Recipe::

        loss: {name: class_temperature, epsilon: 0.6, eta: 3}

    Example:
        >>> import torch
        >>> loss = ClassTemperatureLoss(epsilon=0.6, eta=3, class_counts=[100, 10, 1])
        >>> [round(float(t), 6) for t in loss.temperature]
        [1.0, 1.559546, 1.739464]
        >>> z = torch.tensor([[2.0, 1.0, 0.5]])  # p = softmax(z / T) = [0.6957, 0.1788, 0.1255]
        >>> round(float(loss(z, torch.tensor([0]))), 6)  # -log p_0 - log(1 - p_1) - log(1 - p_2)
        0.693896
    """

    requires_counts = True

    def __init__(self, epsilon: float = 0.6, eta: float = 3.0, **base: Any):
        super().__init__(**base)
        self.epsilon = check_number("epsilon", epsilon, 0.0, 1.0)
        self.eta = check_number("eta", eta, 0.0, low_open=True)
        self.register_buffer("temperature", as_float_tensor(
            temperatures(self.counts, self.epsilon, self.eta)), persistent=False)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits / self.temperature.to(logits), dim=1)
        own = log_p.gather(1, target[:, None]).squeeze(1)
        others = log1m_exp(log_p.clamp(max=LOG_P_MAX)).scatter(1, target[:, None], 0.0)
        return -(own + others.sum(dim=1))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, epsilon={self.epsilon:g}, eta={self.eta:g}"
