"""Building a run's phases: each phase's components from its recipe, and every check that
refuses an impossible recipe before the first step."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..api import Component, Context
from ..errors import ConfigError
from ..models.heads import build_head, head_config
from ..recipe import phase_recipes
from ..registry import AUGMENTS, GENERATORS, LOSSES, SAMPLERS
from .distributed import per_rank_batch
from .optim import no_decay_names
from .phases import (Phase, check_added_rows, check_data_preparers,
                     check_generator_placement, check_one_mix_at_a_time)


class PhaseBuilder:
    """Builds and enters phases (a mixin of :class:`~lttoolbox.engine.trainer.Trainer`)."""

    def _sync_batch_norm(self, enabled: bool) -> None:
        """``train.sync_bn``: batch-norm statistics over the global batch across processes
        (``torch.nn.SyncBatchNorm``, which supports CUDA inputs only); one process: nothing."""
        if not enabled or not self.world.distributed:
            return
        if self.device.type != "cuda":
            raise ConfigError("torch.nn.SyncBatchNorm synchronises CUDA tensors only; train on "
                              "CUDA or set train.sync_bn: false", key="train.sync_bn")
        self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)

    def _context(self, recipe: dict) -> dict:
        """What the phase's entries are offered: the :class:`~lttoolbox.api.Context` and its
        fields by name."""
        labels = self.data_path.train_labels()  # grown by a phase that adds images
        # a multi-label set's labels are its multi-hot matrix (N, C): images per label
        counts = (labels.sum(0).astype(np.int64).tolist() if labels.ndim == 2
                  else np.bincount(labels, minlength=self.num_classes).tolist())
        return Context(
            class_counts=counts, num_classes=self.num_classes,
            # a 0-epoch phase (only a model change) still builds its components
            total_epochs=max(1, recipe["train"]["epochs"]), seed=recipe["train"]["seed"],
            labels=labels, feature_dim=self.model.feature_dim,
            point_names=self.model.point_names, point_shapes=self.point_shapes,
            feature_maps=self.model.feature_maps,
            imbalance_type=self.data.meta.get("imbalance_type"),
            # how a component that needs more images than the batch (CMO's foreground) gets
            # them: training-transformed, on the training device
            fetch=self.data_path.fetch, rank=self.world.rank, world_size=self.world.size,
            has_validation=self.data.val is not None,
            image_shape=(self.data_path.in_channels, self.data_path.image_size,
                         self.data_path.image_size),
            train_transform=(self.data_path.train_transform if self.data_path.kind == "memory"
                             else None)).as_kwargs()

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
        if self.data.multilabel:  # before building: an entry may index by class id as it builds
            check_multilabel(recipe, where)
        ctx = self._context(recipe)
        sampler = SAMPLERS.build(recipe["sampler"], key=where + "sampler", **ctx)
        # the parts built after it may depend on how it draws (its declared frequencies)
        ctx = replace(ctx["context"], sampler=sampler).as_kwargs()
        loss = LOSSES.build(recipe["loss"], key=where + "loss", **ctx).to(self.device)
        augments = [AUGMENTS.build(cfg, key=f"{where}augment[{i}]", **ctx)
                    for i, cfg in enumerate(recipe["augment"])]
        generator = (GENERATORS.build(recipe["generator"], key=where + "generator", **ctx)
                     if recipe["generator"] else None)
        phase = Phase(recipe["meta"]["phase"], recipe, sampler, loss, augments, generator)
        keys = [where + "sampler", where + "loss",
                *(f"{where}augment[{i}]" for i in range(len(augments))), where + "generator"]
        for part, key in zip(phase.components, keys):
            if not isinstance(part, Component):  # the trainer calls the declared methods
                raise ConfigError(f"{type(part).__name__} is not an lttoolbox.api.Component; "
                                  f"derive it from Component (docs/extending.md)", key=key)
            if not self.data.multilabel and not part.single_label:
                raise ConfigError(f"{part.registry_name or type(part).__name__} takes multi-hot "
                                  f"targets, and the data set is single-label (one class per "
                                  f"image); use it with a multi-label data set such as "
                                  f"digits_mlt", key=key)
            try:  # a component that needs a kind of model says why this one is not
                part.check_model(self.model)
            except ConfigError as err:
                raise ConfigError(f"{part.registry_name or type(part).__name__} cannot train "
                                  f"model.name '{first['model']['name']}': {err.detail}",
                                  key=key if err.key is None else f"{key}.{err.key}") from None
            if part.needs_validation and self.data.val is None:
                raise ConfigError(f"{part.registry_name or type(part).__name__} reads the "
                                  f"validation split; give the data set one "
                                  f"(data.val_per_class: 20)", key=key)
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
        check_accumulation(recipe["train"], loss, named, self.world, where)
        check_data_preparers(named, index, recipe["train"]["epochs"])
        check_generator_placement(named, self.model.point_names, recipe["train"]["epochs"])
        check_added_rows(phase.hooked, self.model.point_names, recipe["train"]["epochs"])
        if recipe["model"].get("head") == first["model"].get("head"):  # else built later
            no_decay_names([("", self.model), *[(f"{n}.", m) for n, m in
                                                self._learned_components(phase)]],
                           recipe["optim"]["no_decay"], key=where + "optim.no_decay")
        for name in recipe["train"]["freeze"]:
            if name != "backbone" and name not in self.model.point_names:
                raise ConfigError(f"unknown model point '{name}'. Choose from backbone, "
                                  f"{', '.join(self.model.point_names)}.",
                                  key=where + "train.freeze")
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


def check_multilabel(recipe: dict, where: str) -> None:
    """A multi-label data set (multi-hot targets): refuse, before anything is built or written,
    every sampler, loss, augmentation and generator that does not declare ``multilabel`` (it
    would index by a class id the targets do not have; a generator makes images of one class).
    The other direction, an entry for multi-hot targets only (``single_label = False``) on a
    single-label set, is refused once the phase's parts are built (their parameters checked)."""
    named = [(SAMPLERS, recipe["sampler"], where + "sampler"),
             (LOSSES, recipe["loss"], where + "loss"),
             *((AUGMENTS, cfg, f"{where}augment[{i}]") for i, cfg in enumerate(recipe["augment"]))]
    if recipe["generator"]:
        named.append((GENERATORS, recipe["generator"], where + "generator"))
    for registry, cfg, key in named:
        name = cfg if isinstance(cfg, str) else cfg.get("name") if isinstance(cfg, dict) else None
        if not isinstance(name, str) or name not in registry.names():
            continue  # the registry's build names the unknown or malformed entry
        if not getattr(registry.get(name), "multilabel", False):
            accepted = [n for n in registry.names()
                        if getattr(registry.get(n), "multilabel", False)]
            raise ConfigError(f"{registry.kind} '{name}' takes single-label targets, and the data "
                              f"set is multi-label (multi-hot targets); use one of "
                              f"{', '.join(accepted) or '(none)'}", key=key)


