"""Class-aware sampling for multi-label data: the official sampler of the distribution-balanced
loss (Wu et al., ECCV 2020), with its exact order, seeded and resumable.

Every ``file:line`` is in wutong16/DistributionBalancedLoss at commit
14460d0acda6a3e77a8a6a5999b9746243cb1535, ``mllt/datasets/loader/sampler.py``.
"""
from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from ..api import Component, Context
from ..checks import check_int, check_number
from ..errors import ConfigError, DataError
from ..losses.multilabel import check_multilabel_labels
from .base import _distributed_default

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


class ClassAwareMLSampler(Component, Sampler):
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

    The stream of epoch ``e`` depends only on ``(seed, e)``: a sampler asked for epoch ``e``
    without having drawn the earlier ones replays them (cheap: no images are read), and
    :meth:`state_dict` holds the cycles' state at the start of the current epoch, so a resumed
    run continues without replaying. Distributed runs slice the stream as
    :class:`~lttoolbox.samplers.base.LTSampler` does (padded by wrapping, every
    ``world_size``-th position).

    Args:
        labels: The multi-hot training labels ``(N, C)`` (shorthand for ``context.labels``).
        samples_per_class: ``k``, images taken per class turn (the code's ``num_samples_cls``).
        reduce: The epoch has ``int(max_i n_i * C / reduce)`` draws.
        context: It reads ``labels`` (two-dimensional), ``seed``, ``rank`` and ``world_size``.
        seed, rank, world_size: Shorthands for those fields.

    Raises:
        DataError: labels that are not a 0/1 matrix, or a class that no image carries (the
            code fails on it with an ``IndexError``).
        ConfigError: a parameter of the wrong type or range, or an empty epoch.

    Example:
        >>> import numpy as np
        >>> labels = np.array([[1, 0], [1, 0], [1, 1], [1, 0], [0, 1]])
        >>> s = ClassAwareMLSampler(labels, samples_per_class=1, reduce=1, seed=0)
        >>> len(s), s.class_probabilities().tolist()
        (8, [0.5, 0.5])
        >>> [round(p, 4) for p in s.image_probabilities().tolist()]
        [0.125, 0.125, 0.375, 0.125, 0.25]
    """

    def __init__(self, labels: Any = None, *, samples_per_class: int = 3, reduce: float = 4,
                 context: Context | None = None, seed: int | None = None,
                 rank: int | None = None, world_size: int | None = None):
        context = Context.given(context, labels=labels, seed=seed, rank=rank,
                                world_size=world_size)
        Component.__init__(self, context=context)
        if context.labels is None:
            raise ConfigError("labels is required: the multi-hot training labels (N, C)")
        matrix = check_multilabel_labels(context.labels)
        self.labels = matrix.astype(np.uint8)
        self.class_counts = matrix.sum(axis=0).astype(np.int64)
        empty = np.flatnonzero(self.class_counts == 0)
        if empty.size:
            raise DataError(f"{empty.size} of {matrix.shape[1]} classes have no training image "
                            f"(class {int(empty[0])}); class-aware sampling draws from every "
                            f"class")
        self.samples_per_class = check_int("samples_per_class", samples_per_class, minimum=1)
        self.reduce = check_number("reduce", reduce, 0.0, low_open=True)
        self.seed = check_int("seed", context.seed, minimum=0)
        self._rank = None if context.rank is None else check_int("rank", context.rank, minimum=0)
        self._world_size = (None if context.world_size is None
                            else check_int("world_size", context.world_size, minimum=1))
        # The official formula, in floating point as the code computes it (sampler.py:289).
        self.num_samples = int(int(self.class_counts.max()) * self.num_classes / self.reduce)
        if self.num_samples < 1:
            raise ConfigError(f"reduce={self.reduce:g} leaves an empty epoch "
                              f"(max count {int(self.class_counts.max())} x {self.num_classes} "
                              f"classes / reduce < 1)")
        # Each class's images in data-set order, as the code's index lists (custom.py:145-153).
        self._class_lists = [np.flatnonzero(matrix[:, c]).tolist()
                             for c in range(self.num_classes)]
        self._start: tuple[int, dict] = (0, self._initial_state())
        self._cache: tuple[int, np.ndarray] | None = None

    # ------------------------------------------------------------------ what it draws
    @property
    def num_classes(self) -> int:
        """C."""
        return int(self.labels.shape[1])

    @property
    def num_images(self) -> int:
        """N."""
        return int(self.labels.shape[0])

    @property
    def epoch_length(self) -> int:
        """Draws per epoch over all ranks, ``int(max_i n_i * C / reduce)``."""
        return self.num_samples

    def class_probabilities(self) -> np.ndarray:
        """The chance of each class's turn, ``1 / C`` each, shape ``(C,)``."""
        return np.full(self.num_classes, 1.0 / self.num_classes)

    def class_level_frequencies(self) -> np.ndarray:
        """``P^C_i = 1 / (C n_i)``: the chance, per draw, of one given image drawn through class
        ``i``'s turn, shape ``(C,)`` (the re-balanced weighting's class-level frequency)."""
        return 1.0 / (self.num_classes * self.class_counts)

    def image_probabilities(self) -> np.ndarray:
        """``P^I(x_k) = sum_i y_ki / (C n_i)``: each image's chance per draw in the long run,
        shape ``(N,)`` (an image without labels is never drawn)."""
        return self.labels @ self.class_level_frequencies()

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
        k, length = self.samples_per_class, self.num_samples
        out: list[int] = []
        while len(out) < length:
            cycle = images[classes.next(rng)]
            out.extend(cycle.next(rng) for _ in range(k))
        after = {"rng": rng.getstate(), "classes": (classes.items, classes.i),
                 "images": [(c.items, c.i) for c in images]}
        return np.asarray(out[:length], dtype=np.int64), after

    def full_stream(self) -> np.ndarray:
        """The current epoch's whole index stream over all ranks (numpy int64, unpadded)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        at, state = self._start
        if at > self.epoch:  # an earlier epoch asked for: replay from the beginning
            at, state = 0, self._initial_state()
        while True:
            stream, after = self._draw(state)
            if at == self.epoch:
                break
            at, state = at + 1, after
        self._start = (at, state)
        self._cache = (at, stream)
        return stream

    @property
    def rank(self) -> int:
        """This process's rank (from ``torch.distributed`` when not given)."""
        return self._rank if self._rank is not None else _distributed_default()[0]

    @property
    def world_size(self) -> int:
        """The number of processes (from ``torch.distributed`` when not given)."""
        return self._world_size if self._world_size is not None else _distributed_default()[1]

    def indices(self) -> torch.LongTensor:
        """This rank's indices of the current epoch: the stream padded by wrapping to a multiple
        of ``world_size``, positions ``rank, rank + world_size, ...``."""
        rank, world = self.rank, self.world_size
        if not 0 <= rank < world:
            raise ConfigError(f"rank must lie in [0, world_size={world}), got {rank}")
        stream = self.full_stream()
        per_rank = -(-len(stream) // world)
        if per_rank * world != len(stream):
            stream = np.resize(stream, per_rank * world)
        return torch.from_numpy(stream[rank::world].copy())

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return -(-self.epoch_length // self.world_size)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        """The epoch and the cycles' state at its start (the random generator's state, the
        class order and every class's image order with their positions)."""
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
                f"epoch={self.epoch})")
