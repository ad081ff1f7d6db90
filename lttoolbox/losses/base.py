"""The loss contract: per-sample losses, swappable class weights and deferred re-weighting.

Every entry of ``LOSSES`` is an :class:`LTLoss`. A subclass implements only
:meth:`LTLoss.per_sample` (the unweighted loss of each sample); the base class adds the class
weights, the deferred switch-on of those weights (DRW, Cao et al. 2019, Sec. 3.3) and the batch
reductions, so every loss gets them in the same way:

* ``loss(logits, target)``: the weighted batch mean ``sum_i w_{y_i} l_i / normalizer``;
* ``loss(logits, target, reduction="none")``: ``w_{y_i} l_i`` per sample (shape ``(B,)``);
* ``loss.normalizer(target)``: ``sum_i w_{y_i}`` while weights are active (PyTorch's weighted
  cross-entropy convention), else the batch size. Entries that document batch-size normalisation
  (the sigmoid forms of the class-balanced loss) always use the batch size.

:func:`mixed_loss` combines the two targets of a mixed :class:`~lttoolbox.batch.Batch`.

Losses are computed in float32 (float64 inputs stay float64, for gradient checks) with autocast
switched off inside, so bf16/fp16 logits from an autocast region give a float32 loss.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..checks import check_epoch
from ..batch import Batch
from ..api import Component, Context, ModuleComponent
from ..epochs import UnreachableEpochWarning
from ..errors import ConfigError
from .weights import check_number, class_weights, weight_spec

REDUCTIONS = ("mean", "sum", "none")


def check_counts(class_counts: Any, num_classes: Any = None) -> np.ndarray | None:
    """Validate ``class_counts`` (and its agreement with ``num_classes``); float64 array or None.

    Raises:
        ConfigError: counts that are not a flat list of positive finite numbers, a class with no
            samples, or a length that differs from ``num_classes``.
    """
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(
            num_classes, (int, np.integer)) or num_classes < 1):
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if class_counts is None:
        return None
    if isinstance(class_counts, torch.Tensor):
        class_counts = class_counts.detach().cpu().numpy()
    try:
        counts = np.asarray(class_counts, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"class_counts must be a list of numbers, got {class_counts!r}") from None
    if counts.ndim != 1 or counts.size == 0:
        raise ConfigError(f"class_counts must be a non-empty flat list, got shape {counts.shape}")
    if not np.all(np.isfinite(counts)):
        raise ConfigError("class_counts must be finite")
    empty = np.flatnonzero(counts <= 0)
    if empty.size:
        c = int(empty[0])
        raise ConfigError(f"class_counts: class {c} has {counts[c]:g} samples; every class needs "
                          f"at least one training sample (re-weighting and margins divide by the "
                          f"count). Drop the empty class or fix the data.")
    if num_classes is not None and counts.size != num_classes:
        raise ConfigError(f"class_counts has {counts.size} entries but num_classes is "
                          f"{num_classes}; they must describe the same classes")
    return counts


class LTLoss(ModuleComponent):
    """Base of every loss: class weights, deferred re-weighting and reductions.

    A subclass declares only its own parameters and passes the rest up (``**base``): the
    class weights, their deferral and the context (see :class:`~lttoolbox.api.Context`).

    Args:
        weights: Class-weight scheme, ``{name: inverse | sqrt_inverse | effective_number |
            cost_sensitive, ...params}`` or ``None`` for no weights (see
            :mod:`lttoolbox.losses.weights`).
        weights_start_epoch: Deferred re-weighting (DRW): before this 0-based epoch every weight
            is 1; from it on the scheme's weights apply. ``0`` means always weighted.
        context: What the data and the run tell the loss (the trainer passes it). It reads
            ``class_counts`` (required when the loss uses counts, ``requires_counts``, or when
            ``weights`` is set), ``num_classes`` (checked against the counts and against the
            width of the logits) and ``total_epochs`` (only to warn about a DRW epoch that is
            never reached).
        class_counts, num_classes, total_epochs: Shorthands for standalone use
            (``LDAMLoss(class_counts=[500, 50, 5])``): these fields of the context.

    Attributes:
        class_weights: float32 buffer of shape ``(C,)`` or ``None``.
        batch_normalized: When true, the mean divides by the batch size even with weights.
        requires_counts: Class attribute; whether ``per_sample`` needs ``class_counts``.

    Example:
        >>> import torch
        >>> class Absolute(LTLoss):  # a toy loss: |1 - z_y|
        ...     def per_sample(self, logits, target):
        ...         return (1 - logits.gather(1, target[:, None]).squeeze(1)).abs()
        >>> loss = Absolute(class_counts=[3, 1], weights="inverse", weights_start_epoch=1)
        >>> z, y = torch.zeros(2, 2), torch.tensor([0, 1])
        >>> float(loss(z, y, reduction="none").sum()), loss.weights_active
        (2.0, False)
        >>> loss.set_epoch(1)
        >>> [round(float(v), 2) for v in loss(z, y, reduction="none")], float(loss(z, y))
        ([0.5, 1.5], 1.0)
    """

    requires_counts = False
    batch_normalized = False
    #: Some of its terms are computed from the logits but held constant for the gradient (a
    #: margin under ``torch.no_grad``): its gradient is then not the derivative of its value.
    stops_gradient = False
    #: Whether the batch's loss weighs each sample by something computed from the whole batch
    #: (and from earlier batches), as ABSGD's attention weights are: then the mean is not
    #: ``sum(reduction="none") / normalizer`` and :meth:`batch_loss` is the loss's own.
    batch_weighted = False

    def __init__(self, weights: dict | str | None = None, weights_start_epoch: int = 0, *,
                 context: Context | None = None, class_counts: Sequence[float] | None = None,
                 num_classes: int | None = None, total_epochs: int | None = None):
        nn.Module.__init__(self)
        weights_start_epoch = check_epoch("weights_start_epoch", weights_start_epoch)
        context = Context.given(context, class_counts=class_counts, num_classes=num_classes,
                                total_epochs=total_epochs)
        Component.__init__(self, start_epoch=weights_start_epoch, context=context)
        num_classes, total_epochs = context.num_classes, context.total_epochs
        name = self.registry_name or type(self).__name__
        counts = check_counts(context.class_counts, num_classes)
        spec = weight_spec(weights)
        if counts is None and (self.requires_counts or spec is not None):
            why = "class weights" if spec is not None else "its per-class terms"
            raise ConfigError(f"class_counts is required by loss '{name}' ({why}); the trainer "
                              f"passes it, outside the trainer build with class_counts=[...]")
        if spec is None and weights_start_epoch > 0:
            raise ConfigError("weights_start_epoch is set but the loss has no weights; add "
                              "weights: {name: effective_number, beta: 0.9999} (or drop it)")
        if (spec is not None and total_epochs is not None and weights_start_epoch > 0
                and weights_start_epoch >= total_epochs):
            warnings.warn(f"loss '{name}': weights_start_epoch={weights_start_epoch} is never "
                          f"reached in {total_epochs} epochs, so the weights never switch on",
                          UnreachableEpochWarning, stacklevel=2)
        self.counts = counts
        self.num_classes = int(counts.size) if counts is not None else num_classes
        self.weights_spec = spec
        self.weights_start_epoch = weights_start_epoch
        self.register_buffer("class_weights", None if spec is None
                             else class_weights(spec, counts), persistent=False)

    # ---------------------------------------------------------------- to be implemented
    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Unweighted loss of each sample, shape ``(B,)``; ``logits`` are float32 or float64."""
        raise NotImplementedError

    # ---------------------------------------------------------------- weights and reductions
    @property
    def weights_active(self) -> bool:
        """Whether class weights apply in the current epoch (DRW switch)."""
        return self.class_weights is not None and self.active

    def current_weights(self) -> torch.Tensor | None:
        """The per-class weights in force this epoch, or ``None`` when all weights are 1."""
        return self.class_weights if self.weights_active else None

    def sample_weights(self, target: torch.Tensor) -> torch.Tensor | None:
        """``w_{y_i}`` for each sample, or ``None`` when unweighted this epoch."""
        w = self.current_weights()
        return None if w is None else w.to(target.device)[target]

    def normalizer(self, target: torch.Tensor) -> torch.Tensor:
        """Denominator of the batch mean: the sum of the targets' weights, or the batch size."""
        w = None if self.batch_normalized else self.sample_weights(target)
        if w is None:
            return torch.full((), float(target.shape[0]), device=target.device)
        return w.sum()

    def _check(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if logits.dim() != 2:
            raise ValueError(f"logits must have shape (batch, classes), got {tuple(logits.shape)}")
        if target.dim() != 1 or target.shape[0] != logits.shape[0]:
            raise ValueError(f"target must have shape ({logits.shape[0]},), "
                             f"got {tuple(target.shape)}")
        if self.num_classes is not None and logits.shape[1] != self.num_classes:
            what = "class_counts has" if self.counts is not None else "num_classes is"
            raise ConfigError(f"the logits have {logits.shape[1]} classes but {what} "
                              f"{self.num_classes}; the model head and the loss disagree")

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                reduction: str = "mean") -> torch.Tensor:
        """Weighted loss.

        Args:
            logits: ``(B, C)`` scores, any floating dtype (computed in float32).
            target: ``(B,)`` class indices.
            reduction: ``"mean"`` (sum over normalizer), ``"sum"`` or ``"none"`` (per sample).
        """
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self._check(logits, target)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
            loss = self.per_sample(z, target)
            w = self.sample_weights(target)
            if w is not None:
                loss = loss * w
            if reduction == "none":
                return loss
            if reduction == "sum":
                return loss.sum()
            return loss.sum() / self.normalizer(target)

    def batch_loss(self, logits: torch.Tensor, batch: Batch,
                   normalize: Callable[[torch.Tensor], torch.Tensor] | None = None
                   ) -> torch.Tensor:
        """The loss of a possibly mixed batch, as :func:`mixed_loss` describes it.

        This is the training step's objective. A loss whose batch reduction is not a weighted
        mean of per-sample values (``batch_weighted``) overrides it.
        """
        if not batch.mixed:
            if normalize is None:
                return self(logits, batch.y_a)
            return self(logits, batch.y_a, reduction="sum") / normalize(
                self.normalizer(batch.y_a).reshape(1))[0]
        lam = batch.lam.float()
        norms = torch.stack([self.normalizer(batch.y_a), self.normalizer(batch.y_b)])
        if normalize is not None:
            norms = normalize(norms)
        part_a = (lam * self(logits, batch.y_a, reduction="none")).sum() / norms[0]
        part_b = ((1 - lam) * self(logits, batch.y_b, reduction="none")).sum() / norms[1]
        return part_a + part_b

    def extra_repr(self) -> str:
        parts = [f"num_classes={self.num_classes}"]
        if self.weights_spec is not None:
            parts.append(f"weights={self.weights_spec}")
            if self.weights_start_epoch:
                parts.append(f"weights_start_epoch={self.weights_start_epoch}")
        return ", ".join(parts)


