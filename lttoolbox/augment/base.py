"""What every mixing augmentation shares: an epoch window, a per-batch probability, the draws.

A mixing augmentation is a model hook (at ``point``, default ``input``) that turns a batch into the
two-target form of :class:`lttoolbox.batch.Batch`: inputs (or activations) mixed, ``y_a``, ``y_b``
and ``lam`` per sample, the loss ``lam L(y_a) + (1 - lam) L(y_b)``
(:func:`lttoolbox.losses.mixed_loss`). It acts only inside its epoch window ``[start_epoch,
end_epoch)`` and there on a batch with probability ``p``, so "fine-tuning after mixup" (mixing
switched off for the last epochs) is configuration.

Random draws and synchronisation: the per-batch coin, ``lam`` and the layer choice come from
torch's CPU generator (seeded by the trainer, saved in every checkpoint), so deciding costs no
device synchronisation; permutations and boxes are drawn on the batch's device.
"""
from __future__ import annotations

import torch

from ..batch import Batch
from ..api import Component, Context
from ..errors import ConfigError
from ..losses.weights import check_number


class MixingAugment(Component):
    """Base of the mixing augmentations.

    Args:
        p: Probability that a batch inside the window is mixed (default 1).
        start_epoch: First epoch (0-based) of the window.
        end_epoch: First epoch after the window; ``None``: until the end.
        point: The model point the hook acts at (``input`` mixes images).
        context: What the data and the run tell it (:class:`~lttoolbox.api.Context`, passed by
            the trainer to an entry that takes ``context``), kept as ``self.context``.

    Subclasses implement :meth:`mix`; one that reads the context (``remix``: the class counts)
    takes ``context`` and passes it up.
    """

    mixes = True  # replaces the batch's targets; two such augmentations cannot both act at once

    def __init__(self, p: float = 1.0, start_epoch: int = 0, end_epoch: int | None = None,
                 point: str = "input", *, context: Context | None = None):
        super().__init__(start_epoch, end_epoch, context=context)
        self.p = check_number("p", p, 0.0, 1.0)
        if not isinstance(point, str) or not point:
            raise ConfigError(f"point must be a model point name, got {point!r}")
        self.point = point

    def points(self) -> tuple[str, ...]:
        return (self.point,)

    def coin(self) -> bool:
        """Whether this batch is mixed (``p``), drawn on the CPU: no device synchronisation."""
        return self.p >= 1.0 or (self.p > 0.0 and float(torch.rand(())) < self.p)

    def __call__(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
        if not self.active or not self.coin():
            return h, batch
        return self.mix(h, batch)

    def mix(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
        raise NotImplementedError

    def window(self, total_epochs: int) -> tuple[int, int]:
        """The epochs ``[first, last + 1)`` this augmentation can act in a run of that length."""
        return self.start_epoch, min(total_epochs, self.end_epoch or total_epochs)


def beta_draw(alpha: float, size: int = 1) -> torch.Tensor:
    """``size`` draws of Beta(alpha, alpha) from torch's CPU generator (``alpha > 0``)."""
    a = torch.tensor(float(alpha))
    return torch.distributions.Beta(a, a).sample((size,))


def check_alpha(alpha: object) -> float:
    return check_number("alpha", alpha, 0.0, low_open=True)


def mixed_targets(batch: Batch, partner: torch.Tensor, lam: torch.Tensor) -> Batch:
    """The two-target batch of a sample mixed with ``partner`` (indices into the batch).

    ``lam`` weighs the sample's own target. A batch that is already mixed cannot be mixed again:
    two targets per sample is the contract, which the trainer enforces before training.
    """
    return batch.replace(y_b=batch.y_a[partner], lam=lam.to(batch.y_a.device, torch.float32))
