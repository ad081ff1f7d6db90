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
import functools
import math
import random
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from .. import stop
from ..batch import Batch
from ..data.datapath import build_data_path, shard
from ..epochs import UnreachableEpochWarning
from ..errors import ConfigError
from ..models.heads import build_head, head_config
from ..recipe import (dump_recipe, phase_recipes, recipe_differences, recipe_hash, resolve,
                      resolve_saved, unreachable_epoch_keys)
from ..registry import AUGMENTS, DATASETS, GENERATORS, LOSSES, MODELS, SAMPLERS
from ..runs import write_data_info
from ..upgrade import upgrade_record
from ..yamlio import load_yaml
from .checkpoint import (CheckpointError, atomic_save, atomic_write_json, load_checkpoint,
                         rng_state, set_rng_state)
from .compile import compile_step
from .distributed import (World, barrier, gather_predictions, global_normalizer, local_device,
                          mean_over_ranks, per_rank_batch, sync_buffers, wrap)
from .evaluate import metrics_from_predictions, predict_batches
from .events import RunPhaseEvents
from .loggers import check_loggers, open_loggers
from .logging import RunLogger
from .monitor import check_divergence, epoch_line
from .optim import build_optimizer, lr_at, no_decay_names, set_lr, warms_up_per_step
from .plots import PLOT_HINT, plots_available, write_run_plots
from .provenance import git_commit, machine_info
from .rundir import (RunLock, append_log, check_out_dir, remove_temp_files,
                     write_log)
from .phases import (Phase, active_hooks, check_data_preparers, check_generator_placement,
                     check_one_mix_at_a_time, describe_generators)
from .step import TrainStep, loss_term_names

CHECKPOINT = "checkpoint.pt"
RESULTS = "results.json"
RECIPE = "recipe.yaml"
CHECKPOINT_KEYS = {"phase", "epoch", "phase_done", "model", "optimizer", "scaler", "components",
                   "rng", "history", "seconds", "images", "recipe_hash"}
STATUS_EVERY = 25  # steps between progress-bar status updates


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