def mixed_loss(loss: LTLoss, logits: torch.Tensor, batch: Batch,
               normalize: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Loss of a possibly mixed batch: each target's weighted mean, mixed by ``lam`` per sample.

    ``sum(lam * l(y_a)) / normalizer(y_a) + sum((1 - lam) * l(y_b)) / normalizer(y_b)``, which is
    ``lam * L(y_a) + (1 - lam) * L(y_b)`` when ``lam`` is one number for the whole batch (the mixup
    papers' form). An unmixed batch (``not batch.mixed``, an identity test with no device sync)
    is just ``loss(logits, batch.y_a)``. It is :meth:`LTLoss.batch_loss`, which a loss whose
    batch reduction is its own (``batch_weighted``, such as ``absgd``) overrides.

    Args:
        loss, logits, batch: The criterion, the logits and the batch they score.
        normalize: Maps the normalizers of this batch (a tensor of one or two) to the ones to
            divide by. Training across processes passes :func:`~lttoolbox.engine.distributed.
            global_normalizer`'s: the sum over the processes divided by their number, so that
            DDP's mean of the processes' gradients is the gradient of the global batch's weighted
            mean, ``sum_i w_i l_i / sum_i w_i`` over every process's samples, which one process
            computes; dividing by each process's own ``sum w`` would weigh a process whose
            batch has few heavily weighted (rare) samples more than its share.

    Example:
        >>> import torch
        >>> from lttoolbox.losses import CELoss
        >>> ce = CELoss(num_classes=3)
        >>> z, y = torch.zeros(2, 3), torch.tensor([0, 1])
        >>> round(float(mixed_loss(ce, z, Batch.plain(z, y))), 4)  # log 3
        1.0986
    """
    return loss.batch_loss(logits, batch, normalize)


def as_float_tensor(values: np.ndarray) -> torch.Tensor:
    """A float32 tensor for a per-class buffer."""
    return torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=torch.float32)


__all__ = ["LTLoss", "mixed_loss", "check_counts", "check_epoch", "check_number", "REDUCTIONS"]
