"""The trainer's side of :class:`lttoolbox.api.PhaseEvents`: what a phase-start or phase-end
action may see and do, without the trainer knowing what the action does."""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..api import PhaseEvents
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
