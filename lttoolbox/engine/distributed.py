"""Training across processes with PyTorch's own engine (``torch.distributed``, DDP).

``torchrun --nproc_per_node N $(which lttrain) recipe.yaml`` starts N processes; each reads its
rank from the environment torchrun sets, and :func:`init_from_environment` joins the process group
(nccl on CUDA, gloo on the CPU). Then, in the trainer:

* every sampler generates the same global epoch stream on every rank and each rank takes every
  N-th position (:class:`~lttoolbox.samplers.base.Sampler`), so the stream, and hence a resumed
  run, does not depend on the number of processes;
* ``train.batch_size`` stays the global batch: each rank trains on ``batch_size / N`` images a
  step, and DDP averages the gradients, so a step sees the same images as one process would;
* evaluation shards the test set without padding and gathers every prediction with its index:
  each image is counted exactly once (:func:`gather_predictions`);
* rank 0 alone writes logs, checkpoints and results.

Example:
    >>> world = World.current()
    >>> world.rank, world.size, world.is_main
    (0, 1, True)
"""
from __future__ import annotations

import datetime
import logging
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..errors import ConfigError, LTError

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(LTError):
    """The processes of a distributed run disagree (a rank missed predictions, for example)."""


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def current(cls) -> "World":
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return cls(dist.get_rank(), dist.get_world_size(), local)


def launched_by_torchrun() -> bool:
    """Whether the environment of a torchrun (or equivalent) launch is present."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_environment(device: str = "auto") -> bool:
    """Join the process group a torchrun launch describes; nothing without one.

    The backend is nccl when the processes train on CUDA, gloo otherwise. Returns whether a
    process group was initialised here.
    """
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return False
    missing = [v for v in LAUNCH_VARIABLES if v not in os.environ]
    if missing:
        raise ConfigError(f"a distributed launch needs the environment variables "
                          f"{', '.join(LAUNCH_VARIABLES)}; missing {', '.join(missing)} "
                          f"(start with torchrun)")
    cuda = torch.cuda.is_available() and not str(device).startswith("cpu")
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    quiet_unless_main(dist.get_rank())
    return True


def quiet_unless_main(rank: int) -> None:
    """Rank 0 alone reports: on the other ranks Python warnings and log records up to warnings
    are dropped (every rank builds the same run, so each would print the same lines again, in
    the middle of rank 0's tables); errors still show."""
    if rank:
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)


def local_device(device: torch.device, world: World) -> torch.device:
    """The device of this rank: its own GPU (``cuda:LOCAL_RANK``) under a distributed launch."""
    if world.distributed and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def per_rank_batch(batch_size: int, world: World, key: str = "train.batch_size") -> int:
    """The batch of one rank: the recipe's global batch divided by the number of processes."""
    if batch_size % world.size:
        raise ConfigError(f"is the global batch, split evenly across the {world.size} processes; "
                          f"{batch_size} is not divisible by {world.size}", key=key)
    return batch_size // world.size


def mean_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of a tensor (a scalar or a few sums) over every rank (itself in one process)."""
    if not world.distributed:
        return value
    value = value.detach().clone().float()
    dist.all_reduce(value)
    return value / world.size


def global_normalizer(world: World):
    """For :func:`~lttoolbox.losses.mixed_loss` under DDP: the loss's normalizers (the sum of the
    targets' class weights, or the batch size) summed over every rank and divided by the number
    of ranks; ``None`` in one process.

    Each rank's loss is then ``N * sum_{i in rank} w_i l_i / sum_{all i} w_i``, and DDP's mean of
    the ranks' gradients is the gradient of ``sum_{all i} w_i l_i / sum_{all i} w_i``, the
    global batch's weighted mean that one process computes. Dividing by each rank's own sum
    instead weighs the ranks equally whatever their share of the weight; even unweighted, the
    ranks' last batches may differ in size. One all-reduce of one or two numbers per step, on
    the device (no host synchronization); the sum is a constant for autograd, as one process's
    normalizer is. The logged loss, averaged over the ranks, is the global one.
    """
    if not world.distributed:
        return None

    def normalize(local: torch.Tensor) -> torch.Tensor:
        total = local.detach().float().clone()
        dist.all_reduce(total)
        return total / world.size

    return normalize


def gather_predictions(positions: np.ndarray, pred: np.ndarray, conf: np.ndarray, total: int,
                       world: World) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's ``(position, prediction, confidence)`` in position order, on every rank.

    Raises:
        DistributedError: the gathered positions are not each of ``0 .. total - 1`` exactly once.
    """
    if world.distributed:
        parts = [None] * world.size
        dist.all_gather_object(parts, (np.asarray(positions), pred, conf))
        positions = np.concatenate([p[0] for p in parts])
        pred = np.concatenate([p[1] for p in parts])
        conf = np.concatenate([p[2] for p in parts])
    order = np.argsort(positions, kind="stable")
    if len(positions) != total or not np.array_equal(positions[order], np.arange(total)):
        raise DistributedError(f"evaluation gathered {len(positions)} predictions "
                               f"({len(np.unique(positions))} distinct images) for a split of "
                               f"{total}: every image must be counted exactly once")
    return pred[order], conf[order]


def wrap(step: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """The training step wrapped in DistributedDataParallel across the ranks (itself in one
    process).

    ``find_unused_parameters`` is on when a component brings trainable parameters, which a step
    may leave out (a generator before its threshold); the step computes its whole loss inside
    ``forward``, so every parameter that gets a gradient is found from that output.
    """
    if not world.distributed:
        return step
    if not any(p.requires_grad for p in step.parameters()):
        return step  # nothing to synchronise (a phase that trains nothing)
    return torch.nn.parallel.DistributedDataParallel(
        step, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=any(p.requires_grad for p in step.parts.parameters()))


def sync_buffers(model: torch.nn.Module, world: World) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics): each rank updates its
    own copy in the last step, and rank 0's are the ones checkpointed."""
    if world.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast_object(value, world: World):
    """Rank 0's ``value`` on every rank."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
