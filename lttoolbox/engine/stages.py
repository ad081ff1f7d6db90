"""A training stage's components and the hooks they put on the model.

The trainer builds one :class:`Stage` per recipe stage; each component that acts inside the model
(augmentations, generators) is hooked at its model stage(s), and :func:`active_hooks` gives, each
epoch, the hooks of the components whose epoch window is open.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError


@dataclass
class Stage:
    """One stage's recipe and the components built from it."""

    name: str
    recipe: dict
    sampler: Any
    loss: Any
    augments: list
    generator: Any
    hooked: list = field(default_factory=list)  # (component, stage name, recipe key, hook)

    @property
    def components(self) -> list:
        parts = [self.sampler, self.loss, *self.augments]
        return parts + ([self.generator] if self.generator is not None else [])


def chain_hooks(parts: list) -> Callable:
    """Several components at one stage act in recipe order."""
    def hook(h, batch):
        for part in parts:
            h, batch = part(h, batch)
        return h, batch
    return hook


def check_one_mix_at_a_time(named: list, epochs: int) -> None:
    """Refuse two components that both replace a batch's targets in a common epoch: a sample has
    two targets, so the second would silently undo the first."""
    mixing = [(part, key) for part, key in named if getattr(part, "mixes", False)]
    for i, (a, key_a) in enumerate(mixing):
        for b, key_b in mixing[i + 1:]:
            first = max(a.start_epoch, b.start_epoch)
            last = min(a.end_epoch or epochs, b.end_epoch or epochs, epochs)
            if first < last:
                raise ConfigError(f"{key_a} ({type(a).__name__}) and {key_b} "
                                  f"({type(b).__name__}) both mix the batch in epochs "
                                  f"{first}-{last - 1}; give them disjoint epoch windows, or "
                                  f"combine them per batch with {{name: one_of, choices: "
                                  f"[...], p: [...]}}", key=key_a)


def active_hooks(stage: Stage) -> dict:
    """Hooks of the components whose epoch window includes the current epoch."""
    by_stage: dict[str, list] = {}
    for part, where, _, hook in stage.hooked:
        if getattr(part, "active", True):
            by_stage.setdefault(where, []).append(hook)
    return {where: parts[0] if len(parts) == 1 else chain_hooks(parts)
            for where, parts in by_stage.items()}
