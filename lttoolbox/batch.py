"""The two-target batch every augmentation and generator speaks.

A mixing augmentation turns ``(x, y)`` into ``(x, y_a, y_b, lam)``: each sample's loss is
``lam * L(out, y_a) + (1 - lam) * L(out, y_b)`` with ``lam`` per sample. An unmixed batch is the
special case ``y_b = y_a`` and ``lam = 1``, so the trainer needs no branch for it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class Batch:
    """A training batch in the mixing contract.

    Attributes:
        x: Inputs (or, inside a model hook, the activations at that model point).
        y_a: First target of each sample, shape ``(B,)``.
        y_b: Second target of each sample, shape ``(B,)``; the same tensor as ``y_a`` when unmixed.
        lam: Weight of ``y_a`` per sample, shape ``(B,)``, float.
        index: The training-set index of each sample as the sampler drew it (a CPU tensor), so a
            component can fetch another view of the same images; ``None`` where unknown. It
            describes the batch as it enters the step: a hook that adds samples inside the model
            leaves it as it was.
        streams: How many input streams the rows hold (1: an ordinary batch). A component that
            trains the branches of a :class:`~lttoolbox.api.Branched` model on separate streams
            stacks them as equal blocks of rows and sets 2; the model routes block ``k`` through
            branch ``k``.
    """

    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: torch.Tensor
    index: torch.Tensor | None = None
    streams: int = 1

    @classmethod
    def plain(cls, x: torch.Tensor, y: torch.Tensor,
              index: torch.Tensor | None = None) -> "Batch":
        """An unmixed batch: ``y_b is y_a`` and ``lam == 1``."""
        return cls(x, y, y, torch.ones(y.shape[0], device=y.device, dtype=torch.float32), index)

    @property
    def mixed(self) -> bool:
        """False only for a batch built by :meth:`plain` and left unmixed (an identity test,
        so it costs no device synchronization)."""
        return self.y_b is not self.y_a

    def replace(self, **changes) -> "Batch":
        """A copy with some fields changed."""
        return replace(self, **changes)
