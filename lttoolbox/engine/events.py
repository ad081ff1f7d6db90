"""The trainer's side of :class:`lttoolbox.api.PhaseEvents`: what a phase-start or phase-end
action may see and do, without the trainer knowing what the action does."""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import numpy as np
import torch

from ..api import PhaseEvents, StepEvents
from ..rundir import RunDir
from .checkpoint import CheckpointError, atomic_save, load_checkpoint
from .distributed import barrier


class RunPhaseEvents(PhaseEvents):
    """Phase ``index`` of a running :class:`~lttoolbox.engine.trainer.Trainer`.

    Args:
        trainer: The trainer.
        index: The phase's index.
        replay: Re-entering a phase a resumed run already started: artifacts are read, never
            computed again.
        autocast: The phase's autocast context factory, for :meth:`evaluate`.
    """

    def __init__(self, trainer, index: int, replay: bool = False, autocast=None):
        self._trainer = trainer
        self._replay = replay
        self._autocast = autocast
        self.index = index
        self.name = trainer.phases[index].name
        self.model = trainer.model
        self.log = trainer.log
        self.training_set_changed = False  # the trainer then rebuilds the phase

    @property
    def images(self) -> torch.Tensor:
        return self._trainer.data_path.images

    @property
    def labels(self) -> torch.Tensor:
        return self._trainer.data_path.labels

    @property
    def eval_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self._trainer.data_path.eval_transform

    @property
    def data_kind(self) -> str:
        return self._trainer.data_path.kind

    def train_labels(self) -> Any:
        return self._trainer.data_path.train_labels()

    def artifact(self, name: str, make: Callable[[], dict]) -> dict:
        trainer = self._trainer
        path = RunDir(trainer.out).artifact(name, self.name)
        # Rank 0 computes it; every rank then reads the same file.
        if trainer.world.is_main and not self._replay and not path.exists():
            atomic_save(make(), path)
        barrier(trainer.world)
        if not path.exists():
            raise CheckpointError(f"{path} is missing: what phase '{self.name}' computed at its "
                                  f"start ({name}) cannot be made again exactly; start the run "
                                  f"afresh")
        return load_checkpoint(path)

    def add_training_images(self, images: torch.Tensor, labels: torch.Tensor,
                            seconds: float | None = None) -> None:
        self._trainer.data_path.add(images, labels)
        self._trainer.generated[self.name] = {"images": int(labels.numel()), "seconds": seconds}
        self.training_set_changed = True

    def evaluate(self, split: str = "val") -> dict:
        if split != "val":
            raise ValueError(f"a choice is made on the validation split, never on '{split}'")
        trainer = self._trainer
        return trainer.evaluate(trainer.phases[self.index], self._autocast, split)

    def record(self, key: str, value: Any) -> None:
        self._trainer.selection[key] = value


# Tags a validation draw's stream apart from every other seeded stream of the run.
VALIDATION_STREAM = 0x5641_4C31


class RunStepEvents(StepEvents):
    """The steps of one epoch of phase ``index``; :meth:`begin` moves it to the next step.

    Args:
        trainer: The trainer.
        index: The phase's index.
        epoch: The epoch.
        steps: The epoch's steps.
        optimizer: The phase's optimizer.
        objective: The step's forward (``TrainStep`` or its wrapper): batch to losses.
        autocast: The phase's autocast context factory (``None``: full precision).
    """

    def __init__(self, trainer, index: int, epoch: int, steps: int, optimizer,
                 objective: Callable, autocast=None):
        self._trainer = trainer
        self._index = index
        self._objective = objective
        self._autocast = autocast
        self._draws = 0
        self.model = trainer.model
        self.optimizer = optimizer
        self.epoch = epoch
        self.steps = steps
        self.step = -1
        self.lr = 0.0
        self.batch = None

    def begin(self, step: int, batch, lr: float) -> None:
        self.step, self.batch, self.lr, self._draws = step, batch, lr, 0

    def objective(self, batch) -> torch.Tensor:
        with self._autocast() if self._autocast else contextlib.nullcontext():
            return self._objective(batch)

    def validation_batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        trainer = self._trainer
        total = trainer.data_path.eval_size("val") if trainer.data.val is not None else 0
        if not 0 < size <= total:
            raise ValueError(f"asked for {size} validation images; the validation split has "
                             f"{total} (data.val_per_class)")
        seed = trainer.phases[self._index].recipe["train"]["seed"]
        rng = np.random.default_rng([VALIDATION_STREAM, seed, self._index, self.epoch,
                                     self.step, trainer.world.rank, self._draws])
        self._draws += 1
        return trainer.data_path.eval_fetch("val", rng.choice(total, size, replace=False))
