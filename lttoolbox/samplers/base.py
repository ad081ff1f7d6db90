"""The sampler contract: one epoch's index stream at once, reproducible and rank-aware.

Every re-sampling scheme in this family is "pick a class j with probability p_j, then an image
uniformly within class j" (Kang et al., ICLR 2020, Sec. 3, "Sampling strategies"), or a fixed
re-arrangement of the classes' images (random over/under-sampling). :class:`LTSampler` holds
what they all share:

* the class-sorted index array, so that a class-conditional draw is one multinomial over the
  classes plus a uniform offset into that class's block (no Python loop per image);
* the epoch stream ``(seed, epoch) -> indices``, drawn from a private numpy ``Generator`` so the
  global RNGs of Python, numpy and torch are never touched;
* deferred re-sampling (DRS, Cao et al., NeurIPS 2019, Sec. 3.3): outside the
  ``[start_epoch, end_epoch)`` window the plain ``instance`` stream is used;
* distributed slicing: every rank generates the same full stream, pads it by wrapping so that it
  divides evenly (as ``torch.utils.data.DistributedSampler`` does) and keeps every
  ``world_size``-th position starting at its rank.

Example:
    >>> import numpy as np
    >>> from lttoolbox.samplers import ClassBalancedSampler
    >>> labels = np.array([0] * 90 + [1] * 10)
    >>> sampler = ClassBalancedSampler(labels, num_classes=2, seed=0)
    >>> sampler.set_epoch(3)
    >>> idx = sampler.indices()          # torch.LongTensor of 100 indices into the data set
    >>> sampler.class_probabilities()
    array([0.5, 0.5])
"""
from __future__ import annotations

import warnings
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..checks import check_int, check_real  # noqa: F401  (check_real: its samplers import it here)
from ..api import Component, Context
from ..epochs import UnreachableEpochWarning
from ..errors import ConfigError, DataError

# Mixed into every seed so that the sampler's stream is independent of any other component that
# also derives a generator from the run's (seed, epoch).
_STREAM_TAG = 0x5A3D1E


def check_labels(labels, num_classes: int | None) -> tuple[np.ndarray, int, np.ndarray]:
    """Validate training labels; return ``(labels as int64, num_classes, class counts)``.

    Raises:
        DataError: empty data set, labels that are not a 1-D integer array, a label outside
            ``[0, num_classes)``, or a class without any image (a re-sampler cannot draw from it,
            and a class that silently vanishes from training is almost always a data bug).
        ConfigError: ``num_classes`` not a positive integer.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise DataError(f"labels must be a 1-D array of class indices, got shape {arr.shape}")
    if arr.size == 0:
        raise DataError("the training set is empty: a sampler needs at least one labelled image")
    if arr.dtype.kind not in "iu":
        raise DataError(f"labels must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=True)
    if num_classes is None:
        num_classes = int(arr.max()) + 1
    num_classes = check_int("num_classes", num_classes, minimum=1)
    outside = (arr < 0) | (arr >= num_classes)
    if outside.any():
        where = np.flatnonzero(outside)
        raise DataError(
            f"label {int(arr[where[0]])} at position {int(where[0])} is outside "
            f"[0, {num_classes}) ({where.size} label(s) out of range); "
            f"check num_classes or the annotation file")
    counts = np.bincount(arr, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        shown = ", ".join(str(int(c)) for c in empty[:10]) + (", ..." if empty.size > 10 else "")
        raise DataError(
            f"{empty.size} of {num_classes} classes have no training image (class {shown}); "
            f"every class needs at least one image to be sampled")
    return arr, num_classes, counts


def check_label_matrix(labels, num_classes: int | None) -> tuple[np.ndarray, int, np.ndarray]:
    """Validate a multi-hot label matrix ``(N, C)``; return ``(matrix as float32, C, images per
    label)``.

    Raises:
        DataError: an empty set, values other than 0 and 1, a width other than ``num_classes``,
            or a label no image has.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels, dtype=np.float32)
    if arr.shape[0] == 0:
        raise DataError("the training set is empty: it needs at least one labelled image")
    if not np.isin(arr, (0.0, 1.0)).all():
        raise DataError("a multi-hot label matrix holds only 0 and 1")
    if num_classes is not None and arr.shape[1] != num_classes:
        raise DataError(f"the label matrix has {arr.shape[1]} columns for {num_classes} classes")
    counts = arr.sum(0).astype(np.int64)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise DataError(f"{empty.size} of {arr.shape[1]} labels have no training image (label "
                        f"{int(empty[0])}); every label needs at least one image")
    return arr, int(arr.shape[1]), counts


