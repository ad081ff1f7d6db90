"""Margin calibration (MARC; Wang et al., "Margin Calibration for Long-Tailed Visual
Recognition", ACML 2022, arXiv:2112.07225): a post-hoc phase that keeps the trained classifier
fixed and learns two scalars per class, a scale of the logit and a shift proportional to the
class's weight norm.

The formula and its details are the official code's (microsoft/robustlearn at
31580cd195724d7e05f4fed4fdc4416f07dc02ff, ``marc/models/MARCClassifier.py`` lines 20-29): with the
previous phase's classifier ``W`` (rows ``w_j``) and bias ``c`` frozen and the feature ``f``,

    z_j  = <w_j, f> + c_j                      (line 27: the frozen ``nn.Linear``, bias included)
    z'_j = a_j * z_j + b_j * ||w_j||_2         (line 29; the norm of the weight row, line 28)

with ``a`` initialised to 1 and ``b`` to 0 (lines 21-22), so the calibrated classifier starts as
the trained one exactly; only ``a`` and ``b`` are trained, and evaluation uses ``z'``. The
paper's own equation could not be read here (only its abstract was reachable), so no equation
number is cited.

``follows``: a linear head, an LWS head (its scaled form ``s_j (<w_j, f> + c_j)`` is a linear
classifier) or a MARC head (its calibrated form ``a_j <w_j, f> + a_j c_j + b_j ||w_j||`` is one
too), so MARC composes after any first phase with a linear classifier and can be chained. The
cosine head (LDAM's) and tau-norm are refused (before training, naming ``model.head``): their
row norms are constant (1 for a cosine head, ``||w_j||^(1 - tau)`` with tau 1 for tau-norm, which
``tau: auto`` may choose), so ``b_j ||w_j||`` would be a plain per-class bias, not MARC's margin.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..api import Head
from .decoupling import LWSHead, _take_over
from .heads import HEADS


@HEADS.register("marc")
class MARCHead(nn.Module, Head):
    """Margin calibration (Wang et al., ACML 2022): ``z'_j = a_j (<w_j, f> + c_j) + b_j ||w_j||``.

    The previous classifier's weight ``w`` and bias ``c`` are taken over and stay fixed (buffers,
    never in the optimizer, as the official code computes them under ``torch.no_grad``); only
    ``a`` (from 1) and ``b`` (from 0), one of each per class, are trained. ``||w_j||`` is the
    Euclidean norm of the weight row without the bias, recomputed from the fixed rows.

    Recipe (a phase after any first phase with a linear head; ``configs/*/ce_marc.yaml``)::

        phases:
          - name: joint
          - name: marc
            model: {head: marc}
            loss: {name: cs_ce, gamma: 1.2}
            train: {epochs: 80, batch_size: 512, freeze: [backbone], freeze_bn_stats: true}

    Example:
        >>> import torch
        >>> from lttoolbox.models.heads import LinearHead
        >>> from lttoolbox.models.marc import MARCHead
        >>> old = LinearHead(2, 3)  # rows of norm 5, 1 and 2
        >>> with torch.no_grad():
        ...     _ = old.weight.copy_(torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]))
        ...     _ = old.bias.copy_(torch.tensor([0.0, 0.5, -1.0]))
        >>> head = MARCHead(2, 3)
        >>> head.adopt(old)  # W and c kept, fixed; a = 1, b = 0
        >>> [name for name, _ in head.named_parameters()]
        ['a', 'b']
        >>> head(torch.ones(1, 2)).tolist()  # the trained logits, bias included
        [[7.0, 1.5, 1.0]]
        >>> with torch.no_grad():
        ...     _ = head.a.copy_(torch.tensor([1.0, 1.5, 2.0]))
        ...     _ = head.b.copy_(torch.tensor([-0.2, 0.1, 0.5]))
        >>> [round(v, 4) for v in head(torch.ones(1, 2))[0].tolist()]  # 7 - 0.2 * 5, ...
        [6.0, 2.35, 3.0]
    """

    follows = ("linear", "lws", "marc")

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_classes, in_features))
        self.register_buffer("bias", torch.zeros(num_classes))
        self.a = nn.Parameter(torch.ones(num_classes))
        self.b = nn.Parameter(torch.zeros(num_classes))

    def adopt(self, previous: nn.Module) -> None:
        """Take over the previous phase's linear classifier (an LWS or MARC head: the linear
        classifier its trained scalars make, so a later calibration starts where it ended)."""
        with torch.no_grad():
            if isinstance(previous, LWSHead):
                self.weight.copy_(previous.weight * previous.scales[:, None])
                self.bias.copy_(previous.bias * previous.scales)
                return
            if isinstance(previous, MARCHead):
                self.weight.copy_(previous.weight * previous.a[:, None])
                self.bias.copy_(previous.bias * previous.a + previous.b * previous.norms())
                return
        _take_over(self, previous, "marc")

    def norms(self) -> torch.Tensor:
        """``||w_j||_2`` of every fixed weight row (the bias not included)."""
        return self.weight.norm(dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = F.linear(features, self.weight, self.bias)
        return self.a * logits + self.b * self.norms()
