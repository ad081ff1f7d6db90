"""``train.compile``: the training step through ``torch.compile``.

``auto`` compiles on CUDA and runs eagerly elsewhere (on a CPU the compile time is rarely won
back in the short runs made there); ``on`` compiles on any device; ``off`` never. What is compiled
is the step of :class:`~lttoolbox.engine.step.TrainStep` (the model's forward with the phase's
hooks and the whole loss, and through AOTAutograd its backward), inside the DDP wrapper when there
is one. On one CUDA device the mode is ``reduce-overhead``, which adds CUDA graphs: their shapes
must be static, and they are, since every full batch has the same shape and the last, partial
batch of an epoch is run eagerly by the trainer instead of compiling a second graph (nothing is
dropped or padded, so the epoch is the same as without compilation). Across processes the default
mode is used: DDP's gradient all-reduce runs from hooks that a CUDA graph would capture.

The first compiled call pays the compilation; the trainer times it (with one device
synchronisation) and reports it as ``compile_seconds``, apart from the training time.

Example:
    >>> step = torch.nn.Linear(2, 1)
    >>> compile_step(step, "off", torch.device("cpu")) is None
    True
"""
from __future__ import annotations

import warnings

import torch

from ..errors import ConfigError
from ..recipe_checks import COMPILE_MODES as MODES

# Which torch.compile mode a device gets; CUDA graphs need static shapes, which the trainer
# guarantees by running partial batches eagerly.
CUDA_MODE = "reduce-overhead"
# torch.compile's backend; None is its default (inductor). Tests put a lighter one here.
BACKEND = None


class CompiledStep:
    """A compiled step and whether its compilation has been paid for (and how long it took).

    A step that fails to compile (an operation the compiler cannot handle) falls back to the
    eager step for the rest of the phase with one warning, rather than ending an unattended run:
    compilation happens before the first compiled call executes anything, so nothing ran twice.
    """

    def __init__(self, fn, eager, mode: str | None):
        self.fn = fn
        self.eager = eager
        self.mode = mode
        self.ready = False
        self.seconds = 0.0
        self.failed: str | None = None
        self.rows: int | None = None  # the rows of the batches it compiled for

    def takes(self, rows: int) -> bool:
        """Whether a full batch of ``rows`` rows (as the components left it: two views of
        each drawn image, say) runs compiled: the first one fixes the rows, and a
        full batch of other rows (a component whose added rows vary) runs eagerly rather than
        compiling one graph per shape."""
        if self.rows is None:
            self.rows = rows
        return rows == self.rows

    def __call__(self, *args, **kwargs):
        if self.ready or self.failed:
            return (self.eager if self.failed else self.fn)(*args, **kwargs)
        try:
            return self.fn(*args, **kwargs)
        except Exception as err:  # the compiler's errors have many types
            self.failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            warnings.warn(f"torch.compile failed on the training step ({self.failed}); this "
                          f"phase trains eagerly", RuntimeWarning, stacklevel=2)
            return self.eager(*args, **kwargs)

    def mark_ready(self, device: torch.device, seconds: float) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.ready = True
        self.seconds = seconds


def compile_step(step: torch.nn.Module, mode: str, device: torch.device,
                 distributed: bool = False) -> CompiledStep | None:
    """The compiled step for ``train.compile`` (``None``: run eagerly)."""
    if mode not in MODES:
        raise ConfigError(f"must be one of {', '.join(MODES)}, got {mode!r}", key="train.compile")
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    compile_mode = CUDA_MODE if device.type == "cuda" and not distributed else None
    options = {"backend": BACKEND} if BACKEND is not None else {"mode": compile_mode}
    return CompiledStep(torch.compile(step, dynamic=False, **options), step, compile_mode)
