"""``one_of``: mixing augmentations as alternatives per batch.

Two mixing augmentations cannot both mix one batch (a sample has two targets), so a recipe that
lists two with overlapping epoch windows is refused; ``one_of`` says how they combine instead:
each batch draws at most one of them, with the given probabilities.

Recipe (CMO on half of the batches, mixup on a quarter, nothing on the rest)::

    augment:
      - name: one_of
        choices: [{name: cmo, start_epoch: 4, end_epoch: 197}, {name: mixup, alpha: 1.0}]
        p: [0.5, 0.25]
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..batch import Batch
from ..epochs import EpochAware
from ..errors import ConfigError
from ..registry import AUGMENTS


@AUGMENTS.register("one_of")
class OneOf(EpochAware):
    """At most one of several mixing augmentations per batch.

    Args:
        choices: Augmentation recipes (``{name: ..., ...}``), all acting at the same stage. Each
            keeps its own epoch window; its own ``p`` is replaced by this entry's.
        p: Probability of each choice per batch (sum at most 1; the rest: no mixing).
        start_epoch, end_epoch: The window of the whole entry.
        **context: What the trainer passes, handed on to the choices.
    """

    mixes = True

    def __init__(self, choices: Sequence[dict], p: Sequence[float], start_epoch: int = 0,
                 end_epoch: int | None = None, **context: Any):
        super().__init__(start_epoch, end_epoch)
        if not isinstance(choices, (list, tuple)) or len(choices) < 2:
            raise ConfigError("choices must list at least two augmentations")
        if not isinstance(p, (list, tuple)) or len(p) != len(choices) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1
                for v in p) or sum(p) > 1 + 1e-9:
            raise ConfigError(f"p must give one probability per choice, summing to at most 1; "
                              f"got {p!r}")
        self.choices = [AUGMENTS.build({**dict(c), "p": 1.0}, key=f"choices[{i}]", **context)
                        for i, c in enumerate(choices)]
        stages = {getattr(c, "stage", "input") for c in self.choices}
        if len(stages) != 1 or any(len(getattr(c, "stages", (1,))) != 1 for c in self.choices):
            raise ConfigError(f"all choices must act at one and the same stage, got "
                              f"{sorted(stages)}")
        self.stage = stages.pop()
        self.cumulative = torch.tensor(p, dtype=torch.float64).cumsum(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        for choice in self.choices:
            choice.set_epoch(epoch)

    def __call__(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
        if not self.active:
            return h, batch
        u = float(torch.rand(()))  # the CPU generator: no device synchronisation
        pick = int((self.cumulative <= u).sum())
        if pick >= len(self.choices) or not self.choices[pick].active:
            return h, batch
        return self.choices[pick].mix(h, batch)