class Trainer:
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
        check_out_dir(self.out)
        check_loggers(self.recipe["train"]["loggers"])
        self._check_run_dir()
        phases = phase_recipes(self.recipe)
        first = phases[0]
        self.device = local_device(resolve_device(first["train"]["device"]), self.world)
        seed_everything(first["train"]["seed"])
        self.data = DATASETS.build(first["data"], key="data")
        # The trainer reads batches through the data path only (in memory or streamed).
        self.data_path = build_data_path(self.data, self.device, first["train"]["seed"],
                                         first["train"]["workers"], self.world.size)
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
        # After every check passed: a refused recipe leaves the process as it found it.
        use_threads(first["train"]["threads"])
        # After every check passed, so a refused recipe prints its one error line only.
        for message in [*self.data.warnings, *unreachable_epoch_keys(self.recipe)]:
            self.log.warning(message)
        for message, too_large in describe_generators(self.phases, self.model):
            (self.log.warning if too_large else self.log.info)(message)

    # ----------------------------------------------------------------------------------- set-up
    def _sync_batch_norm(self, enabled: bool) -> None:
        """``train.sync_bn``: batch-norm statistics over the global batch across processes
        (``torch.nn.SyncBatchNorm``, which supports CUDA inputs only); one process: nothing."""
        if not enabled or not self.world.distributed:
            return
        if self.device.type != "cuda":
            raise ConfigError("torch.nn.SyncBatchNorm synchronises CUDA tensors only; train on "
                              "CUDA or set train.sync_bn: false", key="train.sync_bn")
        self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)

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

    def _context(self, recipe: dict) -> dict:
        labels = self.data_path.train_labels()  # grown by a phase that adds images
        counts = np.bincount(labels, minlength=self.num_classes).tolist()
        return {"class_counts": counts, "num_classes": self.num_classes,
                # a 0-epoch phase (only a model change) still builds its components
                "total_epochs": max(1, recipe["train"]["epochs"]), "seed": recipe["train"]["seed"],
                "labels": labels, "feature_dim": self.model.feature_dim,
                "point_names": self.model.point_names, "point_shapes": self.point_shapes,
                "imbalance_type": self.data.meta.get("imbalance_type"),
                # how a component that needs more images than the batch (CMO's foreground)
                # gets them: training-transformed, on the training device
                "fetch": self.data_path.fetch,
                "rank": self.world.rank, "world_size": self.world.size}

    def _check_head(self, recipe: dict, index: int, where: str) -> None:
        """A head that takes over the previous one must follow a head it can take over, and one
        that chooses on the validation split needs a data set with one."""
        cfg = head_config(recipe["model"].get("head", "linear"), where + "model.head")
        head = build_head(cfg, self.model.feature_dim, self.num_classes, where + "model.head")
        if head.follows:
            previous = (head_config(phase_recipes(self.recipe)[index - 1]["model"].get(
                "head", "linear"))["name"] if index else None)
            if previous not in head.follows:
                raise ConfigError(f"head '{cfg['name']}' takes over the previous phase's "
                                  f"classifier, which must be one of "
                                  f"{', '.join(head.follows)}; got "
                                  f"{previous or 'none (it is the first phase)'}",
                                  key=where + "model.head")
        if head.needs_validation and self.data.val is None:
            raise ConfigError(f"head '{cfg['name']}' chooses on the validation split; give the "
                              f"data set one (data.val_per_class: 20)", key=where + "model.head")

    def _build_phase(self, recipe: dict, index: int, first: dict) -> Phase:
        where = f"phases[{index}]." if self.recipe.get("phases") else ""
        for section in ("data",):
            if recipe[section] != first[section]:
                raise ConfigError("all phases share the first phase's data set; "
                                  "only sampler, loss, augment, generator, optim, schedule, train, "
                                  "eval and model.head may change", key=where + section)
        if recipe["train"]["threads"] != first["train"]["threads"]:
            raise ConfigError(f"the CPU threads are the process's, set once for the whole run: "
                              f"give train.threads outside the phases (the first phase has "
                              f"{first['train']['threads']!r})", key=where + "train.threads")
        changed = {k for k in set(recipe["model"]) | set(first["model"])
                   if k != "head" and recipe["model"].get(k) != first["model"].get(k)}
        if changed:
            raise ConfigError("only model.head may change between phases",
                              key=f"{where}model.{sorted(changed)[0]}")
        self._check_head(recipe, index, where)
        per_rank_batch(recipe["train"]["batch_size"], self.world, where + "train.batch_size")
        ctx = self._context(recipe)
        sampler = SAMPLERS.build(recipe["sampler"], key=where + "sampler", **ctx)
        loss = LOSSES.build(recipe["loss"], key=where + "loss", **ctx).to(self.device)
        augments = [AUGMENTS.build(cfg, key=f"{where}augment[{i}]", **ctx)
                    for i, cfg in enumerate(recipe["augment"])]
        generator = (GENERATORS.build(recipe["generator"], key=where + "generator", **ctx)
                     if recipe["generator"] else None)
        phase = Phase(recipe["meta"]["phase"], recipe, sampler, loss, augments, generator)
        named = [(a, f"{where}augment[{i}]") for i, a in enumerate(augments)]
        if generator is not None:
            named.append((generator, where + "generator"))
        for part, key in named:
            if isinstance(part, torch.nn.Module):
                part.to(self.device)
            if part.adds_images and self.data_path.kind != "memory":
                raise ConfigError(f"{type(part).__name__} adds generated images to the training "
                                  f"set, which the streaming data path cannot hold; set "
                                  f"data.path: memory", key=key)
            # A component acts at the model points it declares (``points()``, each with
            # ``hook(point)``), or at none (it prepares the phase's data instead).
            for point in part.points():
                if point not in self.model.point_names:
                    raise ConfigError(f"acts at model point '{point}', which "
                                      f"{first['model']['name']} does not have. Points: "
                                      f"{', '.join(self.model.point_names)}.", key=key + ".point")
                phase.hooked.append((part, point, key, part.hook(point)))
        check_one_mix_at_a_time(named, recipe["train"]["epochs"])
        check_data_preparers(named, index, recipe["train"]["epochs"])
        check_generator_placement(named, self.model.point_names, recipe["train"]["epochs"])
        if recipe["model"].get("head") == first["model"].get("head"):  # else built later
            no_decay_names([("", self.model), *[(f"{n}.", m) for n, m in
                                                self._learned_components(phase)]],
                           recipe["optim"]["no_decay"], key=where + "optim.no_decay")
        for name in recipe["train"]["freeze"]:
            if name != "backbone" and name not in self.model.point_names:
                raise ConfigError(f"unknown model point '{name}'. Choose from backbone, "
                                  f"{', '.join(self.model.point_names)}.", key=where + "train.freeze")
        return phase

    def _enter_phase(self, index: int) -> None:
        """Apply a phase's model changes: a new classifier head and frozen blocks.

        ``train.freeze`` is the whole set frozen in this phase: what an earlier phase froze and
        this one does not name trains again.
        """
        phase = self.phases[index]
        train_cfg = phase.recipe["train"]
        previous_head = self.phases[index - 1].recipe["model"].get("head") if index else None
        head = phase.recipe["model"].get("head")
        if train_cfg["reset_head"] or (index and head != previous_head):
            self.model.reset_head(head)
            self.model.to(self.device)
            if self.channels_last:
                self.model.to(memory_format=torch.channels_last)
        self.model.unfreeze()
        if train_cfg["freeze"]:
            # By default the frozen blocks' BatchNorm statistics are re-estimated on this phase's
            # batches, as in the reference codes (LTModel.freeze); freeze_bn_stats keeps them.
            self.model.freeze(train_cfg["freeze"], freeze_bn_stats=train_cfg["freeze_bn_stats"])

    @staticmethod
    def _learned_components(phase: Phase) -> list:
        """Components with trainable parameters of their own, named for ``optim.no_decay``."""
        return [(f"{type(part).__name__}{i}", part) for i, part in enumerate(phase.components)
                if part.learned]

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
                if self.data.val is not None:  # for choices that must not be made on the test set
                    results["val"] = self.evaluate(final, autocast, "val")
                if self.world.is_main:
                    atomic_write_json(results, self.out / RESULTS)
                for logger in self._loggers:
                    logger.results(results)
            finally:
                for logger in self._loggers:
                    logger.close()
                self._loggers = []
            if not self.world.is_main:
                pass
            elif plots_available():
                write_run_plots(results, self.out)
            else:
                self.log.info(PLOT_HINT)
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
            write_data_info(self.out, self.data)
        state = self._load_state()
        if state is not None and state is self._start and main:
            # The reused phase becomes this run's own checkpoint, so an interruption from here
            # on resumes without the donor.
            atomic_save(state, self.out / CHECKPOINT)
        # The log is the checkpointed history, exactly: an epoch logged after the checkpoint
        # and then interrupted is trained and logged again, never twice.
        if main:
            write_log(self.out, state["history"] if state else [], self._loss_terms)
        # The code that trains is the code of each attempt, not of whoever writes results.json:
        # record the commit when an attempt starts, every distinct one across resumes.
        self._commits = list(state.get("commits", [])) if state else []
        if (commit := git_commit()) not in self._commits:
            self._commits.append(commit)
        if not self._loggers and main:
            self._loggers = open_loggers(self.recipe["train"]["loggers"], self.out)
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
            first_epoch = 0
            if resumed_here:
                optimizer.load_state_dict(state["optimizer"])
                scaler.load_state_dict(state["scaler"])
                self._load_components(phase, state["components"])
                set_rng_state(state["rng"])
                self._loss_reference = state.get("loss_reference")
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
                                   if k in ("top1", "mean_class_acc", "many", "medium", "few")}
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
                    append_log(self.out, row, self._loss_terms)  # after the checkpoint (above)
                for logger in self._loggers:
                    logger.epoch(row)
            if epochs == 0:  # a phase that only changes the model (tau-normalisation)
                self._after_phase(index, autocast)
                self._save_state(index, -1, True, optimizer, scaler, phase, history, seconds,
                                 images_seen)
        return history, seconds, images_seen

    def _train_epoch(self, phase: Phase, index: int, epoch: int, optimizer, scaler,
                     autocast, step_module: TrainStep, step_fn, compiled=None
                     ) -> tuple[dict, float, int]:
        recipe = phase.recipe
        rate = functools.partial(lr_at, epoch, recipe["optim"]["lr"],
                                 total_epochs=recipe["train"]["epochs"], **recipe["schedule"])
        per_step = warms_up_per_step(recipe["schedule"], epoch)
        for part in phase.components:
            part.before_epoch(epoch)
        step_module.hooks = active_hooks(phase)
        if self.world.rank:
            # Ranks draw independent augmentations (crops, mixing partners): a stream of
            # (seed, phase, epoch, rank), so a resumed rank draws as an uninterrupted one.
            torch.manual_seed(phase_seed(recipe["train"]["seed"], index, epoch, self.world.rank))
        # Parameters a component freezes for this epoch (RSG's contrastive module once it
        # generates): their gradients are withheld from the step, so neither the update, the
        # momentum nor the weight decay moves them.
        withheld = [p for part in phase.components for p in part.frozen_parameters()]
        self.model.train()
        indices = phase.sampler.indices()  # this rank's every world-size-th position
        # The recipe's batch is the global one: each rank trains on its share, and global batch
        # k is the union of the ranks' batches k.
        batch_size = per_rank_batch(recipe["train"]["batch_size"], self.world)
        steps = (indices.numel() // batch_size if recipe["train"]["drop_last"]
                 else math.ceil(indices.numel() / batch_size))
        positions = self.world.rank + self.world.size * np.arange(indices.numel())
        batches = self.data_path.epoch(indices, positions, batch_size, (index, epoch), steps)
        lr = rate(step=0, steps=steps)
        set_lr(optimizer, lr)
        # Sums of (total, criterion, *auxiliary) over the epoch's steps, or of the total alone.
        loss_sum = torch.zeros(1 + len(step_module.term_names), device=self.device)
        compile_seconds = 0.0
        self.log.start_epoch(f"{self._epoch_label(phase)}epoch {epoch + 1}/"
                             f"{recipe['train']['epochs']}", steps)
        start = time.perf_counter()
        for step in range(steps):
            stop.check()  # a stop request some library swallowed still ends the run here
            if per_step and step:
                lr = rate(step=step, steps=steps)
                set_lr(optimizer, lr)
            batch = Batch.plain(*next(batches))
            # The compiled step takes full batches only: the last, partial one runs eagerly
            # rather than compiling a second graph (nothing dropped, nothing padded).
            fast = compiled is not None and batch.x.shape[0] == batch_size

            def closure(batch=batch, fast=fast):
                """Forward and backward of the batch; returns the step's losses. An optimizer
                may call it more than once (``torch.optim``'s closure convention)."""
                nonlocal compile_seconds
                timed = fast and not compiled.ready  # the first call compiles: time it apart
                begin = time.perf_counter()
                with autocast() if autocast else contextlib.nullcontext():
                    losses = (compiled if fast else step_fn)(batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses[0]).backward()
                if timed:
                    compiled.mark_ready(self.device, time.perf_counter() - begin)
                    compile_seconds = compiled.seconds
                for param in withheld:
                    param.grad = None
                return losses

            if scaler.is_enabled():  # fp16 loss scaling steps without a closure
                losses = closure()
                scaler.step(optimizer)
            else:
                losses = optimizer.step(closure)
            scaler.update()
            loss = losses[0]
            loss_sum += losses.detach()
            if self._loss_reference is None:  # once per phase: what divergence is judged by
                self._loss_reference = float(mean_over_ranks(loss.detach(), self.world))
            if self.log.live and (step + 1) % STATUS_EVERY == 0:
                # Only with a visible bar, and only every few steps: reading the loss waits for
                # the device.
                speed = (step + 1) * batch_size / (time.perf_counter() - start)
                self.log.advance(status=f"loss {loss_sum[0].item() / (step + 1):.4f}  "
                                        f"lr {lr:.2e}  {speed:,.0f} img/s")
            else:
                self.log.advance()
        for _ in batches:  # let the data path finish its epoch (a loader's last StopIteration)
            pass
        # the epoch's one host synchronization (and, across processes, its one all-reduce)
        means = [total / max(1, steps) for total in mean_over_ranks(loss_sum, self.world).tolist()]
        mean_loss = means[0]
        spent = time.perf_counter() - start - compile_seconds
        count = int(min(indices.numel(), steps * batch_size)) * self.world.size
        check_divergence(mean_loss, self._loss_reference, epoch, phase.name, lr)
        row = {"phase": phase.name, "epoch": epoch, "loss": round(mean_loss, 6), "lr": lr,
               "seconds": round(spent, 3), "images_per_second": round(count / spent, 1)}
        if step_module.term_names:  # each term's mean, named as in the recipe
            row["loss_terms"] = {name: round(value, 6)
                                 for name, value in zip(step_module.term_names, means[1:])}
        if compile_seconds:  # training time above excludes it
            row["compile_seconds"] = round(compile_seconds, 3)
            if compiled.failed:  # the phase then trained eagerly
                row["compile_failed"] = compiled.failed
        return row, spent, count

    def _epoch_label(self, phase: Phase) -> str:
        return f"{phase.name} " if len(self.phases) > 1 else ""

    def _before_phase(self, index: int, replay: bool = False) -> None:
        """Send the phase's components ``before_phase``; a component that grew the training set
        (CAM-based re-sampling) makes the phase's components be rebuilt on the grown set
        (samplers and losses see the new counts)."""
        events = RunPhaseEvents(self, index, replay)
        phase = self.phases[index]
        for part in phase.components:
            part.before_phase(events)
        if events.training_set_changed:
            with warnings.catch_warnings():  # named once per recipe key before training
                warnings.simplefilter("ignore", UnreachableEpochWarning)
                self.phases[index] = self._build_phase(phase.recipe, index,
                                                       phase_recipes(self.recipe)[0])

    def _after_phase(self, index: int, autocast) -> None:
        """Send the phase's components and the model's head ``after_phase`` (``tau_norm`` with
        ``tau: auto`` chooses its power on the validation split there)."""
        events = RunPhaseEvents(self, index, autocast=autocast)
        for part in [*self.phases[index].components, self.model.head]:
            part.after_phase(events)

    def evaluate(self, phase: Phase, autocast, split: str = "test") -> dict:
        """The metrics of the model on the test split, or on the validation split.

        Across processes each rank predicts its shard (no padding) and every rank gathers all
        predictions with their positions, checked to count each image exactly once; every rank
        then holds the same metrics (a post-hoc choice made on them is the same everywhere).
        """
        ev = phase.recipe["eval"]
        sync_buffers(self.model, self.world)  # rank 0's batch-norm statistics, as checkpointed
        total = self.data_path.eval_size(split)
        positions = shard(total, self.world.rank, self.world.size)
        pred, conf = predict_batches(
            self.model, self.data_path.eval_batches(split, ev["batch_size"], positions), autocast)
        pred, conf = gather_predictions(positions, pred, conf, total, self.world)
        return metrics_from_predictions(pred, self.data_path.eval_labels(split), conf,
                                        self.num_classes, self.class_counts,
                                        ev["many_threshold"], ev["few_threshold"], ev["ece_bins"])

    def _results(self, metrics: dict, history: list, seconds: float, images: int) -> dict:
        final = self.phases[-1].recipe
        return {
            **metrics,
            "epochs": sum(s.recipe["train"]["epochs"] for s in self.phases),
            "seconds": round(seconds, 2),  # training time, compilation excluded
            "images_per_second": round(images / seconds, 1) if seconds else 0.0,
            "compile_seconds": round(sum(r.get("compile_seconds", 0.0) for r in history), 2),
            "class_names": list(self.data.train.classes),
            "seed": final["train"]["seed"],
            "commit": self._commits[0],
            "commits": self._commits,
            "machine": machine_info(self.device),
            "processes": self.world.size,
            "protocol": self.recipe.get("meta", {}).get("protocol"),
            "recipe_hash": recipe_hash(self.recipe),
            "data": self.data.meta,
            "selection": self.selection,
            **({"reused": self._reused} if self._reused else {}),
            "phases": [{"name": s.name, "epochs": s.recipe["train"]["epochs"],
                        "final_loss": next((r["loss"] for r in reversed(history)
                                            if r["phase"] == s.name), None),
                        **({"generated": self.generated[s.name]}
                           if s.name in self.generated else {})}
                       for s in self.phases],
            "history": history,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    # ------------------------------------------------------------------------- checkpoints & logs
    @staticmethod
    def _component_states(phase: Phase) -> list:
        return [p.state_dict() for p in phase.components]

    @staticmethod
    def _load_components(phase: Phase, states: list) -> None:
        for part, saved in zip(phase.components, states):
            if saved is not None:  # None: written before every component kept a state
                part.load_state_dict(saved)

    def _save_state(self, index, epoch, phase_done, optimizer, scaler, phase, history, seconds,
                    images) -> None:
        if not self.world.is_main:
            return
        atomic_save({"phase": index, "epoch": epoch, "phase_done": phase_done,
                     "model": self.model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else {},
                     "scaler": scaler.state_dict(), "components": self._component_states(phase),
                     "rng": rng_state(), "history": copy.deepcopy(history), "seconds": seconds,
                     "images": images, "recipe_hash": recipe_hash(self.recipe),
                     "commits": self._commits, "loss_reference": self._loss_reference,
                     "selection": self.selection,
                     **({"reused": self._reused} if self._reused else {})},
                    self.out / CHECKPOINT)
        if phase_done:  # each phase's final weights, for later use outside this run
            atomic_save(self.model.state_dict(), self.out / f"model-{phase.name}.pt")

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
        weights = self.out / f"model-{phase.name}.pt"
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


def phase_seed(seed: int, index: int, *more: int) -> int:
    """The seed of phase ``index`` (> 0): a function of (seed, phase) alone, and distinct for
    different pairs (unlike ``seed + index``, which gives seed 1 phase 0 the stream of seed 0
    phase 1). ``more`` (epoch, rank) names a sub-stream."""
    return int(np.random.SeedSequence([seed, index, *more]).generate_state(1)[0])


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
