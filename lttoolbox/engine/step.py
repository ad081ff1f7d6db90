"""One training step's forward as a module: the model, the stage's hooks (augmentations,
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
    """``forward(batch) -> loss`` of one stage.

    Args:
        model: The backbone and head.
        stage: The built stage (sampler, loss, components, hooks).
        hooks: The stage's active hooks of this epoch (stage name -> hook).
    """

    def __init__(self, model: torch.nn.Module, stage):
        super().__init__()
        self.model = model
        # Registered so that DDP sees (and synchronises) the components' parameters too.
        self.parts = torch.nn.ModuleList(p for p in stage.components
                                         if isinstance(p, torch.nn.Module))
        self.loss = stage.loss
        self.aux_parts = [p for p in stage.components if hasattr(p, "auxiliary_loss")]
        self.hooks: dict = {}

    def forward(self, batch: Batch) -> torch.Tensor:
        logits, batch = self.model.forward_hooked(batch, self.hooks)
        loss = mixed_loss(self.loss, logits, batch)
        for part in self.aux_parts:
            extra = part.auxiliary_loss()
            if extra is not None:
                loss = loss + extra
        return loss
