"""A training phase's components and the hooks they put on the model.

The trainer builds one :class:`Phase` per recipe phase; each component that acts inside the model
(augmentations, generators) is hooked at its model point(s), and :func:`active_hooks` gives, each
epoch, the hooks of the components whose epoch window is open.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError


@dataclass
class Phase:
    """One phase's recipe and the components built from it."""

    name: str
    recipe: dict
    sampler: Any
    loss: Any
    augments: list
    generator: Any
    hooked: list = field(default_factory=list)  # (component, point name, recipe key, hook)

    @property
    def components(self) -> list:
        parts = [self.sampler, self.loss, *self.augments]
        return parts + ([self.generator] if self.generator is not None else [])


def chain_hooks(parts: list) -> Callable:
    """Several components at one point act in recipe order."""
    def hook(h, batch):
        for part in parts:
            h, batch = part(h, batch)
        return h, batch
    return hook


def check_one_mix_at_a_time(named: list, epochs: int) -> None:
    """Refuse two components that both replace a batch's targets in a common epoch: a sample has
    two targets, so the second would silently undo the first."""
    mixing = [(part, key) for part, key in named if part.mixes]
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


def check_data_preparers(named: list, index: int, epochs: int) -> None:
    """Refuse a component that adds training images at its phase's start (``adds_images``) where
    they would be wrong or wasted.

    * Two in one phase: each tops the classes up from the same counts, so every class would
      overshoot its target.
    * In a phase that trains 0 epochs: the images would be made and never trained on.
    * In the first phase, for one that reads the trained model (``reads_trained_model``, as
      CAM-based re-sampling reads its class activation maps): nothing is trained yet.
    """
    preparers = [(part, key) for part, key in named if part.adds_images]
    for part, key in preparers:
        name = part.registry_name or type(part).__name__
        if epochs == 0:
            raise ConfigError(f"{name} adds training images at the start of its phase, and this "
                              f"phase trains 0 epochs, so they would never be trained on; put it "
                              f"in the phase that trains on them", key=key)
        if index == 0 and part.reads_trained_model:
            raise ConfigError(f"{name} makes its images from the model trained so far, and in the "
                              f"first phase nothing is trained yet (the maps would come from a "
                              f"random network); put it in a later phase, after one that trains",
                              key=key)
    if len(preparers) > 1:
        (_, first), (_, second) = preparers[:2]
        raise ConfigError(f"{first} and {second} both add training images at the start of the "
                          f"phase; each tops the classes up from the same counts, so every class "
                          f"would overshoot its target; keep one", key=second)


def active_hooks(phase: Phase) -> dict:
    """Hooks of the components whose epoch window includes the current epoch, by model point."""
    by_point: dict[str, list] = {}
    for part, where, _, hook in phase.hooked:
        if part.active:
            by_point.setdefault(where, []).append(hook)
    return {where: parts[0] if len(parts) == 1 else chain_hooks(parts)
            for where, parts in by_point.items()}


def _window(part, epochs: int) -> tuple[int, int]:
    return part.start_epoch, min(epochs, part.end_epoch or epochs)


def check_generator_placement(named: list, point_names: tuple, epochs: int) -> None:
    """Refuse a mixing augmentation that acts at or before a generator's point in an epoch the
    generator acts in: a generator needs each sample's single class (which classes are frequent
    or rare, which centers a sample belongs to), and a mixed sample has two. Mixing after the
    generator's point (manifold mixup at ``features`` behind RSG at ``layer2``) is fine: it mixes
    the extended batch, generated samples included."""
    generators = [(part, key) for part, key in named if part.generates]
    mixing = [(part, key) for part, key in named if part.mixes]
    for gen, gen_key in generators:
        known = [p for p in gen.points() if p in point_names]
        if not known:
            continue  # named by the point check, with the model's points
        gen_point = known[0]
        at = point_names.index(gen_point)
        for mix, mix_key in mixing:
            early = [p for p in mix.points() if p in point_names and point_names.index(p) <= at]
            first = max(_window(gen, epochs)[0], _window(mix, epochs)[0])
            last = min(_window(gen, epochs)[1], _window(mix, epochs)[1])
            if early and first < last:
                raise ConfigError(
                    f"{mix_key} ({type(mix).__name__}) mixes the batch at point '{early[0]}', at "
                    f"or before {gen_key} ({type(gen).__name__}) at '{gen_point}', in epochs "
                    f"{first}-{last - 1}; a generator needs each sample's single class. Mix at "
                    f"a later point (e.g. manifold mixup at 'features') or in other epochs "
                    f"(end_epoch/start_epoch)", key=mix_key)


def describe_generators(phases: list, model) -> list[tuple[str, bool]]:
    """One line per phase's generator: its parameter count beside the model's, and whether it is
    larger (RSG's centers and assignment grow with classes x channels x centers)."""
    backbone = sum(p.numel() for p in model.parameters())
    lines = []
    for phase in phases:
        gen = phase.generator
        if gen is None or not gen.learned:
            continue
        count = sum(p.numel() for p in gen.parameters())
        where = f"phase '{phase.name}': " if len(phases) > 1 else ""
        too_large = count > backbone
        larger = ", more than the model" if too_large else ""
        lines.append((f"{where}generator {type(gen).__name__} at '{gen.points()[0]}' has {count:,} "
                      f"parameters (model: {backbone:,}){larger}; they train alongside and are "
                      f"never exported", too_large))
    return lines


def check_added_rows(hooked: list, point_names: tuple, epochs: int) -> None:
    """Refuse a component that would act on the batch while another one's added rows are in it.

    A component that declares ``adds_rows`` (open-sampling's images from outside the label set)
    appends samples at its first point and takes them out at its last; between the two the
    batch's activations have rows without targets. Another component acting there in a common
    epoch would mix, generate from or count those rows: at a point strictly between, at the
    first point after it (hooks at one point act in recipe order), or at the last point before
    it. Acting at the first point before it (an input mix of the training batch alone) or at
    the last point after it is fine.
    """
    def order(point):
        return point_names.index(point) if point in point_names else None

    for i, (part, point, key, _) in enumerate(hooked):
        if not part.adds_rows or point != part.points()[0]:
            continue
        first, last = order(part.points()[0]), order(part.points()[-1])
        last_at = next((j for j, (p, q, _, _) in enumerate(hooked)
                        if p is part and q == part.points()[-1]), len(hooked))
        if first is None or last is None:
            continue  # named by the point check, with the model's points
        for j, (other, where, other_key, _) in enumerate(hooked):
            at = order(where)
            if other is part or at is None:
                continue
            inside = (first < at < last or (at == first and j > i)
                      or (at == last and j < last_at))
            start = max(_window(part, epochs)[0], _window(other, epochs)[0])
            end = min(_window(part, epochs)[1], _window(other, epochs)[1])
            if inside and start < end:
                name = part.registry_name or type(part).__name__
                raise ConfigError(
                    f"{type(other).__name__} acts at point '{where}' while {key} ({name}) has "
                    f"added its rows to the batch (from '{part.points()[0]}' to "
                    f"'{part.points()[-1]}') in epochs {start}-{end - 1}; those rows have no "
                    f"targets. Act at '{part.points()[0]}' listed before {key}, after "
                    f"'{part.points()[-1]}', or in other epochs", key=other_key)