def check_accumulation(train: dict, loss, named: list, world, where: str) -> None:
    """``train.accumulate``: refuse what the parts of a batch cannot sum to exactly.

    A loss with a batch reduction of its own (``batch_weighted``) weighs each sample by the
    whole batch; a class-weighted loss with a mixing augmentation divides by the weights of the
    second targets, which only the parts' forwards draw, so the whole batch's normalizer is not
    known before the first part.
    """
    parts = train["accumulate"]
    if parts == 1:
        return
    key = where + "train.accumulate"
    name = loss.registry_name or type(loss).__name__
    if loss.batch_weighted:
        raise ConfigError(f"loss '{name}' weighs each sample by the whole batch, which a part "
                          f"of it cannot see; use accumulate: 1", key=key)
    mixing = [k for part, k in named if part.mixes]
    if mixing and loss.class_weights is not None and not loss.batch_normalized:
        raise ConfigError(f"a class-weighted loss ('{name}') divides by the weights of the "
                          f"mixed targets, which {mixing[0]} draws part by part; the parts "
                          f"cannot add up to the whole batch's loss: use accumulate: 1 or a "
                          f"loss without weights", key=key)
    adding = [k for part, k in named if part.adds_rows]
    if adding:
        raise ConfigError(f"{adding[0]} adds rows of its own to the step's forward, which every "
                          f"part would repeat; use accumulate: 1", key=key)
    regrouping = [k for part, k in named if part.regroups_rows or part.generates]
    if regrouping:
        raise ConfigError(f"the loss of a step with {regrouping[0]} scores other rows than the "
                          f"batch's (joined streams, or generated samples), so its parts' "
                          f"losses cannot be weighed to the whole batch's; use accumulate: 1",
                          key=key)
    local = per_rank_batch(train["batch_size"], world)
    if parts > local:
        raise ConfigError(f"splits each process's batch of {local} into {parts} parts; at most "
                          f"{local}", key=key)
