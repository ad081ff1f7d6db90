"""The data path: how the trainer gets an epoch's batches, extra training images and evaluation
batches, whatever holds the images.

The trainer never indexes image tensors itself. It hands the sampler's indices of an epoch to the
data path and reads transformed float batches on the training device; a component that needs more
images than the batch (CMO's foreground batch) asks the same object through ``fetch``. Two
implementations share the interface:

* :class:`MemoryPath` (CIFAR, digits, small folders): the uint8 images live on the training device
  and are cropped, flipped and normalised there, a whole batch at once;
* :class:`StreamPath` (ImageNet-LT, Places-LT, iNaturalist): the index stream feeds DataLoader
  workers that decode and augment each image (:mod:`lttoolbox.data.stream`); pinned memory,
  prefetching and persistent workers; the normalisation runs on the device.

So every sampler, loss, augmentation and generator works unchanged on both.

Example:
    >>> from lttoolbox.data.digits import digits_lt
    >>> path = build_data_path(digits_lt(), torch.device("cpu"), seed=0)
    >>> x, y = next(path.epoch(torch.arange(8), np.arange(8), batch_size=4, epoch_key=(0, 0)))
    >>> tuple(x.shape), x.dtype
    ((4, 1, 8, 8), torch.float32)
"""
from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .stream import EpochBatches, FileSplit, ImageFiles, LoaderFiles, batches, collate, draw_seeds
from .transforms import BatchTransform

# Tags that keep the streaming path's seed streams apart from the per-image epoch stream.
LOADER_TAG = 0x4C4F4144  # "LOAD": the loader's own generator (its workers' base seed)
FETCH_TAG = 0x46455443   # "FETC": fetch (CMO's foreground images)


