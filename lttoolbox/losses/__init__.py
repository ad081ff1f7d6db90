"""Losses (registry ``LOSSES``, recipe section ``loss``).

Entries: ``ce``, ``cs_ce``, ``focal``, ``sigmoid_focal``, ``cb``, ``ldam``, ``am_softmax``,
``balanced_softmax``, ``cdt``, ``las``, ``vs``, ``autobalance`` (whose per-class adjustments a
hypergradient on the validation split learns), ``ot_reweight`` (per-example weights learned by
optimal transport to a balanced meta set), and ``absgd``, which wraps any of the others.
Every entry is an :class:`LTLoss`: ``loss(logits, target)`` is the weighted batch mean,
``reduction="none"`` gives one value per sample, class weights (``weights: {name: inverse |
sqrt_inverse | effective_number | cost_sensitive, ...}``) are a swappable part of every loss and
``weights_start_epoch`` defers them (DRW). :func:`mixed_loss` combines the two targets of a mixed
batch. Importing this package registers every entry; see
``docs/losses.md``.
"""
from .weights import WEIGHT_SCHEMES, class_weights, register_scheme
from .base import LTLoss, mixed_loss
from .ce import CELoss, CostSensitiveCELoss
from .focal import FocalLoss, SigmoidFocalLoss, sigmoid_focal, softmax_focal
from .class_balanced import ClassBalancedLoss
from .margin import AMSoftmaxLoss, LDAMLoss
from .logit_adjust import BalancedSoftmaxLoss, CDTLoss
from .smoothing import LabelAwareSmoothingLoss

__all__ = [
    "WEIGHT_SCHEMES", "class_weights", "register_scheme",
    "LTLoss", "mixed_loss",
    "CELoss", "CostSensitiveCELoss",
    "FocalLoss", "SigmoidFocalLoss", "sigmoid_focal", "softmax_focal",
    "ClassBalancedLoss",
    "AMSoftmaxLoss", "LDAMLoss",
    "BalancedSoftmaxLoss", "CDTLoss",
    "LabelAwareSmoothingLoss",
]

# Every module of the package, so that a new entry file registers without being listed here.
from ..registry import import_submodules  # noqa: E402

import_submodules(__name__)
