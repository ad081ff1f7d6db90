"""The extension points: what the trainer calls on every component, and nothing else.

The trainer runs one loop over declared events and knows no trick by name. Everything a sampler,
loss, augmentation or generator can do is declared here, on :class:`Component`, with a default
that does nothing; an entry overrides what it needs. The trainer calls every method on every
component uniformly and never asks whether a component has one.

Declared capabilities (class attributes, read before training to refuse impossible recipes):

* ``mixes``: replaces the batch's targets by two targets per sample (mixup, CutMix, ...); two
  such components cannot act in a common epoch.
* ``generates``: adds samples at a model point and needs each sample's single class up to it.
* ``adds_loss``: :meth:`Component.auxiliary_loss` returns a term the trainer adds to the loss.
* ``adds_images``: adds training images at its phase's start (:meth:`Component.before_phase`);
  the training set then grows, so the in-memory data path is needed.
* ``reads_trained_model``: what it does at its phase's start reads the model trained so far, so
  it cannot sit in the first phase.
* ``learned``: owns trainable parameters, optimised alongside the model.
* ``needs_validation``: reads the validation split (a bilevel method's outer step, a choice made
  at a phase's end); the data set must then provide one (``data.val_per_class``).
* ``adds_rows``: adds samples to the batch at its first point (``points()[0]``) and takes them
  out again at its last (``points()[-1]``), so the trainer's loss never sees them (images from
  outside the label set sharing the batch's forward); no other component may act on the batch
  while they are in it.
* ``regroups_rows``: the rows its step's loss scores are not the rows of the batch that entered
  the step (two input streams joined into one row each, or scored by two branches): a batch
  cannot then be split into parts whose losses add up to the whole one (``train.accumulate``).

A component that needs a kind of model (two branches, :class:`Branched`) says why a model
cannot serve it in :meth:`Component.check_model`; the trainer refuses such a recipe before
training.

Events, in the order the trainer sends them: ``before_run(run)`` once per process start (a
resumed run sends it again), to every phase's components; ``before_phase(events)`` at a
phase's start (after its model changes); per epoch ``before_epoch(epoch)`` (by default
:meth:`set_epoch`), then per step ``before_step(step)``, the optimizer's step,
``after_step(step)``, and ``after_epoch(epoch)``; after the phase's last epoch
``after_phase(events)`` (to the phase's components and to the model's head); ``after_run(run)``
after the last phase, before the final evaluation. ``run`` is a :class:`RunEvents`, ``events`` a
:class:`PhaseEvents` and ``step`` a :class:`StepEvents`: what an action may see and do without
the trainer knowing what it does. ``state_dict()``/``load_state_dict()`` go into every
checkpoint.

The step events are the door of a method that takes a step of its own (on the validation split,
as a bilevel method's outer step does, or on examples it crafts from the batch): it reads
:meth:`StepEvents.validation_batch` and :meth:`StepEvents.objective`, updates what it owns, and
may replace :attr:`StepEvents.batch` before the optimizer's step.

Example:
    >>> import torch
    >>> from lttoolbox.api import Component
    >>> class Scale(Component):
    ...     '''Multiplies the activations at a point from ``start_epoch`` on.'''
    ...     def __init__(self, factor=2.0, start_epoch=0):
    ...         super().__init__(start_epoch)
    ...         self.factor = factor
    ...     def points(self):
    ...         return ("features",)
    ...     def __call__(self, h, batch):
    ...         return (h * self.factor if self.active else h), batch
    >>> part = Scale(start_epoch=1)
    >>> part.before_epoch(0); part.active, part.points()
    (False, ('features',))
    >>> part.before_epoch(1); part(torch.ones(2), None)[0].tolist()
    [2.0, 2.0]
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["Branched", "Context", "Component", "ModuleComponent", "Head", "PhaseEvents",
           "RunEvents", "StepEvents"]


@dataclass(frozen=True)
class Context:
    """Everything the data and the run tell a component, as one typed object.

    The trainer builds one per phase (on the phase's training set, grown if a phase added
    images) and offers it to every entry it builds: an entry that names a ``context`` parameter
    receives this object (and no field by name); one that names fields (``class_counts``,
    ``num_classes``, ...) and no ``context`` receives those. The family base classes
    (:class:`~lttoolbox.losses.LTLoss`, :class:`~lttoolbox.samplers.LTSampler`,
    :class:`~lttoolbox.generators.base.FeatureGenerator`, :class:`Component`) take it as
    ``context`` and keep it as ``self.context``; an entry passes it up and declares only its own
    parameters.

    Outside the trainer a context holds what is known and ``None`` for the rest:
    :meth:`from_counts` makes a whole one from class counts, and a base class's keyword
    shorthands (``LDAMLoss(class_counts=[500, 50, 5])``) make one through :meth:`given`.

    Attributes:
        class_counts: Training images per class (``None``: not known).
        num_classes: C (``None``: not known).
        labels: Training label of every image (1-D integer array; ``None``: not known).
        total_epochs: The phase's epochs (at least 1; ``None``: not known).
        seed: The run's seed.
        rank, world_size: This process and the number of processes (``None``: from
            ``torch.distributed`` where it is initialised, else 0 and 1).
        feature_dim: Width of the pooled features (``None`` without a model).
        point_names: The model's points in order.
        point_shapes: One sample's activation shape at each point (only with a generator).
        feature_maps: The model's points whose spatial map ``features`` averages (its
            ``feature_maps``; empty: it has none; ``None``: not known).
        imbalance_type: The data set's profile (``exp``, ``step`` or ``None``).
        fetch: ``fetch(indices) -> (x, y)``: training-transformed images beyond the batch.
        has_validation: Whether the data set has a validation split.
        image_shape: One training image's ``(channels, height, width)`` (``None``: not known).
        train_transform: The training transform of a uint8 image batch on the training device
            (crop, flip, normalisation, as the batches get), for images from outside the
            training set; ``None`` on the streaming data path, whose transform acts per file.
        sampler: The phase's sampler (the trainer builds it first, so the loss, augmentations
            and generator are offered it; ``None`` for the sampler itself and outside the
            trainer). A component whose terms depend on how the stream is drawn reads the
            sampler's declared frequencies
            (:meth:`~lttoolbox.samplers.base.LTSampler.class_level_frequencies`), never its name.

    Example:
        >>> from lttoolbox.registry import LOSSES
        >>> ctx = Context.from_counts([500, 50, 5])
        >>> ctx.num_classes, len(ctx.labels)
        (3, 555)
        >>> LOSSES.build({"name": "ldam", "max_m": 0.5}, **ctx.as_kwargs()).s
        30.0
    """

    class_counts: Sequence[int] | None = None
    num_classes: int | None = None
    labels: Any = None
    total_epochs: int | None = None
    seed: int = 0
    rank: int | None = None
    world_size: int | None = None
    feature_dim: int | None = None
    point_names: tuple[str, ...] = ()
    point_shapes: dict = field(default_factory=dict)
    feature_maps: tuple[str, ...] | None = None
    imbalance_type: str | None = None
    fetch: Callable | None = None
    has_validation: bool = False
    image_shape: tuple[int, int, int] | None = None
    train_transform: Callable | None = None
    sampler: Any = None

    @classmethod
    def from_counts(cls, counts: Sequence[int], **more: Any) -> "Context":
        """A context for standalone use: the labels of a training set with these class counts
        (class 0's images first), and ``num_classes``; ``more`` sets any other field."""
        counts = [int(c) for c in counts]
        labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        return cls(class_counts=counts, num_classes=len(counts), labels=labels.numpy(), **more)

    @classmethod
    def given(cls, context: "Context | None" = None, **values: Any) -> "Context":
        """The context a component works with: ``context`` with the fields given by name (a base
        class's keyword shorthands, or a recipe value) in place of its own; without ``context``,
        one of those fields alone. A field given as ``None`` is not given.

        Example:
            >>> Context.given(class_counts=[5, 1], total_epochs=None).num_classes is None
            True
            >>> Context.given(Context.from_counts([5, 1]), seed=3).seed
            3
        """
        if context is not None and not isinstance(context, Context):
            raise ConfigError(f"context must be an lttoolbox.api.Context, got "
                              f"{type(context).__name__}")
        named = {k: v for k, v in values.items() if v is not None}
        if context is None:
            return cls(**named)
        return replace(context, **named) if named else context

    def as_kwargs(self) -> dict[str, Any]:
        """The fields by name, plus ``context`` (this object): what a registry offers an entry,
        which takes those it names."""
        return {**{f.name: self.__dict__[f.name] for f in fields(self)}, "context": self}


class Component:
    """Base of every sampler, loss, augmentation and generator: declared capabilities, an epoch
    window and lifecycle events, all with no-op defaults.

    Args:
        start_epoch: First epoch (0-based) on which the component is active.
        end_epoch: First epoch on which it is no longer active; ``None`` means never.
        context: What the data and the run tell it (:class:`Context`), kept as
            ``self.context``; ``None``: an empty one (nothing known).
    """

    #: The name it is registered under (set by :meth:`lttoolbox.registry.Registry.register`).
    registry_name: str | None = None
    mixes: bool = False
    generates: bool = False
    adds_loss: bool = False
    adds_images: bool = False
    reads_trained_model: bool = False
    needs_validation: bool = False
    adds_rows: bool = False
    regroups_rows: bool = False
    #: Whether it accepts multi-hot targets (rows of ``(B, C)``, a multi-label data set): the
    #: trainer refuses, before anything is written, every sampler, loss and augmentation of a
    #: multi-label run that does not declare it.
    multilabel: bool = False
    #: Whether it accepts class-id targets ``(B,)`` (a single-label data set); ``False`` for an
    #: entry made for multi-hot targets only, which the trainer refuses on single-label data.
    single_label: bool = True
    start_epoch: int = 0
    end_epoch: int | None = None
    epoch: int = 0

    def __init__(self, start_epoch: int = 0, end_epoch: int | None = None, *,
                 context: Context | None = None):
        # bool is an int subclass: `end_epoch: true` would silently mean epoch 1
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
            raise ConfigError(f"start_epoch must be a non-negative integer, got {start_epoch!r}")
        if end_epoch is not None and (isinstance(end_epoch, bool) or not isinstance(end_epoch, int)
                                      or end_epoch <= start_epoch):
            raise ConfigError(
                f"end_epoch must be an integer greater than start_epoch ({start_epoch}), "
                f"got {end_epoch!r}")
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.epoch = 0
        self.context = Context.given(context)

    # ------------------------------------------------------------------------ the epoch window
    def set_epoch(self, epoch: int) -> None:
        """Remember the current epoch (0-based); ``torch``'s sampler convention."""
        self.epoch = int(epoch)

    @property
    def active(self) -> bool:
        """Whether the current epoch lies in ``[start_epoch, end_epoch)``."""
        return self.epoch >= self.start_epoch and (self.end_epoch is None
                                                   or self.epoch < self.end_epoch)

    @property
    def epochs_since_start(self) -> int:
        """Epochs elapsed since the window opened (0 on its first epoch)."""
        return max(0, self.epoch - self.start_epoch)

    # -------------------------------------------------------------------- acting in the model
    def points(self) -> tuple[str, ...]:
        """The model points it acts at (none: it does not act on the batch inside the model)."""
        return ()

    def hook(self, point: str) -> Callable:
        """The callable ``(h, batch) -> (h, batch)`` run at ``point``; by default the component."""
        return self

    @property
    def learned(self) -> bool:
        """Whether it owns trainable parameters (optimised alongside the model)."""
        return False

    def auxiliary_loss(self) -> torch.Tensor | None:
        """A term added to the step's loss (only read where ``adds_loss`` is declared)."""
        return None

    def frozen_parameters(self) -> Iterable[nn.Parameter]:
        """Its parameters that must not move in the current epoch (gradients withheld)."""
        return ()

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model it cannot act on: raise :class:`~lttoolbox.errors.ConfigError` saying
        why (a component that trains the branches of a :class:`Branched` model refuses one
        without them; one that routes BatchNorm layers, a model without any). The trainer calls
        it with the run's model when it builds the phase, before anything is written, and names
        ``model.name`` and the component's key; by default every model is fine."""

    def refusal(self, model: nn.Module) -> str | None:
        """Why :meth:`check_model` refuses ``model``, or ``None`` where it does not."""
        try:
            self.check_model(model)
        except ConfigError as err:
            return err.detail
        return None

    # --------------------------------------------------------------------------- lifecycle
    def before_run(self, run: "RunEvents") -> None:
        """Once per process start, before any phase trains and before a resumed run's checkpoint
        is loaded into the components (a resumed run sends it again; a phase rebuilt on a grown
        training set sends it to its new components)."""

    def before_phase(self, events: Any) -> None:
        """At its phase's start, after the phase's model changes (``events``:
        :class:`PhaseEvents`)."""

    def before_epoch(self, epoch: int) -> None:
        """At the start of every epoch, before any hook runs; by default :meth:`set_epoch`."""
        self.set_epoch(epoch)

    def before_step(self, step: "StepEvents") -> None:
        """Before every step of its phase's epochs (whether or not its epoch window is open),
        before the forward pass; it may replace ``step.batch``."""

    def after_step(self, step: "StepEvents") -> None:
        """After every step's optimizer update."""

    def after_epoch(self, epoch: int) -> None:
        """After every epoch's last step."""

    def after_phase(self, events: Any) -> None:
        """After its phase's last epoch, before the phase's checkpoint."""

    def after_run(self, run: "RunEvents") -> None:
        """Once, after the last phase's last epoch, before the final evaluation (not sent by a
        run that ends early)."""

    # -------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        """What a checkpoint keeps of it (nothing by default)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)}")


class ModuleComponent(nn.Module, Component):
    """A component that is a ``torch.nn.Module`` (a loss with class-weight buffers, a generator
    with parameters): the module's ``state_dict``, ``load_state_dict`` and device moves win.

    Subclasses call ``nn.Module.__init__(self)`` and ``Component.__init__(self, start, end,
    context=context)``.
    """

    @property
    def learned(self) -> bool:
        return any(True for _ in self.parameters())


class Head:
    """Declared capabilities of a classifier head (mixed into an ``nn.Module``).

    * ``follows``: the heads it takes over from the previous phase (``adopt`` then copies what
      it keeps); empty: a head that starts afresh.
    * ``needs_validation``: it chooses something on the validation split, which the data set
      must then provide.
    * ``after_phase(events)``: after its phase's last epoch (``tau_norm`` with ``tau: auto``
      chooses its power there).
    """

    follows: tuple[str, ...] = ()
    needs_validation: bool = False

    def adopt(self, previous: nn.Module) -> None:
        """Take over the previous phase's head (only called where ``follows`` names it)."""

    def after_phase(self, events: Any) -> None:
        """After its phase's last epoch, before the phase's checkpoint."""


class Branched:
    """Declared by a model with two branches after a shared trunk (mixed into an
    :class:`~lttoolbox.models.base.LTModel`), so that a component can train each branch on its
    own input stream; the component reads the declaration in :meth:`Component.check_model`.

    * ``branches``: 2 (a batch has two targets per sample, see :class:`~lttoolbox.batch.Batch`).
    * ``joins``: where the branches meet. ``"features"``: one classifier on the concatenated
      pooled features ``[f_1; f_2]`` (the ``features`` point holds them); ``"logits"``: each
      branch has its own classifier on its own features, and the model's logits are the mean
      of the two.
    * ``branch_dim``: the width of one branch's pooled features.

    A batch whose ``streams`` is 2 is *routed* by ``forward_hooked``: its rows are two equal
    blocks, block ``k`` for branch ``k``. The trunk runs once per block (each block normalised
    with its own BatchNorm statistics, as two separate forward calls would), a hook at a trunk
    point sees both blocks' rows concatenated, and block ``k`` goes through branch ``k`` only.

    * ``joins == "features"``: the blocks meet at ``features``, where row ``i`` is
      ``[f_1(block 1, i); f_2(block 2, i)]`` and the batch becomes the two-target one ``y_a`` =
      block 1's target, ``y_b`` = block 2's, ``lam = 0.5`` (the branches weighed equally, as the
      model evaluates); each block must be unmixed. A hook at ``features`` may reweigh them.
    * ``joins == "logits"``: the logits are block 1's rows through branch 1's classifier, then
      block 2's through branch 2's (the batch keeps its rows, each block its own targets); no
      hook may act at ``features``.

    An unrouted batch (``forward``, evaluation and export) runs the trunk once and both branches
    on the same input, as the model is evaluated.
    """

    branches: int = 2
    joins: str = "features"
    branch_dim: int = 0


class PhaseEvents:
    """What a phase-start or phase-end action sees and may do; the trainer implements it.

    Attributes:
        model: The model (backbone and head), as the phase starts or ends.
        index: The phase's 0-based index.
        name: The phase's name (``meta.phase``).
        log: The run's console logger (``start_epoch(title, total)``, ``advance(n)``,
            ``end_epoch(line)``, ``info(line)``), for a progress bar of a long action.

    An action that computes something from the run's state (images generated from the trained
    model) computes it through :meth:`artifact`, so that a resumed run reuses exactly what the
    interrupted one computed. Growing the training set (:meth:`add_training_images`) makes the
    trainer rebuild the phase's components on the grown set (samplers and losses see the new
    counts).
    """

    model: nn.Module
    index: int
    name: str
    log: Any

    @property
    def images(self) -> torch.Tensor:
        """The training images (uint8 ``(N, C, H, W)``, on the training device; in-memory data
        path only)."""
        raise NotImplementedError

    @property
    def labels(self) -> torch.Tensor:
        """The training labels ``(N,)`` beside :attr:`images`."""
        raise NotImplementedError

    @property
    def eval_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The evaluation transform (uint8 images to normalised model inputs)."""
        raise NotImplementedError

    @property
    def data_kind(self) -> str:
        """The data path: ``memory`` or ``stream``."""
        raise NotImplementedError

    def train_labels(self) -> Any:
        """The training labels as a numpy array (either data path)."""
        raise NotImplementedError

    def artifact(self, name: str, make: Callable[[], dict]) -> dict:
        """``make()``'s tensor dict, computed once per run and stored in the run directory as
        ``<name>-<phase>.pt``; a resumed run (and every other process) reads the stored one."""
        raise NotImplementedError

    def add_training_images(self, images: torch.Tensor, labels: torch.Tensor,
                            seconds: float | None = None) -> None:
        """Add images to the training set for this phase and every later one (``seconds``: what
        making them took, reported in results.json's phase entry)."""
        raise NotImplementedError

    def evaluate(self, split: str = "val") -> dict:
        """The model's metrics on the validation split (choices are never made on the test
        split: ``"test"`` is refused)."""
        raise NotImplementedError

    def record(self, key: str, value: Any) -> None:
        """Keep a choice made here in results.json's ``selection`` (and in the checkpoint)."""
        raise NotImplementedError


@dataclass(frozen=True)
class RunEvents:
    """What ``before_run``/``after_run`` see of the run.

    Attributes:
        out: The run directory.
        recipe: The resolved recipe (read it, never change it).
        model: The model.
        log: The run's console logger (``info(line)``, ``warning(line)``).
        resumed: Whether this process continues an interrupted run.
        rank, world_size: This process and the number of processes.
    """

    out: Any
    recipe: dict
    model: nn.Module
    log: Any
    resumed: bool = False
    rank: int = 0
    world_size: int = 1


class StepEvents:
    """What ``before_step``/``after_step`` see and may do; the trainer implements it.

    Attributes:
        batch: The step's :class:`~lttoolbox.batch.Batch` (training-transformed, unmixed before
            the model's hooks run). A ``before_step`` may replace it; the step trains on what is
            here after every component's ``before_step``. ``batch.index`` holds the training-set
            index of each sample, so a component can fetch a second view of the same images
            (the context's ``fetch``).
        model: The model (in training mode).
        optimizer: The phase's optimizer (a component reads it, e.g. for the learning rate of a
            look-ahead step; stepping it is the trainer's).
        epoch, step, steps: The epoch (0-based), the step within it, and the epoch's steps.
        lr: The learning rate of this step.

    Random draws a component makes here should come from torch's global generator (seeded and
    checkpointed by the trainer) or from :meth:`validation_batch`, so a resumed run draws what the
    uninterrupted one drew.
    """

    batch: Any
    model: nn.Module
    optimizer: Any
    epoch: int
    step: int
    steps: int
    lr: float

    def objective(self, batch: Any) -> torch.Tensor:
        """The phase's training objective on ``batch``, differentiable: ``(total, criterion,
        *auxiliary)`` as the step computes it (the model's hooks, the loss, the components'
        auxiliary losses), under the phase's autocast."""
        raise NotImplementedError

    def validation_batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` images of the validation split (evaluation-transformed, on the training
        device) and their labels, drawn without replacement from a stream seeded by the run's
        seed, phase, epoch, step and rank (a resumed run draws the same; two calls in one step
        draw different images). Only for a component that declares ``needs_validation``."""
        raise NotImplementedError
