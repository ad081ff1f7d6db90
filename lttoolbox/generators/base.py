"""What every feature-level sample generator shares.

A generator is a model hook that acts at one named model point during training only. It receives
the activations at that point ``h`` (feature maps ``(B, C, H, W)``, or vectors ``(B, D)`` at
``features``) and the batch, and returns the batch extended with generated rare-class samples and
their labels; the network continues on the extended batch, so the classification loss covers
the real and the generated samples alike. Its own losses are returned by
:meth:`FeatureGenerator.auxiliary_loss` (already weighted), which the trainer adds.

At evaluation and export time the model is the plain backbone: the trainer hooks a generator only
into training steps, its parameters live outside the model (the exported checkpoint has none) and,
in eval mode, a generator called anyway returns its input unchanged.

Shared conventions (see docs/generators.md):

* **Frequent and rare classes** are decided by training counts, never by class index: the
  ``frequent_fraction`` (``alpha``) most frequent classes are frequent (ties broken by class
  index), every other class is rare. By default ``alpha`` is 0.2, or 0.5 when the data set says
  its imbalance is a step profile, as in the RSG paper (and its code's default 0.2).
* **How many samples** a batch gains is RSG's rule for every generator, so that their comparison
  is like for like: with ``s_freq`` frequent and ``s_rare`` rare samples in the batch,
  ``s_new = max(floor(beta * s_freq / s_rare), 1) * s_rare`` (``beta``: ``transfer_strength``;
  by default 1.0, or 0.01 for a step profile, the paper's values).
  New sample ``i`` takes rare sample ``i mod s_rare`` as its seed (and label) and frequent
  sample ``i mod s_freq`` as its source of variation. Nothing is generated when either side is
  missing from the batch.
* Generators need each sample's single class before their point: a mixing augmentation may act
  after a generator's point, or in other epochs, never before it in the same epoch (the trainer
  refuses that recipe before training).

Deciding which samples are frequent and how many to generate reads two counts from the device,
one host synchronisation per training step while a generator generates; the shapes of the
extended batch depend on them.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..batch import Batch
from ..api import Component, Context, ModuleComponent
from ..epochs import UnreachableEpochWarning
from ..errors import ConfigError
from ..checks import check_epoch
from ..losses.base import check_counts
from ..losses.weights import check_number


def frequent_classes(class_counts: Sequence[float], fraction: float) -> np.ndarray:
    """Indices of the ``fraction`` most frequent classes by count (at least one, never all).

    The number is ``floor(fraction * C)`` clamped to ``[1, C - 1]`` (the RSG code takes
    ``int(num_classes * head_tail_ratio)`` classes); ties in count go to the lower class index.

    Example:
        >>> frequent_classes([5, 500, 50, 5000], 0.5).tolist()
        [1, 3]
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    n = min(len(counts) - 1, max(1, int(math.floor(fraction * len(counts) + 1e-9))))
    order = np.argsort(-counts, kind="stable")
    return np.sort(order[:n])


def generation_count(s_freq: int, s_rare: int, strength: float) -> int:
    """RSG's number of new samples in a batch: ``max(floor(beta s_freq / s_rare), 1) s_rare``.

    Zero when the batch has no rare sample. (A tiny tolerance keeps ``floor`` from losing a whole
    multiple to floating-point error, e.g. ``0.1 * 30 / 3``.)

    Example:
        >>> [generation_count(100, 28, 1.0), generation_count(100, 28, 0.01),
        ...  generation_count(3, 8, 1.0)]
        [84, 28, 8]
    """
    if s_rare <= 0:
        return 0
    return max(int(math.floor(strength * s_freq / s_rare + 1e-9)), 1) * s_rare


def default_point(point_names: Sequence[str] | None) -> str:
    """The point two before ``features``: the input of the last down-sampling group of blocks of
    the CIFAR ResNets (``layer2`` of ResNet-32, the 32-channel 16x16 maps where RSG's code
    attaches); ``layer2`` when the model's points are not known (a generator built alone)."""
    if not point_names:
        return "layer2"
    if len(point_names) < 3:
        raise ConfigError(f"the model has no point before its last one to attach at (points: "
                          f"{', '.join(point_names)})", key="point")
    return point_names[-3]


