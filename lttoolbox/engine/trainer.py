"""The one training loop.

It knows families, never tricks: a sampler gives the epoch's indices, a loss scores logits
against two targets, augmentations and generators are hooks at named model points, and a
multi-phase recipe is a list of recipe overlays run one after another with the weights carried
over. Everything a recipe can get wrong is built and checked before the first step.

Example:
    >>> from lttoolbox.recipe import load_recipe
    >>> from lttoolbox.engine import train
    >>> results = train(load_recipe("configs/quickstart.yaml"), "runs/quickstart")  # doctest: +SKIP
    >>> results["top1"]  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import copy
import time
import warnings
from pathlib import Path

import torch

from ..api import RunEvents
from ..data.datapath import build_data_path
from ..epochs import UnreachableEpochWarning
from ..recipe import dump_recipe, phase_recipes, recipe_hash, resolve, unreachable_epoch_keys
from ..registry import DATASETS, MODELS
from ..data.dataset import data_info
from .build import PhaseBuilder
from .checkpoint import atomic_save, rng_state, set_rng_state
from .compile import compile_step
from .ema import WeightAverage
from .device import (autocast_factory, phase_seed, resolve_device,  # noqa: F401 (re-exported)
                     seed_everything, use_threads)
from .distributed import World, barrier, global_normalizer, local_device, wrap
from .loggers import LoggedRun, check_loggers, open_loggers
from .logging import RunLogger
from .loop import EpochLoop
from .monitor import epoch_line
from .optim import build_optimizer
from .phases import Phase, describe_generators
from .plots import PLOT_HINT, plots_available, write_run_plots
from .provenance import git_commit, machine_info
from .results import RunResults
from ..rundir import (EVAL_FIELDS, MULTILABEL_EVAL_FIELDS, RunDir, RunLock, append_log,
                      atomic_write_json, check_out_dir, remove_temp_files, write_log)
from .state import CHECKPOINT, RECIPE, RESULTS, RunState
from .step import TrainStep, loss_term_names


#: The metrics an evaluation during training (``eval.every``) logs: the single-label ones, and
#: a multi-label run's mAP.
EPOCH_EVAL_KEYS = ("top1", "mean_class_acc", "many", "medium", "few", "mAP", "head_mAP",
                   "medium_mAP", "tail_mAP")


class Trainer(RunState, PhaseBuilder, EpochLoop, RunResults):
    """Builds a run from a recipe and trains it; see :func:`train`."""

    def __init__(self, recipe: dict, out_dir: str | Path, resume: bool = False,
                 quiet: bool = False, logger: RunLogger | None = None, start: dict | None = None):
        self.recipe = resolve(recipe)
        self.out = Path(out_dir)
        # Under torchrun every rank trains; rank 0 alone prints and writes.
        self.world = World.current()
        self.log = ((logger or RunLogger(quiet=quiet)) if self.world.is_main
                    else RunLogger(silent=True))
        self.resume = resume
        self._state: dict | None = None  # the checkpoint a resumed run continues from
        # A first phase reused from another run (engine/reuse.py): where a run without a
        # checkpoint of its own starts.
        self._start = start
        self._lock: RunLock | None = None
        self._loss_reference: float | None = None
        self._loggers: list = []
        self.selection: dict = {}  # post-hoc choices made on the validation split
        self.generated: dict = {}  # images added to the training set, per phase
        self._reused: dict | None = None  # the phase taken from another run, if any
        self.phases: list[Phase] = []  # built below, once the run directory was checked
        self._run_info: RunEvents | None = None  # what before_run/after_run are sent
        check_out_dir(self.out)
        check_loggers(self.recipe["train"]["loggers"], train=self.recipe["train"])
        self._check_run_dir()
        phases = phase_recipes(self.recipe)
        first = phases[0]
        self.device = local_device(resolve_device(first["train"]["device"]), self.world)
        seed_everything(first["train"]["seed"])
        self.data = DATASETS.build(first["data"], key="data")
        # The trainer reads batches through the data path only (in memory or streamed).
        self.data_path = build_data_path(self.data, self.device, first["train"]["seed"],
                                         first["train"]["workers"], self.world.size,
                                         rank=self.world.rank)
        self.class_counts = list(self.data.train.class_counts)
        self.num_classes = len(self.class_counts)
        self.model = MODELS.build(first["model"], key="model", num_classes=self.num_classes,
                                  in_channels=self.data_path.in_channels,
                                  image_size=self.data_path.image_size).to(self.device)
        self._sync_batch_norm(first["train"]["sync_bn"])
        self.channels_last = first["train"]["channels_last"]
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # What a generator attached at a point is built for (one eval-mode forward of two
        # untransformed images: no random draw, so recipes without one are unaffected).
        self.point_shapes = (self.model.point_shapes(self.data_path.sample(2))
                             if any(s["generator"] for s in phases) else {})
        with warnings.catch_warnings():  # named once per recipe key below
            warnings.simplefilter("ignore", UnreachableEpochWarning)
            self.phases = [self._build_phase(s, i, first) for i, s in enumerate(phases)]
        # metrics.csv's loss-term columns: every name any phase logs, in order of appearance
        self._loss_terms = tuple(dict.fromkeys(n for st in self.phases
                                               for n in loss_term_names(st)))
        # metrics.csv's evaluation columns: the metrics of the run's kind
        self._eval_fields = MULTILABEL_EVAL_FIELDS if self.data.multilabel else EVAL_FIELDS
        # After every check passed: a refused recipe leaves the process as it found it.
        use_threads(first["train"]["threads"])
        # After every check passed, so a refused recipe prints its one error line only.
        for message in [*self.data.warnings, *unreachable_epoch_keys(self.recipe)]:
            self.log.warning(message)
        for message, too_large in describe_generators(self.phases, self.model):
            (self.log.warning if too_large else self.log.info)(message)

    # ----------------------------------------------------------------------------------- set-up
    @contextlib.contextmanager
    def _writing(self):
        """Hold the run directory's lock; the checks are repeated under it, since another
        process may have written there since this one looked. Only rank 0 writes, so only it
        locks."""
        if self._lock is not None or not self.world.is_main:
            yield
            return
        with RunLock(self.out) as lock:
            self._lock = lock
            try:
                self._check_run_dir()
                yield
            finally:
                self._lock = None

    # ----------------------------------------------------------------------------------- running
    def run(self) -> dict:
        """Train every phase, evaluate the final model, write and return ``results.json``."""
        with self._writing():
            try:
                history, seconds, images_seen = self.fit()
                final = self.phases[-1]
                autocast, _ = autocast_factory(final.recipe["train"]["amp"], self.device)
                results = self._results(self.evaluate(final, autocast), history, seconds,
                                        images_seen)
                if self.ema is not None:  # the final phase's moving average, beside the result
                    results["ema"] = self.evaluate(final, autocast, model=self.ema.module)
                if self.data.val is not None:  # for choices that must not be made on the test set
                    results["val"] = self.evaluate(final, autocast, "val")
                if self.world.is_main:
                    atomic_write_json(results, self.out / RESULTS)
                    # before the loggers' end, which send the plots with results.json
                    if plots_available():
                        write_run_plots(results, self.out)
                    else:
                        self.log.info(PLOT_HINT)
                for logger in self._loggers:
                    logger.results(results)
            finally:
                for logger in self._loggers:
                    logger.close()
                self._loggers = []
        barrier(self.world)  # every rank returns once results.json is written
        self.log.results_table(results, title=f"Results ({self.out})")
        return results

    def fit(self) -> tuple[list, float, int]:
        """Train every phase (resuming if asked); returns (history, seconds, images seen)."""
        with self._writing():
            return self._fit()

    def _fit(self) -> tuple[list, float, int]:
        main = self.world.is_main
        removed = remove_temp_files(self.out) if self.resume and main else []
        if removed:
            self.log.info(f"removed {len(removed)} temporary file(s) an interrupted write left")
        if main:
            dump_recipe(self.recipe, self.out / RECIPE)
            atomic_write_json(data_info(self.data), RunDir(self.out).data)
        state = self._load_state()
        if state is not None and state is self._start and main:
            # The reused phase becomes this run's own checkpoint, so an interruption from here
            # on resumes without the donor.
            atomic_save(state, self.out / CHECKPOINT)
        # The log is the checkpointed history, exactly: an epoch logged after the checkpoint
        # and then interrupted is trained and logged again, never twice.
        if main:
            write_log(self.out, state["history"] if state else [], self._loss_terms,
                      self._eval_fields)
        # The code that trains is the code of each attempt, not of whoever writes results.json:
        # record the commit when an attempt starts, every distinct one across resumes.
        self._commits = list(state.get("commits", [])) if state else []
        if (commit := git_commit()) not in self._commits:
            self._commits.append(commit)
        if not self._loggers and main:
            self._loggers = open_loggers(self.recipe["train"]["loggers"], LoggedRun(
                self.out, self.recipe, list(state["history"]) if state else [], self._commits,
                machine_info(self.device), self.log.warning))
        self._run_info = RunEvents(self.out, self.recipe, self.model, self.log,
                                   resumed=state is not None, rank=self.world.rank,
                                   world_size=self.world.size)
        for part in self._all_components():
            part.before_run(self._run_info)
        start_phase = state["phase"] if state else 0
        history = state["history"] if state else []
        attempt_start, attempt_epochs = time.perf_counter(), 0
        seconds = state["seconds"] if state else 0.0
        images_seen = state["images"] if state else 0
        for index in range(start_phase + 1 if state and state["phase_done"] else start_phase,
                           len(self.phases)):
            resumed_here = state is not None and index == start_phase and not state["phase_done"]
            phase = self.phases[index]
            if not resumed_here:
                if index > 0:
                    # Every draw at a phase boundary (a new head's weights, the phase's first
                    # batches) comes from a stream seeded by (seed, phase) alone, so a run
                    # resumed exactly at the boundary draws the same as an uninterrupted one.
                    seed_everything(phase_seed(phase.recipe["train"]["seed"], index))
                self._enter_phase(index)
                self._before_phase(index)
                phase = self.phases[index]  # rebuilt when the training set grew
                self._loss_reference = None
            optimizer = (build_optimizer(self.model, phase.recipe["optim"],
                                         self._learned_components(phase))
                         if phase.recipe["train"]["epochs"] else None)  # 0 epochs: nothing trains
            # After the phase's freezing and head change: DDP registers the parameters that
            # train in this phase.
            step = TrainStep(self.model, phase, global_normalizer(self.world))
            step_fn = wrap(step, self.world, self.device)
            compiled = compile_step(step_fn, phase.recipe["train"]["compile"], self.device,
                                    self.world.distributed)
            autocast, needs_scaler = autocast_factory(phase.recipe["train"]["amp"], self.device)
            scaler = torch.amp.GradScaler(self.device.type, enabled=needs_scaler)
            ema_cfg = phase.recipe["train"]["ema"]
            # a phase's average starts from the weights it begins with (its head may be new)
            self.ema = (WeightAverage(self.model, ema_cfg["decay"], ema_cfg["every"])
                        if ema_cfg and phase.recipe["train"]["epochs"] else None)
            first_epoch = 0
            if resumed_here:
                optimizer.load_state_dict(state["optimizer"])
                scaler.load_state_dict(state["scaler"])
                self._load_components(phase, state["components"])
                set_rng_state(state["rng"])
                self._loss_reference = state.get("loss_reference")
                if self.ema is not None:
                    self.ema.load_state_dict(state["ema"])
                first_epoch = state["epoch"] + 1
            epochs = phase.recipe["train"]["epochs"]
            for epoch in range(first_epoch, epochs):
                row, spent, count = self._train_epoch(phase, index, epoch, optimizer, scaler,
                                                      autocast, step, step_fn, compiled)
                seconds += spent
                images_seen += count
                every = phase.recipe["eval"]["every"]
                if every and (epoch + 1) % every == 0 and epoch + 1 < epochs:
                    row["eval"] = {k: v for k, v in self.evaluate(phase, autocast).items()
                                   if k in EPOCH_EVAL_KEYS}
                attempt_epochs += 1
                left = epochs - epoch - 1 + sum(s.recipe["train"]["epochs"]
                                                for s in self.phases[index + 1:])
                self.log.end_epoch(epoch_line(row, self._epoch_label(phase), epochs,
                                              (time.perf_counter() - attempt_start)
                                              / attempt_epochs * left))
                history.append(row)
                last = epoch + 1 == epochs
                if last:
                    self._after_phase(index, autocast)
                if last or (epoch + 1) % phase.recipe["train"]["checkpoint_every"] == 0:
                    self._save_state(index, epoch, last, optimizer, scaler, phase, history,
                                     seconds, images_seen)
                if main:
                    # after the checkpoint (above)
                    append_log(self.out, row, self._loss_terms, self._eval_fields)
                for logger in self._loggers:
                    logger.epoch(row)
            if epochs == 0:  # a phase that only changes the model (a head that takes over)
                self._after_phase(index, autocast)
                self._save_state(index, -1, True, optimizer, scaler, phase, history, seconds,
                                 images_seen)
        if state is not None and self.ema is None and state.get("ema") is not None \
                and state["phase_done"] and state["phase"] == len(self.phases) - 1:
            # resumed after the last epoch, before results.json: the final average is saved
            ema_cfg = self.phases[-1].recipe["train"]["ema"]
            self.ema = WeightAverage(self.model, ema_cfg["decay"], ema_cfg["every"])
            self.ema.load_state_dict(state["ema"])
        for part in self._all_components():
            part.after_run(self._run_info)
        return history, seconds, images_seen

    # ------------------------------------------------------------------------- checkpoints & logs
    def _save_state(self, index, epoch, phase_done, optimizer, scaler, phase, history, seconds,
                    images) -> None:
        if not self.world.is_main:
            return
        atomic_save({"phase": index, "epoch": epoch, "phase_done": phase_done,
                     "model": self.model.state_dict(),
                     "optimizer": optimizer.state_dict() if optimizer else {},
                     "scaler": scaler.state_dict(), "components": self._component_states(phase),
                     "rng": rng_state(), "history": copy.deepcopy(history), "seconds": seconds,
                     "images": images, "recipe_hash": recipe_hash(self.recipe),
                     "commits": self._commits, "loss_reference": self._loss_reference,
                     "selection": self.selection,
                     **({"reused": self._reused} if self._reused else {}),
                     **({"ema": self.ema.state_dict()} if self.ema is not None else {})},
                    self.out / CHECKPOINT)
        if phase_done:  # each phase's final weights, for later use outside this run
            atomic_save(self.model.state_dict(), RunDir(self.out).weights(phase.name))
            if self.ema is not None:
                atomic_save(self.ema.module.state_dict(), RunDir(self.out).ema(phase.name))

def train(recipe: dict, out_dir: str | Path, resume: bool = False, quiet: bool = False,
          logger: RunLogger | None = None, start: dict | None = None) -> dict:
    """Train a recipe and evaluate the final model.

    Args:
        recipe: A recipe dict (from :func:`lttoolbox.recipe.load_recipe`, or written by hand).
        out_dir: Run directory: resolved recipe, checkpoints, ``log.jsonl`` and ``results.json``.
        resume: Continue the interrupted run in ``out_dir`` (same recipe required).
        quiet: Print only the final line.
        logger: Custom console output.
        start: Where a run without a checkpoint of its own starts: a first phase reused from
            another run (:func:`lttoolbox.engine.reuse.reused_start`).

    Returns:
        The results dict, also written to ``out_dir/results.json``. The reported model is always
        the final epoch's; no epoch is ever selected on the test set.
    """
    return Trainer(recipe, out_dir, resume=resume, quiet=quiet, logger=logger, start=start).run()
