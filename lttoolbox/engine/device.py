"""Where and how a run computes: the device, autocast, CPU threads and the seeds."""
from __future__ import annotations

import random
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"not a device: {err}", key="train.device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"'{name}' was asked for but CUDA is not available", key="train.device")
    return device


def autocast_factory(mode: str, device: torch.device) -> tuple[Callable | None, bool]:
    """The autocast context for ``train.amp`` and whether fp16 loss scaling is needed.

    ``auto`` means bf16 (or fp16 where bf16 is missing) on CUDA and full precision on the CPU.
    """
    if mode == "auto":
        if device.type != "cuda":
            return None, False
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "off":
        return None, False
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    if mode == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 autocast needs CUDA; use bf16 on the CPU", key="train.amp")
    return (lambda: torch.autocast(device.type, dtype=dtype)), mode == "fp16"


def use_threads(threads: int | str) -> None:
    """``train.threads``: the CPU threads torch runs each operation on, for this process.

    ``auto`` leaves torch's own choice (one per core, or ``OMP_NUM_THREADS``) alone. A number
    calls ``torch.set_num_threads``. On a machine whose cores are busy with other work, fewer
    threads than cores can be much faster (the threads of one operation wait for each other).
    torch's inter-op pool is left alone: a process may set it only once, before any parallel
    work, and the training step runs its operations one after another.
    """
    if threads != "auto":
        torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def phase_seed(seed: int, index: int, *more: int) -> int:
    """The seed of phase ``index`` (> 0): a function of (seed, phase) alone, and distinct for
    different pairs (unlike ``seed + index``, which gives seed 1 phase 0 the stream of seed 0
    phase 1). ``more`` (epoch, rank) names a sub-stream."""
    return int(np.random.SeedSequence([seed, index, *more]).generate_state(1)[0])