def _distributed_default() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class LTSampler(Component, Sampler):
    """Base class of every sampler: an epoch-wise index stream, reproducible and rank-aware.

    Subclasses change the stream drawn while the sampler is active, by overriding
    :meth:`_active_weights` (unnormalised class probabilities of a class-conditional draw) or,
    for streams that are not class-conditional draws, :meth:`_active_stream`,
    :meth:`_active_length` and :meth:`_active_probabilities`.

    A subclass declares only its own parameters (keyword-only) and passes the rest up
    (``def __init__(self, *args, q=0.5, **base)``, ``super().__init__(*args, **base)``), so
    that the labels may come first, positionally, as in ``ClassBalancedSampler(labels)``.

    Args:
        labels: Shorthand for ``context.labels`` (standalone use).
        context: What the data and the run tell the sampler (the trainer passes it). It reads
            ``labels`` (the training label of every image, 1-D integers, numpy array or
            tensor; for a sampler that declares ``multilabel``, a multi-hot matrix ``(N, C)``
            is accepted too: it is kept as ``label_matrix``, ``class_counts`` are the images per
            label, and the class-block machinery is not built), ``num_classes`` (C; ``None``
            infers ``max(labels) + 1``), ``seed`` (the stream depends only on
            ``(seed, epoch)``), ``rank`` and ``world_size`` (``None``:
            from ``torch.distributed`` if it is initialised, else 0 and 1) and
            ``total_epochs`` (progressive sampling needs it).
        num_classes, seed, rank, world_size, total_epochs: Shorthands for these fields of the
            context (standalone use: ``ClassBalancedSampler(labels, num_classes=10, seed=0)``).
        num_samples: Draws per epoch over all ranks; default N, the training-set size.
        start_epoch: Deferred re-sampling: before this epoch the plain ``instance`` stream is
            used.
        end_epoch: From this epoch on the ``instance`` stream is used again (default: never).

    Raises:
        ConfigError: a parameter of the wrong type or range.
        DataError: see :func:`check_labels`.
    """

    def __init__(self, labels=None, *, context: Context | None = None,
                 num_classes: int | None = None, seed: int | None = None,
                 rank: int | None = None, world_size: int | None = None,
                 total_epochs: int | None = None, num_samples: int | None = None,
                 start_epoch: int = 0, end_epoch: int | None = None):
        context = Context.given(context, labels=labels, num_classes=num_classes, seed=seed,
                                rank=rank, world_size=world_size, total_epochs=total_epochs)
        Component.__init__(self, start_epoch, end_epoch, context=context)
        rank, world_size, total_epochs = context.rank, context.world_size, context.total_epochs
        labels = context.labels
        if labels is not None and np.ndim(labels) == 2:
            # A multi-label set: only a sampler that declares ``multilabel`` reads the matrix.
            name = self.registry_name or type(self).__name__
            if not self.multilabel:
                raise DataError(f"sampler '{name}' draws by class id and takes single-label "
                                f"targets; the training labels are multi-hot rows")
            matrix, self.num_classes, self.class_counts = check_label_matrix(
                labels, context.num_classes)
            self.label_matrix = matrix
            # what the shared machinery reads: each image's index (no class blocks)
            self.labels = np.arange(len(matrix), dtype=np.int64)
        else:
            self.label_matrix = None
            self.labels, self.num_classes, self.class_counts = check_labels(labels,
                                                                            context.num_classes)
        self.seed = check_int("seed", context.seed, minimum=0)
        self._rank = None if rank is None else check_int("rank", rank, minimum=0)
        self._world_size = (None if world_size is None
                            else check_int("world_size", world_size, minimum=1))
        if self._rank is not None and self._world_size is not None:
            self._check_rank(self._rank, self._world_size)
        self.total_epochs = (None if total_epochs is None
                             else check_int("total_epochs", total_epochs, minimum=1))
        if self.total_epochs is not None and self.start_epoch >= self.total_epochs:
            warnings.warn(
                f"sampler start_epoch ({self.start_epoch}) >= total_epochs "
                f"({self.total_epochs}): the sampler never leaves the instance stream",
                UnreachableEpochWarning, stacklevel=2)
        self.num_samples = (len(self.labels) if num_samples is None
                            else check_int("num_samples", num_samples, minimum=1))
        # Stable sort keeps each class's images in data-set order, so the class blocks (and thus
        # the streams) do not depend on the sorting algorithm. A multi-label set has none.
        if self.label_matrix is None:
            self._by_class = np.argsort(self.labels, kind="stable")
            self._class_start = np.concatenate(([0], np.cumsum(self.class_counts)[:-1]))
        self._cache: tuple[int, np.ndarray] | None = None

    # ----------------------------------------------------------------- what subclasses change
    def _active_weights(self) -> np.ndarray:
        """Unnormalised class probabilities of the active phase (class-conditional samplers)."""
        raise NotImplementedError

    def _active_probabilities(self) -> np.ndarray:
        weights = np.asarray(self._active_weights(), dtype=np.float64)
        return weights / weights.sum()

    def _active_length(self) -> int:
        return self.num_samples

    def _active_stream(self, rng: np.random.Generator) -> np.ndarray:
        return self._draw_by_class(rng, self._active_probabilities(), self._active_length())

    # ----------------------------------------------------------------- shared machinery
    @property
    def num_images(self) -> int:
        """N, the number of training images."""
        return len(self.labels)

    @property
    def instance_probabilities(self) -> np.ndarray:
        """n_j / N, the natural class distribution."""
        return self.class_counts / self.class_counts.sum()

    def class_probabilities(self) -> np.ndarray:
        """The class distribution this epoch's stream aims at, shape ``(C,)``, summing to 1.

        Outside the ``[start_epoch, end_epoch)`` window this is the instance distribution.
        """
        if not self.active:
            return self.instance_probabilities
        return self._active_probabilities()

    def class_level_frequencies(self) -> np.ndarray | None:
        """``P^C_i``: per draw, the chance of one given image of class ``i`` drawn through a
        class-conditional draw of class ``i`` this epoch, ``p_i / n_i``, shape ``(C,)``; ``None``
        when the stream is plain shuffling (every image ``1 / N`` whatever its classes).

        Under a class-conditional draw an image with several labels is reached through each of
        them, so its chance per draw is ``P^I(x) = sum_i y_i P^C_i``; the re-balanced weighting of
        the distribution-balanced loss is ``P^C_i / P^I(x)`` (Wu et al., ECCV 2020; see
        :class:`~lttoolbox.losses.multilabel.DistributionBalancedLoss`), which reads this.

        Example:
            >>> from lttoolbox.samplers import ClassBalancedSampler
            >>> s = ClassBalancedSampler(np.array([0, 0, 0, 1]), seed=0)
            >>> s.class_level_frequencies().tolist()
            [0.16666666666666666, 0.5]
        """
        if not self.active:
            return None
        return self._active_probabilities() / self.class_counts

    @property
    def epoch_length(self) -> int:
        """Length of this epoch's full stream over all ranks (before distributed padding)."""
        return self._active_length() if self.active else self.num_samples

    def _generator(self) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(
            np.random.SeedSequence([self.seed, self.epoch, _STREAM_TAG])))

    def _instance_stream(self, rng: np.random.Generator, length: int) -> np.ndarray:
        """Shuffling without replacement; an epoch longer than N chains fresh permutations."""
        n = self.num_images
        if length <= n:
            return rng.permutation(n)[:length]
        reps = -(-length // n)
        return rng.permuted(np.tile(np.arange(n), (reps, 1)), axis=1).ravel()[:length]

    def _draw_by_class(self, rng: np.random.Generator, probs: np.ndarray,
                       length: int) -> np.ndarray:
        """``length`` i.i.d. draws: class j with probability ``probs[j]``, then a uniform image
        of class j. Inverse-CDF sampling of the class, then an offset into the class block."""
        cdf = np.cumsum(probs, dtype=np.float64)
        cdf /= cdf[-1]
        cls = np.searchsorted(cdf, rng.random(length), side="right")
        np.minimum(cls, self.num_classes - 1, out=cls)  # guards u == 1.0 after rounding only
        counts = self.class_counts[cls]
        offset = (rng.random(length) * counts).astype(np.int64)
        np.minimum(offset, counts - 1, out=offset)
        return self._by_class[self._class_start[cls] + offset]

    def _within_class_shuffle(self, rng: np.random.Generator) -> np.ndarray:
        """The class-sorted index array with every class block freshly permuted."""
        sorted_labels = self.labels[self._by_class]
        # One float sort instead of a lexsort: the label is the integer part, the key the
        # fractional part, so blocks stay in class order and are shuffled within.
        return self._by_class[np.argsort(sorted_labels + rng.random(self.num_images))]

    def full_stream(self) -> np.ndarray:
        """The current epoch's whole index stream over all ranks (numpy int64, unpadded)."""
        if self._cache is None or self._cache[0] != self.epoch:
            rng = self._generator()
            stream = (self._active_stream(rng) if self.active
                      else self._instance_stream(rng, self.num_samples))
            self._cache = (self.epoch, np.ascontiguousarray(stream, dtype=np.int64))
        return self._cache[1]

    @staticmethod
    def _check_rank(rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must lie in [0, world_size={world_size}), got {rank}")

    @property
    def rank(self) -> int:
        """This process's rank (resolved from ``torch.distributed`` when not given)."""
        return self._rank if self._rank is not None else _distributed_default()[0]

    @property
    def world_size(self) -> int:
        """Number of ranks (resolved from ``torch.distributed`` when not given)."""
        return self._world_size if self._world_size is not None else _distributed_default()[1]

    def indices(self) -> torch.LongTensor:
        """This rank's indices of the current epoch, deterministic in ``(seed, epoch)``.

        The full stream is padded by wrapping around to a multiple of ``world_size``; rank ``r``
        takes positions ``r, r + world_size, ...``, so the ranks' slices are disjoint and their
        union is the padded stream.
        """
        rank, world = self.rank, self.world_size
        self._check_rank(rank, world)
        stream = self.full_stream()
        per_rank = -(-len(stream) // world)
        if per_rank * world != len(stream):
            stream = np.resize(stream, per_rank * world)  # np.resize repeats cyclically
        return torch.from_numpy(stream[rank::world].copy())

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return -(-self.epoch_length // self.world_size)

    def __repr__(self) -> str:
        name = self.registry_name or type(self).__name__
        return (f"{type(self).__name__}(name={name!r}, N={self.num_images}, "
                f"C={self.num_classes}, epoch={self.epoch}, start_epoch={self.start_epoch})")