def shard(total: int, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s positions of an evaluation set: contiguous, without padding, so the shards
    cover every position exactly once (``DistributedSampler`` pads by repeating images).

    Example:
        >>> [shard(5, r, 2).tolist() for r in range(2)]
        [[0, 1, 2], [3, 4]]
    """
    return np.array_split(np.arange(total, dtype=np.int64), world_size)[rank]


class _Splits:
    """What both paths share: the evaluation splits, by name."""

    _splits: dict

    def eval_size(self, split: str) -> int:
        """Number of images of the ``test`` or ``val`` split."""
        return len(self._splits[split])

    def eval_labels(self, split: str) -> np.ndarray:
        """The labels of the ``test`` or ``val`` split, in order."""
        return self._splits[split].labels.numpy()


class MemoryPath(_Splits):
    """Images held on the training device as uint8, transformed a batch at a time.

    Random crops and flips draw from torch's global RNG on the device, which the trainer seeds and
    checkpoints, so an interrupted run resumes exactly.
    """

    kind = "memory"

    def __init__(self, bundle, device: torch.device):
        self.device = device
        self.train_transform = bundle.train_transform
        self.eval_transform = bundle.eval_transform
        self.images = bundle.train.images.to(device)
        self.labels = bundle.train.labels.to(device)
        self._splits = {"test": bundle.test, "val": bundle.val}
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.in_channels = int(self.images.shape[1])
        self.image_size = int(self.images.shape[-1])

    def train_labels(self) -> np.ndarray:
        """The training labels (grown by :meth:`add`), on the host."""
        return self.labels.cpu().numpy()

    def epoch(self, indices: torch.Tensor, positions: np.ndarray, batch_size: int,
              epoch_key: Sequence[int], steps: int | None = None
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The transformed batches of this rank's ``indices`` (``positions``: their places in the
        epoch's global stream, unused here)."""
        indices = indices.to(self.device)
        steps = steps if steps is not None else -(-indices.numel() // batch_size)
        for step in range(steps):
            idx = indices[step * batch_size:(step + 1) * batch_size]
            yield self.train_transform(self.images[idx]), self.labels[idx]

    def fetch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training images (transformed as the batches are) and labels, on the training device."""
        indices = indices.to(self.device)
        return self.train_transform(self.images[indices]), self.labels[indices]

    def sample(self, count: int) -> torch.Tensor:
        """The first ``count`` training images, evaluation-transformed (no random draw)."""
        return self.eval_transform(self.images[:count])

    def _split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self._on_device:
            data = self._splits[split]
            self._on_device[split] = (data.images.to(self.device), data.labels.to(self.device))
        return self._on_device[split]

    def eval_batches(self, split: str, batch_size: int, positions: np.ndarray | None = None
                     ) -> Iterator[torch.Tensor]:
        """Evaluation-transformed batches of the split's images at ``positions`` (all by default),
        in order."""
        images, _ = self._split(split)
        if positions is not None and len(positions) != len(images):
            images = images[torch.as_tensor(positions, device=self.device)]
        for start in range(0, images.shape[0], batch_size):
            yield self.eval_transform(images[start:start + batch_size])

    def eval_fetch(self, split: str, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The split's images at ``indices`` (evaluation-transformed) and their labels, on the
        training device."""
        images, labels = self._split(split)
        idx = torch.as_tensor(indices, device=self.device)
        return self.eval_transform(images[idx]), labels[idx]

    def add(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Append generated training images (CAM-based re-sampling)."""
        self.images = torch.cat([self.images, images.to(self.device)])
        self.labels = torch.cat([self.labels, labels.to(self.device)])


class StreamPath(_Splits):
    """Images read from their files by DataLoader workers (see :mod:`lttoolbox.data.stream`).

    Args:
        bundle: A data bundle whose splits are :class:`~lttoolbox.data.stream.FileSplit`.
        device: The training device; batches are copied there from pinned memory and normalised
            there.
        seed: The run's seed; with the epoch key and the stream position it seeds each image's
            transform.
        workers: DataLoader worker processes (0 decodes in the training process).
        prefetch: Batches each worker prepares ahead.
    """

    kind = "stream"

    def __init__(self, bundle, device: torch.device, seed: int, workers: int = 0,
                 prefetch: int = 2):
        self.device = device
        self.seed = int(seed)
        self.workers = int(workers)
        self.prefetch = int(prefetch)
        self.train = bundle.train
        self._splits = {"test": bundle.test, "val": bundle.val}
        self.train_transform = bundle.train_transform
        self.eval_transform = bundle.eval_transform
        # uint8 -> normalised float32 channels_last, on the device (no crop: done per image)
        self.normalise = BatchTransform(bundle.train.mean, bundle.train.std)
        self.in_channels = 3
        self.image_size = int(bundle.train.image_size)
        self._batches = EpochBatches()
        self._loader = None
        # The loader's own generator: creating a DataLoader iterator draws its workers' base seed
        # from ``generator`` (torch's global one when None), and the mixing augmentations draw
        # from the global one too. A draw there would shift every later mixing draw by one, and
        # the loader makes it at other times with 0 workers (every epoch) than with persistent
        # workers (once per process), so results would change with the worker count and across
        # a resume. Reseeded by (seed, phase, epoch) before each epoch.
        self._generator = torch.Generator()
        # CMO's foreground images: seeded by (seed, phase, epoch, call within the epoch), which
        # a resumed run (it restarts at an epoch's start) repeats exactly.
        self._epoch_key: tuple[int, ...] = ()
        self._fetch_calls = 0

    def train_labels(self) -> np.ndarray:
        return self.train.labels.numpy()

    def _loader_kwargs(self) -> dict:
        kwargs = {"num_workers": self.workers, "pin_memory": self.device.type == "cuda",
                  "collate_fn": collate}
        if self.workers:
            kwargs.update(prefetch_factor=self.prefetch, persistent_workers=True)
        return kwargs

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalise(x.to(self.device, non_blocking=True))

    def epoch(self, indices: torch.Tensor, positions: np.ndarray, batch_size: int,
              epoch_key: Sequence[int], steps: int | None = None
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The transformed batches of this rank's ``indices``; image ``i`` of the epoch's global
        stream draws its augmentation from a generator seeded by ``(seed, epoch_key, i)``.

        The epoch starts here (not at the first batch): :meth:`fetch` counts its calls from this
        point."""
        indices = indices.cpu().numpy()
        seeds = draw_seeds(self.seed, epoch_key, positions)
        steps = steps if steps is not None else -(-len(indices) // batch_size)
        items = list(zip(indices.tolist(), seeds.tolist()))
        self._batches.set([items[s * batch_size:(s + 1) * batch_size] for s in range(steps)])
        self._epoch_key, self._fetch_calls = tuple(int(k) for k in epoch_key), 0
        self._generator.manual_seed(int(draw_seeds(self.seed, (LOADER_TAG, *self._epoch_key),
                                                   np.zeros(1))[0]))
        if self._loader is None:  # built once: its persistent workers serve every epoch
            self._loader = torch.utils.data.DataLoader(
                LoaderFiles(self.train, self.train_transform), batch_sampler=self._batches,
                generator=self._generator, **self._loader_kwargs())
        return self._batches_of(self._loader)

    def _batches_of(self, loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in batches(loader):
            yield self._to_device(x), y.to(self.device, non_blocking=True)

    def fetch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training images decoded and transformed in this process, on the training device.

        The ``k``-th call of an epoch seeds image ``i`` by ``(seed, phase, epoch, k, i)``: a
        function of where the run is, not of how many calls this process made, so a resumed
        run repeats the uninterrupted one's images."""
        data = ImageFiles(self.train, self.train_transform)
        seeds = draw_seeds(self.seed, (FETCH_TAG, *self._epoch_key, self._fetch_calls),
                           np.arange(len(indices)))
        self._fetch_calls += 1
        pairs = [data[(int(i), int(s))] for i, s in zip(indices.tolist(), seeds.tolist())]
        x = torch.stack([p[0] for p in pairs])
        return self._to_device(x), torch.stack([p[1] for p in pairs]).to(self.device)

    def sample(self, count: int) -> torch.Tensor:
        data = ImageFiles(self.train, self.eval_transform)
        return self._to_device(torch.stack([data[i][0] for i in range(count)]))

    def eval_batches(self, split: str, batch_size: int, positions: np.ndarray | None = None
                     ) -> Iterator[torch.Tensor]:
        data = LoaderFiles(self._splits[split], self.eval_transform)
        order = (np.arange(len(data)) if positions is None else np.asarray(positions)).tolist()
        kwargs = self._loader_kwargs()
        kwargs.pop("persistent_workers", None)  # a loader per evaluation
        loader = torch.utils.data.DataLoader(
            data, batch_sampler=[order[s:s + batch_size] for s in range(0, len(order), batch_size)],
            generator=torch.Generator().manual_seed(self.seed), **kwargs)  # not the global one
        for x, _ in batches(loader):
            yield self._to_device(x)

    def eval_fetch(self, split: str, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The split's images at ``indices``, decoded and evaluation-transformed in this process
        (no random draw), and their labels, on the training device."""
        data = ImageFiles(self._splits[split], self.eval_transform)
        pairs = [data[int(i)] for i in np.asarray(indices).tolist()]
        x = torch.stack([p[0] for p in pairs])
        y = torch.stack([torch.as_tensor(p[1]) for p in pairs])
        return self._to_device(x), y.to(self.device)

    def add(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        raise ConfigError("images generated during training (CAM-based re-sampling) need the "
                          "in-memory data path; set data.path: memory", key="data.path")


def default_workers(world_size: int = 1) -> int:
    """DataLoader workers per process for ``train.workers: auto``: the CPU cores shared among the
    processes of this machine, at most 8 (past that the decoders wait on the model)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, (cores or 1) // max(1, world_size) - 1))


def build_data_path(bundle, device: torch.device, seed: int = 0, workers: int | str = "auto",
                    world_size: int = 1, stats: tuple | None = None) -> MemoryPath | StreamPath:
    """The data path of a bundle: :class:`StreamPath` for file splits, else :class:`MemoryPath`.

    Args:
        stats: ``(mean, std)`` to normalise evaluation images with instead of the bundle's (a
            trained model expects the statistics of its own training set).
    """
    if isinstance(bundle.train, FileSplit):
        count = default_workers(world_size) if workers == "auto" else int(workers)
        path = StreamPath(bundle, device, seed, workers=count)
        if stats is not None:
            path.normalise = BatchTransform(*stats)
        return path
    path = MemoryPath(bundle, device)
    if stats is not None:
        path.eval_transform = BatchTransform(*stats)
    return path
