"""Label-aware smoothing (``las``): Zhong et al., "Improving Calibration for Long-Tailed
Recognition" (MiSLAS), CVPR 2021, Sec. 3.2."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import LOSSES, suggest
from .base import LTLoss, as_float_tensor
from .weights import check_number

SHAPES = ("concave", "linear", "convex")


def smoothing_factors(counts: np.ndarray, smooth_head: float, smooth_tail: float,
                      shape: str) -> np.ndarray:
    """Per-class smoothing ``eps_c = f(n_c)`` rising from ``smooth_tail`` at the rarest class to
    ``smooth_head`` at the most frequent one.

    With ``r = (n_c - n_min) / (n_max - n_min)``:
    ``concave``: ``tail + (head - tail) sin(pi r / 2)``; ``linear``: ``tail + (head - tail) r``;
    ``convex``: ``head + (head - tail) sin(3 pi / 2 + pi r / 2)``. When every class has the same
    count, every class gets ``smooth_head``.
    """
    spread = counts.max() - counts.min()
    if spread == 0:
        return np.full_like(counts, smooth_head)
    r = (counts - counts.min()) / spread
    gap = smooth_head - smooth_tail
    if shape == "concave":
        return smooth_tail + gap * np.sin(math.pi * r / 2)
    if shape == "linear":
        return smooth_tail + gap * r
    return smooth_head + gap * np.sin(1.5 * math.pi + math.pi * r / 2)


@LOSSES.register("las")
class LabelAwareSmoothingLoss(LTLoss):
    """Cross-entropy with label-aware smoothing (MiSLAS, Zhong et al., CVPR 2021, Sec. 3.2).

    The target distribution of a sample of class ``y`` is ``q_y = 1 - eps_y`` and
    ``q_i = eps_y / (K - 1)`` for ``i != y``, where ``eps_y = f(n_y)`` grows with the class size
    (head classes are smoothed more, since they are the over-confident ones); ``f`` is concave,
    linear or convex between ``smooth_tail`` (rarest class) and ``smooth_head`` (most frequent), see
    :func:`smoothing_factors`. ``l = -sum_i q_i log softmax(z)_i``.

    Deviation: the MiSLAS code spreads ``eps_y`` uniformly over all ``K`` classes, the target
    included (``(1 - eps) CE + eps * mean_i(-log p_i)``); this follows the paper's ``K - 1``. MiSLAS
    uses the loss in its classifier re-training phase; here it is a plain loss that a recipe may
    use in any phase.

    Args:
        smooth_head: ``eps`` of the most frequent class, in ``[0, 1)`` (MiSLAS CIFAR-10-LT: 0.3,
            CIFAR-100-LT: 0.4).
        smooth_tail: ``eps`` of the rarest class, in ``[0, 1)`` (0.0 and 0.1).
        shape: ``concave`` (MiSLAS default), ``linear`` or ``convex``.
        **base: ``weights``, ``weights_start_epoch`` and the context, whose ``class_counts``
            are required (shorthand: ``class_counts=[...]``): see
            :class:`~lttoolbox.losses.base.LTLoss`.

    Example:
        >>> loss = LabelAwareSmoothingLoss(0.4, 0.1, "linear", class_counts=[101, 51, 1])
        >>> [round(float(e), 3) for e in loss.smoothing]
        [0.4, 0.25, 0.1]
    """

    requires_counts = True

    def __init__(self, smooth_head: float = 0.3, smooth_tail: float = 0.0, shape: str = "concave",
                 **base: Any):
        smooth_head = check_number("smooth_head", smooth_head, 0.0, 1.0, high_open=True)
        smooth_tail = check_number("smooth_tail", smooth_tail, 0.0, 1.0, high_open=True)
        if shape not in SHAPES:
            raise ConfigError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}"
                              f"{suggest(str(shape), SHAPES)}")
        super().__init__(**base)
        if self.counts.size < 2:
            raise ConfigError("class_counts: label-aware smoothing needs at least two classes")
        self.smooth_head, self.smooth_tail, self.shape = smooth_head, smooth_tail, shape
        eps = smoothing_factors(self.counts, smooth_head, smooth_tail, shape)
        self.register_buffer("smoothing", as_float_tensor(eps), persistent=False)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1)
        is_target = F.one_hot(target, logits.shape[1]).bool()
        nll = -log_p.gather(1, target[:, None]).squeeze(1)
        rest = -log_p.masked_fill(is_target, 0.0).sum(dim=1)
        eps = self.smoothing.to(logits.device)[target].to(logits.dtype)
        return (1 - eps) * nll + eps / (logits.shape[1] - 1) * rest
