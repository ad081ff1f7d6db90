"""The maximum-margin (MM) loss: a per-sample hard margin that shifts the decision boundary."""
from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..registry import LOSSES
from .base import LTLoss, as_float_tensor
from .margin import MAX_COSINE_MARGIN, margin_cross_entropy
from .weights import check_number

VARIANTS = ("hmm", "hmm_ldam")


@LOSSES.register("mm")
class MaxMarginLoss(LTLoss):
    """Maximum-margin loss (Kang, Vu, Yoo, "Learning Imbalanced Datasets with Maximum Margin
    Loss", ICIP 2021, arXiv:2206.05380), as the official code's ``HMMLoss`` computes it
    (ihaeyong/Maximum-Margin-LDAM at e7ed20d, ``losses.py`` lines 48-126), per sample.

    On cosine logits ``z`` (``model: {head: cosine}``), for a sample of class ``y`` with
    ``p = z_y`` and ``q = max_{j != y} z_j``, ``d+ = max(p - q, 0)`` and ``d- = max(q - p, 0)``:

        m = 1[d+ > 0] exp(-d+ - gamma M_y) + 1[d- > 0] exp(-d- - M_y)
        l = CE(s (z - m e_y), y)

    with ``m`` a constant (no gradient flows through it, as in the code). A correctly classified
    sample's margin shrinks as its own margin ``d+`` grows; a misclassified one gets
    ``exp(-d- - M)``. The paper's two hard boundary shifts are the code's two loss types:
    ``variant: hmm`` (``M_y = max_m`` for every class) and ``variant: hmm_ldam``
    (``M_y = max_m - m_LDAM(y)``, LDAM's margin ``m_LDAM(c) = ldam_max_m n_c^{-1/4} /
    max_k n_k^{-1/4}``). With ``weights: {name: effective_number, beta: 0.9999}`` and
    ``weights_start_epoch: 160`` it follows LDAM's training schedule (DRW), as the paper does.

    Deviations from the official code (the paper's own equations could not be read here):

    * ``p`` is each sample's own target cosine; the code reads the column of the *first*
      sample's label for the whole batch (``losses.py`` line 86).
    * ``q`` is the largest cosine among the other classes; the code's masking writes 0 at the
      target's position before the maximum, so it uses ``max(0, q)`` (lines 84, 87).
    * LDAM's largest margin is the parameter ``ldam_max_m`` (code: 0.5, hard-coded, line 53).

    Args:
        max_m: ``M >= 0``, the margin parameter inside the exponentials (code default 0.5).
        gamma: ``>= 0``, how much faster a correct sample's margin decays (code default 10).
        s: Logit scale, ``> 0`` (code default 30).
        variant: ``hmm`` or ``hmm_ldam``.
        ldam_max_m: LDAM's largest margin for ``hmm_ldam``, in ``(0, 2)``; ``max_m`` must be at
            least this large, so that ``M_y >= 0``.
        **base: ``weights``, ``weights_start_epoch`` and the context, whose ``class_counts``
            ``hmm_ldam`` requires (shorthand: ``class_counts=[...]``): see
            :class:`~lttoolbox.losses.base.LTLoss`.

    Example:
        >>> import torch
        >>> loss = MaxMarginLoss(max_m=0.5, gamma=2.0, s=10.0, num_classes=3)
        >>> z = torch.tensor([[0.8, 0.3, -0.2], [0.1, 0.4, 0.6]])
        >>> round(float(loss(z, torch.tensor([0, 1]))), 6)  # margins e^-1.5 and e^-0.7
        3.517378
    """

    stops_gradient = True  # the margin m is a constant for the gradient, as in the code

    def __init__(self, max_m: float = 0.5, gamma: float = 10.0, s: float = 30.0,
                 variant: str = "hmm", ldam_max_m: float = 0.5, **base: Any):
        max_m = check_number("max_m", max_m, 0.0)
        gamma = check_number("gamma", gamma, 0.0)
        s = check_number("s", s, 0.0, low_open=True)
        ldam_max_m = check_number("ldam_max_m", ldam_max_m, 0.0, MAX_COSINE_MARGIN,
                                  low_open=True, high_open=True)
        if variant not in VARIANTS:
            raise ConfigError(f"must be one of {', '.join(VARIANTS)}, got {variant!r}",
                              key="variant")
        if variant == "hmm_ldam" and max_m < ldam_max_m:
            raise ConfigError(f"must be at least ldam_max_m ({ldam_max_m}) with variant hmm_ldam, "
                              f"so that max_m - m_LDAM(y) >= 0 for every class; got {max_m}",
                              key="max_m")
        super().__init__(**base)
        if variant == "hmm_ldam" and self.counts is None:
            raise ConfigError("class_counts is required by loss 'mm' with variant hmm_ldam "
                              "(LDAM's per-class margins); the trainer passes it, outside the "
                              "trainer build with class_counts=[...]")
        self.max_m, self.gamma, self.s, self.variant = max_m, gamma, s, variant
        self.ldam_max_m = ldam_max_m
        if variant == "hmm_ldam":
            quarter = self.counts ** -0.25
            inner = max_m - quarter * (ldam_max_m / quarter.max())
        else:
            inner = None
        # M_y per class (hmm: one value for all)
        self.register_buffer("inner_margins", None if inner is None else as_float_tensor(inner),
                             persistent=False)

    def sample_margins(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Each sample's margin ``m`` (``(B,)``, no gradient)."""
        with torch.no_grad():
            p = logits.gather(1, target[:, None]).squeeze(1)
            others = logits.masked_fill(
                torch.nn.functional.one_hot(target, logits.shape[1]).bool(), float("-inf"))
            q = others.max(dim=1).values
            big = (self.max_m if self.inner_margins is None
                   else self.inner_margins.to(logits.device)[target])
            ahead, behind = (p - q).clamp_min(0), (q - p).clamp_min(0)
            return (torch.exp(-ahead - self.gamma * big) * (ahead > 0)
                    + torch.exp(-behind - big) * (behind > 0))

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return margin_cross_entropy(logits, target, self.sample_margins(logits, target), self.s)

    def extra_repr(self) -> str:
        return (f"variant={self.variant}, max_m={self.max_m}, gamma={self.gamma}, s={self.s}, "
                + super().extra_repr())
