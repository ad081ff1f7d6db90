"""One training step's forward as a module: the model, the phase's hooks (augmentations,
generators) and the whole loss, including the components' auxiliary losses.

Computing the whole loss inside ``forward`` is what lets DistributedDataParallel wrap the step:
DDP synchronises the gradients of every parameter the returned loss depends on (the model's and
the components', RSG's centres for example), and finds the ones a step leaves out by walking back
from that output. A loss added after the wrapped forward would escape both.
"""
from __future__ import annotations

import torch

from ..batch import Batch
from ..losses import mixed_loss


class TrainStep(torch.nn.Module):
    """``forward(batch) -> losses`` of one phase: ``(total, criterion, *auxiliary)``.

    Training minimises ``losses[0]``, the criterion's loss plus every auxiliary loss, added in
    the same order as always. The other entries are there to be logged (``term_names``): an
    auxiliary loss on another scale (RSG's runs in the thousands on CIFAR-10-LT) would otherwise
    hide the criterion's in the epoch's ``loss``.

    Args:
        model: The backbone and head.
        phase: The built phase (sampler, loss, components, hooks).
        normalize: How the criterion's batch mean is normalised across processes
            (:func:`~lttoolbox.engine.distributed.global_normalizer`; ``None`` in one process).
    """

    def __init__(self, model: torch.nn.Module, phase, normalize=None):
        super().__init__()
        self.normalize = normalize
        self.model = model
        # Registered so that DDP sees (and synchronises) the components' parameters too.
        self.parts = torch.nn.ModuleList(p for p in phase.components
                                         if isinstance(p, torch.nn.Module))
        self.loss = phase.loss
        self.aux_parts = auxiliary_parts(phase)
        self.term_names = loss_term_names(phase)
        self.hooks: dict = {}
        # The share of the batch this call sees (train.accumulate's parts): each auxiliary
        # loss, a mean over its part, is weighed by it so that the parts sum to the batch's.
        self.share = 1.0

    def forward(self, batch: Batch) -> torch.Tensor:
        logits, batch = self.model.forward_hooked(batch, self.hooks)
        loss = mixed_loss(self.loss, logits, batch, self.normalize)
        if not self.aux_parts:
            return loss.reshape(1)
        terms = [loss]
        for part in self.aux_parts:
            extra = part.auxiliary_loss()
            if extra is not None and self.share != 1.0:
                extra = extra * self.share
            terms.append(loss.new_zeros(()) if extra is None else extra)
            if extra is not None:
                loss = loss + extra
        return torch.stack([t.float() for t in (loss, *terms)])


def auxiliary_parts(phase) -> list:
    """The phase's components that add a term to the objective (declared ``adds_loss``)."""
    return [p for p in phase.components if p.adds_loss]


def loss_term_names(phase) -> list[str]:
    """The names a phase's loss terms are logged under: the criterion's, then each component's
    with an auxiliary loss, as the recipe names them (``["ldam", "rsg"]``; a loss's own extra
    term, a meta objective, is ``<loss>_aux``); empty when the criterion's loss is the only
    term."""
    parts = auxiliary_parts(phase)
    if not parts:
        return []
    criterion = phase.recipe["loss"]["name"]
    named = [(phase.loss, {"name": f"{criterion}_aux"}),
             (phase.generator, phase.recipe["generator"]),
             *zip(phase.augments, phase.recipe["augment"])]
    return [criterion,
            *(next((cfg["name"] for c, cfg in named if c is p), type(p).__name__)
              for p in parts)]
