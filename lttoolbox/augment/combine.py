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
from ..api import Component, Context
from ..errors import ConfigError
from ..registry import AUGMENTS


@AUGMENTS.register("one_of")
class OneOf(Component):
    """At most one of several mixing augmentations per batch.

    Args:
        choices: Mixing augmentations (names or ``{name: ..., ...}``), all acting at the same
            model point. Each keeps its own epoch window; how often it acts is this entry's
            ``p``, so a choice gives no ``p`` of its own.
        p: Probability of each choice per batch (sum at most 1; the rest: no mixing).
        start_epoch, end_epoch: The window of the whole entry.
        context: What the trainer passes, handed on to the choices as it is.

    Example:
        >>> import torch
        >>> from lttoolbox.augment import OneOf
        >>> from lttoolbox.batch import Batch
        >>> aug = OneOf(choices=["mixup", {"name": "cutmix", "alpha": 1.0}], p=[0.5, 0.25])
        >>> [type(c).__name__ for c in aug.choices], aug.points()
        (['Mixup', 'CutMix'], ('input',))
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.zeros(4, 1, 4, 4), torch.arange(4)
        >>> # a batch is mixed with probability 0.5 + 0.25: about 750 of 1000 are
        >>> sum(aug(x, Batch.plain(x, y))[1].mixed for _ in range(1000))
        763
    """

    mixes = True
    # A working configuration of this entry, whose parameters have no defaults (the
    # augmentation tests build every entry from its defaults, or from this).
    example_config = {"choices": ["mixup", "cutmix"], "p": [0.5, 0.5]}

    def __init__(self, choices: Sequence[dict], p: Sequence[float], start_epoch: int = 0,
                 end_epoch: int | None = None, *, context: Context | None = None):
        super().__init__(start_epoch, end_epoch, context=context)
        if not isinstance(choices, (list, tuple)) or len(choices) < 2:
            raise ConfigError("choices must list at least two augmentations")
        if not isinstance(p, (list, tuple)) or len(p) != len(choices) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1
                for v in p) or sum(p) > 1 + 1e-9:
            raise ConfigError(f"p must give one probability per choice, summing to at most 1; "
                              f"got {p!r}")
        self.choices = [AUGMENTS.build({**self._choice(c, i), "p": 1.0}, key=f"choices[{i}]",
                                       context=self.context) for i, c in enumerate(choices)]
        points = {c.points() for c in self.choices}
        if len(points) != 1 or len(next(iter(points))) != 1:
            raise ConfigError(f"all choices must act at one and the same model point, got "
                              f"{sorted(p for ps in points for p in ps)}")
        self.point = points.pop()[0]
        self.cumulative = torch.tensor(p, dtype=torch.float64).cumsum(0)

    @staticmethod
    def _choice(cfg: Any, i: int) -> dict:
        """A choice's recipe, checked before it is built: a mixing augmentation other than
        ``one_of``, without a ``p`` of its own (this entry's ``p`` decides)."""
        key = f"choices[{i}]"
        if isinstance(cfg, str):
            cfg = {"name": cfg}
        if not isinstance(cfg, dict) or "name" not in cfg:
            raise ConfigError(f"must be an augmentation name or a mapping with a 'name' key, got "
                              f"{cfg!r}", key=key)
        name = cfg["name"]
        if name == "one_of":
            raise ConfigError("one_of cannot choose another one_of; list all the alternatives "
                              "in one", key=f"{key}.name")
        if name in AUGMENTS and not AUGMENTS.get(name).mixes:
            mixing = [n for n in AUGMENTS.names() if n != "one_of" and AUGMENTS.get(n).mixes]
            raise ConfigError(f"{name} is not a mixing augmentation; one_of chooses per batch "
                              f"between mixing augmentations ({', '.join(mixing)})",
                              key=f"{key}.name")
        if name in AUGMENTS and AUGMENTS.get(name).regroups_rows:
            # bbn, dbn_mix: the second stream is the whole method, on every batch of its
            # window; a per-batch choice would hand the model one stream on some batches
            raise ConfigError(f"{name} regroups every batch of its window into its own rows "
                              f"(a second stream), so one_of cannot choose it per batch; give "
                              f"it its own augment entry", key=f"{key}.name")
        if "p" in cfg:
            raise ConfigError("is given by one_of's own p, one probability per choice; remove "
                              "it here", key=f"{key}.p")
        return dict(cfg)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        for choice in self.choices:
            choice.set_epoch(epoch)

    def points(self) -> tuple[str, ...]:
        return (self.point,)

    def __call__(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
        if not self.active:
            return h, batch
        u = float(torch.rand(()))  # the CPU generator: no device synchronisation
        pick = int((self.cumulative <= u).sum())
        if pick >= len(self.choices) or not self.choices[pick].active:
            return h, batch
        return self.choices[pick].mix(h, batch)
