"""The two-target batch every augmentation and generator speaks.

A mixing augmentation turns ``(x, y)`` into ``(x, y_a, y_b, lam)``: each sample's loss is
``lam * L(out, y_a) + (1 - lam) * L(out, y_b)`` with ``lam`` per sample. An unmixed batch is the
special case ``y_b = y_a`` and ``lam = 1``, so the trainer needs no branch for it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

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
        synthetic: Which samples are not training images, shape ``(B,)``, bool, on the batch's
            device: ``True`` for an input a component made up in place of the drawn image (a
            pure-noise image, :mod:`lttoolbox.augment.pure_noise`), whose label is kept. A layer
            that treats such samples apart (DAR-BN, :mod:`lttoolbox.augment.dar_bn`) reads it;
            ``None`` (the default) means every sample is a training image, and nothing
            changes. A hook that mixes samples keeps it (each row keeps its own image's flag);
            a hook that adds or drops rows must extend or cut it, or set it to ``None``.
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
    synthetic: torch.Tensor | None = None
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

    def chunks(self, parts: int) -> list["Batch"]:
        """The batch in ``parts`` consecutive parts of nearly equal size (``torch.tensor_split``'s
        sizes), every per-sample field sliced alike; an unmixed batch gives unmixed parts.

        Example:
            >>> b = Batch.plain(torch.zeros(5, 1), torch.arange(5), index=torch.arange(5))
            >>> [(p.y_a.tolist(), p.mixed) for p in b.chunks(2)]
            [([0, 1, 2], False), ([3, 4], False)]
        """
        if self.streams != 1:  # parts of the rows would cut the streams' blocks apart
            raise ValueError("a batch of several streams cannot be split into parts")
        size = self.x.shape[0]
        bounds = torch.tensor_split(torch.arange(size), parts)
        out = []
        for part in bounds:
            if part.numel() == 0:
                continue
            lo, hi = int(part[0]), int(part[-1]) + 1
            values = {}
            for f in fields(self):
                value = getattr(self, f.name)
                if f.name == "y_b" and value is self.y_a:
                    continue  # set below: an unmixed part keeps y_b is y_a
                per_sample = isinstance(value, torch.Tensor) and value.dim() > 0 \
                    and value.shape[0] == size
                values[f.name] = value[lo:hi] if per_sample else value
            if "y_b" not in values:
                values["y_b"] = values["y_a"]
            out.append(Batch(**values))
        return out
