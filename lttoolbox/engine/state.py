"""The run directory's state: what a resumed run checks and restores, what a checkpoint keeps.

Checkpoint keys and the per-component state list (one entry per component, in build order;
``None`` in runs written before every component kept a state) are unchanged, so older
checkpoints still load.
"""
from __future__ import annotations

import yaml

from ..errors import ConfigError
from ..recipe import phase_recipes, recipe_differences, recipe_hash, resolve_saved
from ..rundir import RunDir
from ..upgrade import upgrade_record
from ..yamlio import load_yaml
from .checkpoint import CheckpointError, atomic_save, load_checkpoint
from .phases import Phase

CHECKPOINT = RunDir.CHECKPOINT
RESULTS = RunDir.RESULTS
RECIPE = RunDir.RECIPE
CHECKPOINT_KEYS = {"phase", "epoch", "phase_done", "model", "optimizer", "scaler", "components",
                   "rng", "history", "seconds", "images", "recipe_hash"}


class RunState:
    """The trainer's checks of its run directory and its checkpoint restore (a mixin of
    :class:`~lttoolbox.engine.trainer.Trainer`)."""

    def _check_run_dir(self) -> None:
        """What the run directory holds must fit: no run there unless resuming, and then the
        saved recipe and the checkpoint must be this recipe's."""
        existing = [n for n in (CHECKPOINT, RESULTS) if (self.out / n).exists()]
        if existing and not self.resume:
            raise ConfigError(f"run directory {self.out} already holds a run ({existing[0]}); "
                              f"pass --resume to continue it or choose another --out")
        self._state = self._start
        if not self.resume:
            return
        if (self.out / RECIPE).exists():
            try:
                saved = resolve_saved(load_yaml((self.out / RECIPE).read_text(encoding="utf-8")))
            except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as err:
                raise ConfigError(f"{self.out / RECIPE} is corrupt ({str(err).splitlines()[0]}); "
                                  f"restore it or delete it to resume from the checkpoint "
                                  f"alone") from None
            if recipe_hash(saved) != recipe_hash(self.recipe):
                diff = "; ".join(recipe_differences(saved, self.recipe, ("saved", "given")))
                raise ConfigError(f"--resume: the recipe differs from the one saved in "
                                  f"{self.out / RECIPE} ({diff}); resume with the same recipe "
                                  f"and overrides")
            self._keep_phase_names(saved)
        # A checkpoint written before phases were called so is read in today's spelling.
        self._state = (upgrade_record(load_checkpoint(self.out / CHECKPOINT))
                       if (self.out / CHECKPOINT).exists() else self._start)
        if self._state is not None:
            if not isinstance(self._state, dict) or not CHECKPOINT_KEYS <= set(self._state):
                raise CheckpointError(f"{self.out / CHECKPOINT} is not an lttoolbox checkpoint")
            if self._state["recipe_hash"] != recipe_hash(self.recipe):
                raise ConfigError(f"--resume: {self.out / CHECKPOINT} was written by another "
                                  f"recipe (hash {self._state['recipe_hash']}, this recipe's "
                                  f"{recipe_hash(self.recipe)}); resume with the recipe and "
                                  f"overrides it was started with")

    def _keep_phase_names(self, saved: dict) -> None:
        """Name the phases of a resumed run as its saved recipe does.

        Phase names are not hashed (they are notes in ``meta``), yet the run has already written
        them: its history rows and ``model-<phase>.pt``. A recipe given again may name them
        otherwise, and one that leaves them unnamed does so for every run written before the
        rename of stages to phases (its defaults were ``stage0``, ``stage1``, ...; they are
        ``phase0``, ``phase1``, ... now). The run keeps the names it started with.
        """
        if not self.recipe.get("phases"):
            return
        names = [p["meta"]["phase"] for p in phase_recipes(saved)]
        for recipe, name in zip(self.recipe["phases"], names):
            recipe["meta"]["phase"] = name
        for phase, name in zip(self.phases, names):
            phase.name = name  # checked again under the lock, after the phases were built

    @staticmethod
    def _component_states(phase: Phase) -> list:
        return [p.state_dict() for p in phase.components]

    @staticmethod
    def _load_components(phase: Phase, states: list) -> None:
        for part, saved in zip(phase.components, states):
            if saved is not None:  # None: written before every component kept a state
                part.load_state_dict(saved)

    def _load_state(self) -> dict | None:
        """Put the model where the checkpoint left it; re-create a phase's missing weights."""
        state = self._state
        if state is None:
            return None
        for index in range(state["phase"] + 1):
            self._enter_phase(index)
            self._before_phase(index, replay=True)
        self.model.load_state_dict(state["model"])
        self.selection = dict(state.get("selection") or {})
        self._reused = state.get("reused")
        phase = self.phases[state["phase"]]
        weights = RunDir(self.out).weights(phase.name)
        if state["phase_done"] and not weights.exists() and self.world.is_main:
            # interrupted while it was written, or the phase was reused from another run
            atomic_save(state["model"], weights)
            if state is not self._start:
                self.log.info(f"re-created {weights.name} from the checkpoint")
        if state is self._start:
            self.log.info(f"starting after phase '{phase.name}', reused from "
                          f"{state['reused']['from']} ({state['epoch'] + 1} epochs)")
        else:
            self.log.info(f"resuming {self.out}: phase '{phase.name}', after epoch "
                          f"{state['epoch'] + 1}")
        return state
