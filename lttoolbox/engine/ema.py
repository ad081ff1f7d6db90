"""``train.ema``: an exponential moving average of the weights, kept beside the trained ones.

The average is torch's own :class:`torch.optim.swa_utils.AveragedModel` with
:func:`~torch.optim.swa_utils.get_ema_multi_avg_fn` (``theta_ema <- decay * theta_ema + (1 -
decay) * theta`` after every ``every`` optimizer steps; the first update copies the weights),
over the parameters and the buffers (BatchNorm's running statistics too, as timm's ``ModelEmaV3``
does by default). It never feeds back into training: the trained weights, and so every other
result of the run, are the same with and without it.

Each phase that sets ``train.ema`` starts its own average from the weights it begins with (a
later phase may change the head). The trainer checkpoints the average, so a resumed run continues
it exactly; at the phase's end it writes ``ema-<phase>.pt`` (the averaged network's state dict,
the same keys as ``model-<phase>.pt``, so ``lteval --weights ema-<phase>.pt`` evaluates it), and
the final phase's average is evaluated into ``results.json``'s ``ema``. The reported result stays
the final epoch's trained weights.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(1, 1, bias=False)
    >>> ema = WeightAverage(net, decay=0.5, every=1)
    >>> for value in (1.0, 3.0):
    ...     _ = net.weight.data.fill_(value)
    ...     ema.update(net)
    >>> float(ema.module.weight)  # 1, then 0.5 * 1 + 0.5 * 3
    2.0
"""
from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """The moving average of a model's weights.

    Args:
        model: The trained network (its current weights seed the average at the first update).
        decay: Weight of the average so far at each update, in (0, 1).
        every: Optimizer steps between two updates.
    """

    def __init__(self, model: torch.nn.Module, decay: float, every: int = 1):
        self.every = int(every)
        self.steps = 0
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
                                      use_buffers=True)
        for param in self.averaged.parameters():
            param.requires_grad_(False)

    @property
    def module(self) -> torch.nn.Module:
        """The averaged network (the model's class, with the averaged weights)."""
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Count one optimizer step; every ``every`` steps, average ``model``'s weights in."""
        self.steps += 1
        if self.steps % self.every == 0:
            self.averaged.update_parameters(model)

    def state_dict(self) -> dict:
        return {"averaged": self.averaged.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state["averaged"])
        self.steps = int(state["steps"])
