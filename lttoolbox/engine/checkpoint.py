"""Checkpoints: written atomically, read back as plain data only.

A checkpoint holds tensors and plain Python values (numbers, strings, lists, tuples, dicts), so it
is loaded with ``torch.load(weights_only=True)``: a file crafted to run code when unpickled is
refused instead of executed. The random generators' states are stored in that form too (numpy's
key array as a tensor).
"""
from __future__ import annotations

import io
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..rundir import atomic_write
from ..errors import LTError


class CheckpointError(LTError):
    """A checkpoint or weights file that cannot be read (truncated, empty, not ours, unsafe)."""


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    atomic_write(path, lambda handle: torch.save(obj, handle), binary=True)


def rng_state() -> dict:
    """Every random generator a run draws from, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                       float(cached)),
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss,
                         cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


RESUME_REMEDY = "remove it to start the run afresh, or restore it"


def load_checkpoint(path: str | os.PathLike, remedy: str = RESUME_REMEDY,
                    data: bytes | None = None) -> Any:
    """Load a checkpoint or weights file onto the CPU, as plain data only.

    Args:
        path: The file (with ``data``: only what the messages call it).
        remedy: What the user can do about a file that cannot be read, ended the message with
            (a run's checkpoint: start afresh or restore it; a weights file: choose another).
        data: The file's bytes, read from elsewhere (an archive member), checked the same way.

    Raises:
        CheckpointError: the file is empty, truncated, not a PyTorch file, or holds anything other
            than tensors and plain values (which could run code when unpickled).
    """
    path = Path(path)
    try:
        if (len(data) if data is not None else path.stat().st_size) == 0:
            raise CheckpointError(f"{path} is empty (an interrupted copy?); {remedy}")
        return torch.load(io.BytesIO(data) if data is not None else path, map_location="cpu",
                          weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err):  # a class or function reference: what a crafted file needs
            raise CheckpointError(f"{path} was refused: it holds objects other than tensors and "
                                  f"plain values, which could run code when loaded") from None
        raise CheckpointError(f"{path} cannot be read (not a checkpoint, or damaged); "
                              f"{remedy}") from None
    except (EOFError, RuntimeError, OSError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path} cannot be read ({first}); it is probably truncated: "
                              f"{remedy}") from None
