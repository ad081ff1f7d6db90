"""Class-aware sampling for multi-label data: the official sampler of the distribution-balanced
loss (Wu et al., ECCV 2020), with its exact order, seeded and resumable.

Every ``file:line`` is in wutong16/DistributionBalancedLoss at commit
14460d0acda6a3e77a8a6a5999b9746243cb1535, ``mllt/datasets/loader/sampler.py``.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np

from ..checks import check_int, check_number
from ..errors import ConfigError, DataError
from ..registry import SAMPLERS
from .base import LTSampler

__all__ = ["ClassAwareMLSampler"]


class _Cycle:
    """``RandomCycleIter`` (sampler.py:228-247): walks a list and reshuffles it, with the given
    ``random.Random``, every time it wraps around, the first call included."""

    __slots__ = ("items", "i")

    def __init__(self, items: list[int], i: int | None = None):
        self.items = list(items)
        self.i = len(self.items) - 1 if i is None else i

    def next(self, rng: random.Random) -> int:
        self.i += 1
        if self.i == len(self.items):
            self.i = 0
            rng.shuffle(self.items)
        return self.items[self.i]


@SAMPLERS.register("class_aware_ml")
class ClassAwareMLSampler(LTSampler):
    """Class-aware sampling for multi-label data: a class in shuffled turn, then ``k`` of its
    images.

    The official ``ClassAwareSampler`` (sampler.py:270-291, with ``class_aware_sample_generator``,
    :250-267): a cycle over the classes in an order reshuffled at every pass (each class once per
    pass, not i.i.d.), and for each class a cycle over the images that carry its label (an image
    with several labels is in the list of each), reshuffled at every pass. Each turn takes the
    next class and ``samples_per_class`` consecutive images of its cycle (``k = 3`` in the code,
    :272). An epoch has ``int(max_i n_i * C / reduce)`` draws (:289; ``reduce = 4`` from
    ``build_loader.py:44-49``): 3875 on VOC-MLT, 22560 on COCO-MLT. Its last turn's images
    beyond the epoch's end are drawn and dropped, and the cycles go on into the next epoch
    (they are built once in the code and never reset, ``set_epoch`` only stores the epoch,
    :300-301).

    The shuffles use a private ``random.Random(seed)`` in the code's order of calls, so the
    stream is the code's exactly, and ``seed = 0`` is the stream the code draws (it re-seeds
    Python's global ``random`` to 0 when the loader is built, :273-274, so its stream ignores the
    run's seed; here it follows it). The global RNGs are not touched.

    The stream of epoch ``e`` depends only on ``(seed, e)``: a sampler asked for an epoch
    without having drawn the earlier ones replays them (cheap: no images are read), and
    :meth:`state_dict` holds the cycles' state at the start of the current epoch, so a resumed
    run continues without replaying. Before ``start_epoch`` (deferred re-sampling) the stream is
    plain shuffling of the ``N`` images, as for every sampler; the cycles run from epoch 0
    regardless, so a deferred sampler's epoch ``e`` is the undeferred one's. Distributed runs
    slice the stream as every sampler does.

    Recipe::

        sampler: {name: class_aware_ml, samples_per_class: 3, reduce: 4}

    Args:
        labels: The multi-hot training labels ``(N, C)`` (shorthand for ``context.labels``).
        samples_per_class: ``k``, images taken per class turn (the code's ``num_samples_cls``).
        reduce: The epoch has ``int(max_i n_i * C / reduce)`` draws.
        **base: See :class:`~lttoolbox.samplers.base.LTSampler` (no ``num_samples``: the
            length is the formula above; the shuffled epochs before ``start_epoch`` have ``N``
            draws).

    Raises:
        DataError: labels that are not a 0/1 matrix, or a class that no image carries (the
            code fails on it with an ``IndexError``).
        ConfigError: class-id labels (single-label data: use ``class_balanced``), a parameter of
            the wrong type or range, or an empty epoch.

    Example:
        >>> import numpy as np
        >>> labels = np.array([[1, 0], [1, 0], [1, 1], [1, 0], [0, 1]])
        >>> s = ClassAwareMLSampler(labels, samples_per_class=1, reduce=1, seed=0)
        >>> len(s), s.class_probabilities().tolist()
        (8, [0.5, 0.5])
        >>> [round(p, 4) for p in s.image_probabilities().tolist()]
        [0.125, 0.125, 0.375, 0.125, 0.25]
    """

    multilabel = True
    single_label = False
    fixed_parameters = ("num_samples",)  # the epoch length is the official formula's

    def __init__(self, *args: Any, samples_per_class: int = 3, reduce: float = 4, **base: Any):
        self.samples_per_class = check_int("samples_per_class", samples_per_class, minimum=1)
        self.reduce = check_number("reduce", reduce, 0.0, low_open=True)
        super().__init__(*args, num_samples=None, **base)
        if self.label_matrix is None:
            raise ConfigError("class_aware_ml draws through the labels of multi-hot rows (N, C); "
                              "these labels are class ids: use class_balanced")
        # The official formula, in floating point as the code computes it (sampler.py:289).
        self.class_aware_length = int(int(self.class_counts.max()) * self.num_classes
                                      / self.reduce)
        if self.class_aware_length < 1:
            raise ConfigError(f"reduce={self.reduce:g} leaves an empty epoch "
                              f"(max count {int(self.class_counts.max())} x {self.num_classes} "
                              f"classes / reduce < 1)")
        # Each class's images in data-set order, as the code's index lists (custom.py:145-153).
        self._class_lists = [np.flatnonzero(self.label_matrix[:, c]).tolist()
                             for c in range(self.num_classes)]
        self._start: tuple[int, dict] = (0, self._initial_state())

    # ------------------------------------------------------------------ what it draws
    def _active_length(self) -> int:
        return self.class_aware_length

    def _active_probabilities(self) -> np.ndarray:
        """Each class's turn comes once per pass over the classes: ``1 / C`` each."""
        return np.full(self.num_classes, 1.0 / self.num_classes)

    def image_probabilities(self) -> np.ndarray:
        """``P^I(x_k) = sum_i y_ki / (C n_i)``: each image's chance per draw in the long run,
        shape ``(N,)`` (an image without labels is never drawn)."""
        return self.label_matrix @ (1.0 / (self.num_classes * self.class_counts))

    # ------------------------------------------------------------------ the stream
    def _initial_state(self) -> dict:
        return {"rng": random.Random(self.seed).getstate(),
                "classes": (list(range(self.num_classes)), self.num_classes - 1),
                "images": [(list(items), len(items) - 1) for items in self._class_lists]}

    def _draw(self, state: dict) -> tuple[np.ndarray, dict]:
        """One epoch from ``state``; returns its stream and the state after it."""
        rng = random.Random()
        rng.setstate(state["rng"])
        classes = _Cycle(*state["classes"])
        images = [_Cycle(items, i) for items, i in state["images"]]
        k, length = self.samples_per_class, self.class_aware_length
        out: list[int] = []
        while len(out) < length:
            cycle = images[classes.next(rng)]
            out.extend(cycle.next(rng) for _ in range(k))
        after = {"rng": rng.getstate(), "classes": (classes.items, classes.i),
                 "images": [(c.items, c.i) for c in images]}
        return np.asarray(out[:length], dtype=np.int64), after

    def _active_stream(self, rng: np.random.Generator) -> np.ndarray:
        """The cycles' stream of the current active epoch; ``rng`` is not used (the official
        order of ``random`` calls is kept instead)."""
        turn = self.epoch
        at, state = self._start
        if at > turn:  # an earlier epoch asked for: replay from the beginning
            at, state = 0, self._initial_state()
        while True:
            stream, after = self._draw(state)
            if at == turn:
                break
            at, state = at + 1, after
        self._start = (at, state)
        return stream

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        """The epoch and the cycles' state at its start (the random generator's state, the class
        order and every class's image order with their positions)."""
        if self.active:  # the current epoch's start, which a resumed run continues from
            self.full_stream()
        at, state = self._start
        return {"epoch": at, "seed": self.seed, "samples_per_class": self.samples_per_class,
                "reduce": self.reduce, "state": state}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output (the next stream drawn continues from it).

        Raises:
            ConfigError: the state was drawn with another ``seed``, ``samples_per_class`` or
                ``reduce`` (its continuation would not be this sampler's stream).
            DataError: it was drawn from other training labels.
        """
        keys = {"epoch", "seed", "samples_per_class", "reduce", "state"}
        if set(state) != keys:
            raise ValueError(f"not a ClassAwareMLSampler state: keys {sorted(state)}")
        for name in ("seed", "samples_per_class", "reduce"):
            if state[name] != getattr(self, name):
                raise ConfigError(f"{name} is {getattr(self, name)!r} but the saved sampler "
                                  f"state was drawn with {state[name]!r}")
        inner = state["state"]
        images = inner["images"]
        if (len(images) != self.num_classes
                or [sorted(items) for items, _ in images] != self._class_lists):
            raise DataError("the sampler state was saved for other training labels")
        self._start = (int(state["epoch"]), {
            "rng": tuple(inner["rng"][:1]) + (tuple(inner["rng"][1]),) + tuple(inner["rng"][2:]),
            "classes": (list(inner["classes"][0]), int(inner["classes"][1])),
            "images": [(list(items), int(i)) for items, i in images]})
        self._cache = None
        self.set_epoch(int(state["epoch"]))

    def __repr__(self) -> str:
        return (f"ClassAwareMLSampler(N={self.num_images}, C={self.num_classes}, "
                f"samples_per_class={self.samples_per_class}, reduce={self.reduce:g}, "
                f"epoch={self.epoch}, start_epoch={self.start_epoch})")
