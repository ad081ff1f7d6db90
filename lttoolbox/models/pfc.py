"""The ``pfc`` head: the classifier of the distribution-balanced loss's VOC-MLT and COCO-MLT
models, a projection to a narrow embedding before the linear classifier.

Wu et al., "Distribution-Balanced Loss for Multi-Label Classification in Long-Tailed Datasets",
ECCV 2020; official code wutong16/DistributionBalancedLoss at commit
``14460d0acda6a3e77a8a6a5999b9746243cb1535``: the neck ``PFC`` (``mllt/models/necks/pfc.py``)
followed by ``ClsHead`` (``mllt/models/heads/cls_head.py``), as both configurations build them
(``configs/voc/LT_resnet50_pfc_DB.py:12-21``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..api import Head
from ..checks import check_int, check_number
from ..registry import HEADS


@HEADS.register("pfc")
class PFCHead(nn.Module, Head):
    """``logits = W_2 dropout(BN(W_1 f + b_1)) + b_2``: pooled features to a ``hidden``-wide
    embedding, batch-normalised, dropped out, then a linear classifier.

    As the official ``PFC`` neck with its configured ``layers=1``, ``relu=False`` (no
    non-linearity: ``pfc.py:34-52``) and ``ClsHead``: ``W_1`` is initialised with
    ``kaiming_normal_(mode='fan_out')``, ``b_1 = 0``, the BatchNorm with weight 1 and bias 0
    (``pfc.py:27-31``); ``W_2 ~ N(0, 0.01^2)``, ``b_2 = 0`` (``cls_head.py:33-35``). The
    configurations use ``hidden = 256`` and dropout 0.5 (``LT_resnet50_pfc_DB.py:12-16``). The
    neck's unused ``fc_hidden_1`` (only for ``layers=2``) is not built.

    Recipe::

        model: {name: resnet50, head: {name: pfc, hidden: 256, dropout: 0.5}}

    Args:
        in_features: Width of the pooled features (2048 for ResNet-50).
        num_classes: Number of logits.
        hidden: Width of the embedding.
        dropout: Dropout probability in ``[0, 1)`` (``0``: none).

    Example:
        >>> head = PFCHead(64, 5, hidden=16)
        >>> head(torch.randn(4, 64)).shape, float(head.classifier.bias.abs().sum())
        (torch.Size([4, 5]), 0.0)
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256,
                 dropout: float = 0.5):
        super().__init__()
        self.hidden = check_int("hidden", hidden, minimum=1)
        self.dropout = check_number("dropout", dropout, 0.0, 1.0, high_open=True)
        self.embed = nn.Linear(in_features, self.hidden)
        self.bn = nn.BatchNorm1d(self.hidden)
        self.drop = nn.Dropout(self.dropout) if self.dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(self.hidden, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.embed.weight, mode="fan_out")
        nn.init.zeros_(self.embed.bias)
        self.bn.reset_parameters()  # weight 1, bias 0, fresh running statistics
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.drop(self.bn(self.embed(features))))
