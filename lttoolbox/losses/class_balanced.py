"""Class-balanced loss (``cb``): Cui et al., "Class-Balanced Loss Based on Effective Number of
Samples", CVPR 2019."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import LOSSES, suggest
from .base import LTLoss
from .focal import check_gamma, sigmoid_focal, softmax_focal
from .weights import check_number

BASES = ("ce", "focal", "sigmoid", "sigmoid_focal")
SIGMOID_BASES = ("sigmoid", "sigmoid_focal")
FOCAL_BASES = ("focal", "sigmoid_focal")


@LOSSES.register("cb")
class ClassBalancedLoss(LTLoss):
    """Class-balanced loss: a base loss weighted by the inverse effective number of samples.

    ``CB(z, y) = (1 - beta) / (1 - beta^n_y) * L(z, y)`` (Cui et al. 2019, Sec. 4), the effective
    number being ``E_n = (1 - beta^n) / (1 - beta)`` (Sec. 3); the weights are normalised to sum to
    the number of classes as in the paper. For CIFAR-10-LT ratio 100 and ``beta = 0.9999`` they are
    0.0506, 0.0769, 0.1211, 0.1950, 0.3188, 0.5246, 0.8683, 1.4426, 2.4092, 3.9927.

    Bases ``L``:

    * ``ce``: softmax cross-entropy (Sec. 4.1); ``focal``: softmax focal loss with ``gamma``.
      Batch mean ``sum w l / sum w`` (PyTorch's weighted-CE convention).
    * ``sigmoid``: one-vs-all sigmoid cross-entropy (Sec. 4.2); ``sigmoid_focal``: the sigmoid focal
      loss with ``gamma`` (Sec. 4.3, the paper's "CB focal"). Each sample's loss, summed over
      classes, is multiplied by its true class's weight and the batch sum is divided by the batch
      size, as in the paper's code.

    Deviation: the paper's TensorFlow code also divides the weighted softmax loss by the batch size;
    here the softmax bases follow the weighted-CE convention like every other softmax loss of the
    toolbox (the two differ by the batch's mean weight, a per-batch scale of the learning rate).

    The weights are the loss itself, so this entry takes no ``weights`` parameter;
    ``weights_start_epoch`` defers them (before it every weight is 1: the DRW form).

    Args:
        beta: Effective-number hyper-parameter in ``[0, 1)``; ``0`` gives no re-weighting.
        base: ``ce``, ``focal``, ``sigmoid`` or ``sigmoid_focal``.
        gamma: Focusing parameter ``>= 0`` of the focal bases (default 2.0); an error for the
            other bases.
        **base_parameters: ``weights_start_epoch`` (the epoch from which the class-balanced
            weights apply) and the context, whose ``class_counts`` are required: see
            :class:`~lttoolbox.losses.base.LTLoss`.

    Example:
        >>> loss = ClassBalancedLoss(beta=0.9999, base="sigmoid_focal", gamma=1.0,
        ...                          class_counts=[5000, 50])
        >>> [round(float(w), 4) for w in loss.class_weights]
        [0.025, 1.975]
    """

    fixed_parameters = ("weights",)  # the effective-number weights are the loss itself

    def __init__(self, beta: float = 0.9999, base: str = "ce", gamma: float | None = None,
                 **base_parameters: Any):
        beta = check_number("beta", beta, 0.0, 1.0, high_open=True)
        if base not in BASES:
            raise ConfigError(f"base must be one of {', '.join(BASES)}, got {base!r}"
                              f"{suggest(str(base), BASES)}")
        if gamma is not None and base not in FOCAL_BASES:
            raise ConfigError(f"gamma is used only by the focal bases ({', '.join(FOCAL_BASES)}); "
                              f"base is '{base}'")
        gamma = 2.0 if gamma is None else check_gamma(gamma)
        super().__init__(weights={"name": "effective_number", "beta": beta}, **base_parameters)
        self.beta, self.base, self.gamma = beta, base, gamma
        self.batch_normalized = base in SIGMOID_BASES

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.base == "ce":
            return F.cross_entropy(logits, target, reduction="none")
        if self.base == "focal":
            return softmax_focal(logits, target, self.gamma)
        return sigmoid_focal(logits, target, self.gamma if self.base == "sigmoid_focal" else 0.0)

    def extra_repr(self) -> str:
        return f"base={self.base}, beta={self.beta}, " + super().extra_repr()