def as_maps(h: torch.Tensor) -> torch.Tensor:
    """Activations as ``(B, C, H, W)``: vectors ``(B, D)`` become ``(B, D, 1, 1)``."""
    if h.dim() == 2:
        return h[:, :, None, None]
    if h.dim() != 4:
        raise ConfigError(f"a generator takes feature maps (B, C, H, W) or vectors (B, D), got "
                          f"shape {tuple(h.shape)}")
    return h


class FeatureGenerator(ModuleComponent):
    """Base of the generators: attachment, frequent/rare split, batch extension, losses.

    A subclass declares only its own parameters and passes the rest up (``**base``).

    Args:
        point: The model point to attach at; default: the point two before ``features``
            (:func:`default_point`).
        feature_shape: ``(C, H, W)`` (or ``(D,)``) of the activations at ``point``; the trainer
            passes every point's shape instead (``point_shapes``).
        frequent_fraction: ``alpha``, the fraction of classes that are frequent (0 < alpha < 1);
            ``None``: 0.2, or 0.5 when ``imbalance_type`` is ``step``.
        transfer_strength: ``beta`` of :func:`generation_count` (> 0); ``None``: 1.0, or 0.01
            when ``imbalance_type`` is ``step``.
        start_epoch, end_epoch: The epochs ``[start, end)`` in which the generator acts at all.
        context: What the data and the run tell the generator (the trainer passes it). It reads
            ``class_counts`` (required) and ``num_classes``, ``point_names`` and
            ``point_shapes`` (the model's points and their shapes), ``imbalance_type`` (the data
            set's profile: ``exp``, ``step`` or None) and ``total_epochs``.
        num_classes, class_counts, point_names, point_shapes, imbalance_type, total_epochs:
            Shorthands for these fields of the context (standalone use:
            ``RSG(num_classes=10, class_counts=counts, feature_shape=(32, 16, 16))``).

    Subclasses implement :meth:`generate`.
    """

    generates = True  # extends the batch; needs single-class targets up to its point
    adds_loss = True  # its own losses, weighted (None on a step that adds none)

    def __init__(self, point: str | None = None, feature_shape: Sequence[int] | None = None,
                 frequent_fraction: float | None = None, transfer_strength: float | None = None,
                 start_epoch: int = 0, end_epoch: int | None = None, *,
                 context: Context | None = None, num_classes: int | None = None,
                 class_counts: Sequence[float] | None = None,
                 point_names: Sequence[str] | None = None, point_shapes: dict | None = None,
                 imbalance_type: str | None = None, total_epochs: int | None = None):
        nn.Module.__init__(self)
        context = Context.given(context, num_classes=num_classes, class_counts=class_counts,
                                point_names=point_names, point_shapes=point_shapes,
                                imbalance_type=imbalance_type, total_epochs=total_epochs)
        Component.__init__(self, check_epoch("start_epoch", start_epoch),
                            None if end_epoch is None else check_epoch("end_epoch", end_epoch),
                            context=context)
        # an empty field is one the context does not know (standalone use)
        point_names, point_shapes = context.point_names, context.point_shapes or None
        counts = check_counts(context.class_counts, context.num_classes)
        if counts is None:
            raise ConfigError("class_counts is required (the trainer passes it)",
                              key="class_counts")
        if len(counts) < 2:
            raise ConfigError("a generator needs at least two classes (frequent and rare)",
                              key="class_counts")
        self.num_classes = len(counts)
        self.point = point if point is not None else default_point(point_names)
        if not isinstance(self.point, str) or not self.point:
            raise ConfigError(f"must be a model point name, got {self.point!r}", key="point")
        self.feature_shape = self._shape(feature_shape, point_shapes)
        step = context.imbalance_type == "step"
        if frequent_fraction is None:
            frequent_fraction = 0.5 if step else 0.2
        if transfer_strength is None:
            transfer_strength = 0.01 if step else 1.0
        self.frequent_fraction = check_number("frequent_fraction", frequent_fraction, 0.0, 1.0,
                                              low_open=True, high_open=True)
        self.transfer_strength = check_number("transfer_strength", transfer_strength, 0.0,
                                              low_open=True)
        frequent = torch.zeros(self.num_classes, dtype=torch.bool)
        frequent[torch.as_tensor(frequent_classes(counts, self.frequent_fraction))] = True
        # Derived from the data, so not part of the saved state.
        self.register_buffer("is_frequent", frequent, persistent=False)
        self._aux: torch.Tensor | None = None
        self.last_generated = 0  # samples added to the last batch (for tests and inspection)

    def _shape(self, feature_shape, point_shapes) -> tuple[int, int, int]:
        measured = None
        if point_shapes is not None:
            if self.point not in point_shapes:
                return (1, 1, 1)  # the trainer names an unknown point itself, with the points
            measured = self._check_shape(point_shapes[self.point])
        if feature_shape is None:
            if measured is None:
                raise ConfigError("is required outside the trainer: the (C, H, W) of the "
                                  "activations at the generator's point", key="feature_shape")
            return measured
        shape = self._check_shape(feature_shape)
        if measured is not None and shape != measured:
            raise ConfigError(f"{list(feature_shape)} does not match the activations at point "
                              f"'{self.point}', {list(measured)}; leave it out in a recipe (the "
                              f"trainer measures it)", key="feature_shape")
        return shape

    @staticmethod
    def _check_shape(value) -> tuple[int, int, int]:
        """``(C, H, W)`` from ``(C, H, W)`` or ``(D,)`` (features: ``(D, 1, 1)``)."""
        shape = tuple(value) if isinstance(value, (list, tuple)) else ()
        if len(shape) == 1:
            shape = (shape[0], 1, 1)
        if len(shape) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                  or v < 1 for v in shape):
            raise ConfigError(f"must be (C, H, W) or (D,) of positive integers, got {value!r}",
                              key="feature_shape")
        return tuple(int(v) for v in shape)

    # --------------------------------------------------------------------------- the hook contract
    def forward(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
        """Extend the batch with generated samples (training, inside the window), else identity."""
        self._aux = None
        self.last_generated = 0
        if not self.training or not self.active:
            return h, batch
        if batch.mixed:
            raise ConfigError(f"{type(self).__name__} needs each sample's single class, but the "
                              f"batch was mixed before point '{self.point}'; mix after the "
                              f"generator's point or in other epochs")
        maps = as_maps(h)
        new, labels, aux = self.generate(maps, batch.y_a)
        self._aux = aux
        if new is None or labels.numel() == 0:
            return h, batch
        if h.dim() == 2:
            new = new.flatten(1)
        new = new.to(h.dtype)
        if h.dim() == 4 and h.is_contiguous(memory_format=torch.channels_last):
            new = new.contiguous(memory_format=torch.channels_last)
        extended = torch.cat([h, new])
        self.last_generated = int(labels.numel())
        return extended, Batch.plain(extended, torch.cat([batch.y_a, labels]))

    def generate(self, maps: torch.Tensor, y: torch.Tensor
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Return ``(new maps (S, C, H, W), their labels (S,), weighted auxiliary loss)``; any may
        be ``None`` (nothing generated, no loss this step)."""
        raise NotImplementedError

    def points(self) -> tuple[str, ...]:
        return (self.point,)

    def auxiliary_loss(self) -> torch.Tensor | None:
        """The weighted losses of the last forward (once; ``None`` if it added none)."""
        out, self._aux = self._aux, None
        return out

    def frozen_parameters(self) -> list:
        """Parameters the optimizer must leave unchanged in the current epoch (the trainer
        withholds their gradients from the step); none by default."""
        return []

    # ----------------------------------------------------------------------------------- helpers
    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch positions of the frequent-class and of the rare-class samples."""
        frequent = self.is_frequent.to(y.device)[y]
        return frequent.nonzero().squeeze(1), (~frequent).nonzero().squeeze(1)

    def pairing(self, frequent: torch.Tensor, rare: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """For each new sample, its frequent source and its rare seed (batch positions)."""
        total = generation_count(int(frequent.numel()), int(rare.numel()),
                                 self.transfer_strength)
        i = torch.arange(total, device=rare.device)
        source = frequent[i % frequent.numel()] if frequent.numel() else frequent[:0]
        return source, rare[i % max(1, rare.numel())]

    @staticmethod
    def warn_unreachable(key: str, value: int, total_epochs: int | None) -> None:
        if total_epochs is not None and 0 < value and value >= total_epochs:
            warnings.warn(f"{key}={value} is never reached in a run of {total_epochs} epochs",
                          UnreachableEpochWarning, stacklevel=3)
