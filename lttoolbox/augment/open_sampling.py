"""Open-sampling (Wei, Tao, Xie, Feng and An, "Open-Sampling: Exploring Out-of-Distribution
Data for Re-balancing Long-tailed Datasets", ICML 2022): images from outside the label set,
labelled at random from a distribution complementary to the class prior, trained on beside the
batch so that the tail classes receive more of the (label-only) training signal.

The paper's equation, section and table numbers could not be read here, so none is cited; the
method follows the official code, hongxin001/open-sampling at
79fcaf2512ed8e90188451aa23726e358d1e0d96 (the algorithm ``--alg open``, ``alg/ood_noise.py``;
line numbers below are of that commit).

With ``pi_c = n_c / N`` the training prior of class ``c`` (``ood_noise.py`` lines 16-23):

* the complementary distribution ``Gamma_c = (alpha - pi_c) / sum_k (alpha - pi_k)``, with
  ``alpha = pi_max + pi_min`` by default (the code's ``--alpha -1``); every open image gets a
  fresh label drawn from it at every step (``Categorical``, lines 33-35);
* the loss (lines 37-40): ``L = L_in + lambda_o * sum_j w_{y_j} CE(z_j, y_j) / sum_j w_{y_j}``
  over the open images ``j``, with ``w_c = K Gamma_c`` (PyTorch's weighted mean);
* one forward of the batch and the open images together (lines 28-31): they share the
  BatchNorm batch statistics;
* the README's command: ``lambda_o`` 1, 512 open images a step beside the batch of 128, from
  the first epoch, plain CE for ``L_in``.

The double re-balancing. The open labels are *drawn* from ``Gamma`` and their cross-entropy is
*weighted* by ``K Gamma``, so class ``c``'s share of the open term is proportional to
``Gamma_c^2``, not ``Gamma_c``. That is what the code does (whether the paper has the weight could
not be checked here): kept by default (``reweight: true``); ``reweight: false`` makes the open
term a plain mean, each class's share then ``Gamma_c``.

Here: a component at two model points. Before each step it draws the step's open images and
labels (:meth:`OpenSampling.before_step`) and transforms them as the batches are (the data's
training transform on the device: crop, flip, normalisation; the code gives its Tiny Images the
same crop, flip and CIFAR normalisation, ``dataset/utils.py`` lines 53-56). At ``input`` it
appends them to the batch; at ``features`` it takes them out again, scores them with the model's
head and keeps their term for :meth:`OpenSampling.auxiliary_loss`, which the trainer adds inside
the step's forward. The trainer's own loss therefore sees the batch alone, whatever the recipe's
loss is; the open term is always the code's (weighted) cross-entropy. The component declares
``adds_rows``: no other component may act on the batch while the open rows are in it (an input
mix listed before it acts on the batch alone; see :func:`~lttoolbox.engine.phases.
check_added_rows`).

Deliberate differences from the official code:

* the open set: the code reads the 80 Million Tiny Images binary (``--aux_set TinyImages``, all
  of its non-CIFAR images, ``dataset/tinyimages_80mn_loader.py``), which its creators withdrew in
  2020 and which is not available here; any folder, image list, generated noise or the digits
  (:mod:`lttoolbox.data.open_set`) serves instead, and results differ with the open set;
* the open stream: each epoch the code reshuffles its open loader and zips it with the training
  loader, so an epoch ends with the shorter of the two; here an epoch's open images are a seeded
  permutation of the open set, drawn again when what is left of it is shorter than an open
  batch (that rest is skipped, as by a loader's ``drop_last``), so a small open set never
  shortens an epoch and a step's open images are distinct; the generated noise goes through the
  training transform like every other open image (the code feeds its ``Gaussian`` set
  unaugmented and unnormalised);
* draws: the permutation and the labels come from a generator of the component's own, seeded by
  the run's seed and the epoch (a resumed run, which restarts at an epoch's start, draws the same);
  each process takes its share of the step's global open batch (``batch_size`` is global, like
  ``train.batch_size``), so two processes train on exactly the images and labels one process
  draws; the crops and flips come from the device's generator, as the batches' do;
* across processes the weighted mean divides by the global batch's sum of weights (one
  all-reduce of one number a step), so the gradient is the one a single process computes;
* the code selects its reported checkpoint on the test set (``main.py`` lines 138-156); the
  toolbox reports the final epoch.

Example:
    >>> from lttoolbox.augment.open_sampling import complementary_distribution
    >>> gamma = complementary_distribution([100, 10, 1])
    >>> [round(float(g), 6) for g in gamma]
    [0.005208, 0.473958, 0.520833]
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..api import Component, Context
from ..batch import Batch
from ..checks import check_bool, check_int, check_number
from ..data.open_set import load_open_set, open_set_config
from ..errors import ConfigError
from ..registry import AUGMENTS

# Tags the open stream's seed apart from the run's other seeded streams.
STREAM_TAG = 0x4F50454E  # "OPEN"


def complementary_distribution(counts: Sequence[float], alpha: float | None = None
                               ) -> np.ndarray:
    """``Gamma_c = (alpha - pi_c) / sum_k (alpha - pi_k)`` with ``pi = counts / sum(counts)``
    (``ood_noise.py`` lines 16-23 at 79fcaf2, normalised as ``Categorical`` does).

    Args:
        counts: Training images per class (each at least 1, two classes or more).
        alpha: ``None``: ``pi_max + pi_min`` (the code's default); else at least ``pi_max`` (every
            ``Gamma_c >= 0``) with ``K alpha > 1`` (a positive sum).

    Raises:
        ConfigError: counts or ``alpha`` that make no distribution, naming ``alpha``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size < 2 or not np.all(np.isfinite(counts)) \
            or np.any(counts < 1):
        raise ConfigError(f"open-sampling needs two classes or more, each with at least one "
                          f"training image; got class counts {counts.tolist()}")
    prior = counts / counts.sum()
    if alpha is None:
        alpha = prior.max() + prior.min()
    else:
        alpha = check_number("alpha", alpha, 0.0, low_open=True)
        if alpha < prior.max() or counts.size * alpha <= 1.0:
            raise ConfigError(f"alpha must be at least the largest class prior "
                              f"{prior.max():.6g} (and K * alpha > 1) so that every class gets "
                              f"a probability >= 0, got {alpha!r}; null gives pi_max + pi_min")
    rate = alpha - prior
    return rate / rate.sum()


def open_weights(gamma: np.ndarray) -> np.ndarray:
    """The code's per-class weights of the open cross-entropy, ``w_c = K Gamma_c``
    (``ood_noise.py`` line 37)."""
    return len(gamma) * np.asarray(gamma, dtype=np.float64)


def open_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None,
              normalizer: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_j w_{y_j} CE(z_j, y_j) / sum_j w_{y_j}`` (``weights`` None: every ``w`` is 1), in
    float32; ``normalizer`` replaces the denominator (the global one across processes)."""
    per = F.cross_entropy(logits.float(), labels, reduction="none")
    w = torch.ones_like(per) if weights is None else weights.to(per.device)[labels]
    denominator = w.sum() if normalizer is None else normalizer
    return (w * per).sum() / denominator


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@AUGMENTS.register("open_sampling")
class OpenSampling(Component):
    """Open-sampling: open images with labels drawn from the complementary distribution, in the
    batch's forward, and their weighted cross-entropy added to the loss (see the module
    docstring).

    Args:
        open: The open set (:mod:`lttoolbox.data.open_set`): ``{source: folder, root: ...}``,
            ``{source: list, file: ...}``, ``{source: noise, kind: gaussian, size: ..., seed:
            ...}`` or ``{source: digits}`` (a string names a source with its defaults).
            Required: the paper's open set (Tiny Images) is not available.
        batch_size: Open images per step, across all processes (512, the README's ``-ab``;
            the code's default is 128).
        lambda_o: Weight of the open term (1, the README's; the code's default 0 disables it).
        alpha: ``None``: ``pi_max + pi_min`` (the code's default); else the constant of
            :func:`complementary_distribution`.
        reweight: Weight the open cross-entropy by ``w_c = K Gamma_c`` as the code does (the
            double re-balancing, see the module docstring); ``false``: a plain mean.
        start_epoch, end_epoch: The epoch window (the code: from the first epoch).
        context: From the trainer: the class counts, the training images' shape and transform
            (the in-memory data path), the seed, and the process's rank.

    Recipe::

        augment: [{name: open_sampling, open: {source: digits}, batch_size: 512, lambda_o: 1.0}]

    Example:
        >>> import torch
        >>> from lttoolbox.api import Context
        >>> from lttoolbox.augment.open_sampling import OpenSampling
        >>> from lttoolbox.batch import Batch
        >>> from lttoolbox.models import DigitsCNN
        >>> ctx = Context.from_counts([30, 10, 5], image_shape=(1, 8, 8),
        ...                           train_transform=lambda x: x.float() / 255)
        >>> part = OpenSampling(open={"source": "noise", "size": 50}, batch_size=4, context=ctx)
        >>> model = DigitsCNN(num_classes=3)
        >>> batch = Batch.plain(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))
        >>> part.before_epoch(0)
        >>> part.before_step(type("Step", (), {"batch": batch, "model": model})())
        >>> hooks = {p: part.hook(p) for p in part.points()}
        >>> logits, out = model.forward_hooked(batch, hooks)
        >>> tuple(logits.shape), tuple(part.last_labels.shape)  # the batch alone; 4 open labels
        ((2, 3), (4,))
        >>> bool(part.auxiliary_loss() > 0)                      # lambda_o * the open term
        True
    """

    adds_loss = True  # the open term, added inside the step's forward
    adds_rows = True  # the open images ride in the batch from 'input' to 'features'
    #: For the registry's contract tests: the one parameter without a default.
    example_config = {"open": {"source": "noise", "size": 64}}

    def __init__(self, open: Any, batch_size: int = 512, lambda_o: float = 1.0,
                 alpha: float | None = None, reweight: bool = True, start_epoch: int = 0,
                 end_epoch: int | None = None, *, context: Context | None = None):
        super().__init__(start_epoch, end_epoch, context=context)
        ctx = self.context
        if open is None:  # `open: null` in a recipe
            raise ConfigError("the open set is required: {source: folder, root: ...}, "
                              "{source: list, file: ...}, {source: noise} or {source: digits} "
                              "(the paper's Tiny Images are not available)", key="open")
        open_set_config(open)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.lambda_o = check_number("lambda_o", lambda_o, 0.0)
        check_bool("reweight", reweight)
        self.reweight = reweight
        if ctx.class_counts is None:
            raise ConfigError("open-sampling needs the class counts; use it in a recipe, or pass "
                              "context=Context.from_counts([...], image_shape=..., "
                              "train_transform=...)")
        self.gamma = complementary_distribution(ctx.class_counts, alpha)
        self.alpha = alpha
        self.world_size = int(ctx.world_size or 1)
        self.rank = int(ctx.rank or 0)
        if self.batch_size % self.world_size:
            raise ConfigError(f"batch_size is the global open batch, split evenly across the "
                              f"{self.world_size} processes; {self.batch_size} is not divisible "
                              f"by {self.world_size}")
        if ctx.train_transform is None or ctx.image_shape is None:
            raise ConfigError("open-sampling transforms its open images as the in-memory data "
                              "path transforms a batch; set data.path: memory (or, outside a "
                              "recipe, give the context image_shape and train_transform)")
        self.transform = ctx.train_transform
        # read now, before anything is written: a bad open set stops the recipe here
        self.images = load_open_set(open, ctx.image_shape)
        self.open = open
        self._probs = torch.from_numpy(self.gamma)  # float64, for the label draws
        self.weights = (torch.from_numpy(open_weights(self.gamma)).float() if reweight
                        else None)
        self._generator: torch.Generator | None = None  # seeded by set_epoch
        self._order: torch.Tensor | None = None
        self._cursor = 0
        self._model = None
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # this step's open batch
        self._rows = 0  # open rows appended by the input hook of the forward under way
        self._term: torch.Tensor | None = None
        self.last_labels: torch.Tensor | None = None  # for inspection and tests
        self.last_indices: torch.Tensor | None = None

    # ---------------------------------------------------------------------------- the stream
    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        seed = np.random.SeedSequence([int(self.context.seed), STREAM_TAG, int(epoch)])
        self._generator = torch.Generator().manual_seed(int(seed.generate_state(1)[0]))
        self._order, self._cursor = None, 0

    def next_draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of the step's open images (indices into the open set) and
        their labels: the next ``batch_size`` positions of the epoch's open stream and as many
        labels drawn from ``Gamma``, the same on every process, of which process ``r`` takes
        positions ``[r m, (r + 1) m)``, ``m = batch_size / world_size``. The stream is a
        permutation of the open set, drawn again when a whole open batch is no longer left in
        it (one larger than the set spans several permutations)."""
        if self._generator is None:  # drawn before any epoch was set: the first epoch's stream
            self.set_epoch(self.epoch)
        total = self.images.shape[0]
        take: list[torch.Tensor] = []
        needed = self.batch_size
        while needed:
            left = 0 if self._order is None else total - self._cursor
            # A pass's remainder too short for a whole open batch is skipped (a loader's
            # drop_last), so a step's open images are distinct whenever the set holds a batch.
            if not left or (not take and left < needed <= total):
                self._order = torch.randperm(total, generator=self._generator)
                self._cursor = 0
            part = self._order[self._cursor:self._cursor + needed]
            self._cursor += part.numel()
            needed -= part.numel()
            take.append(part)
        indices = torch.cat(take)
        labels = torch.multinomial(self._probs, self.batch_size, replacement=True,
                                   generator=self._generator)
        share = self.batch_size // self.world_size
        mine = slice(self.rank * share, (self.rank + 1) * share)
        return indices[mine], labels[mine]

    # ----------------------------------------------------------------------------- the step
    def before_step(self, step) -> None:
        self._pending, self._rows, self._term = None, 0, None
        if not self.active:
            return
        device = step.batch.x.device
        if self.images.device != device:  # once: the open set lives on the device
            self.images = self.images.to(device)
            if self.weights is not None:
                self.weights = self.weights.to(device)
        indices, labels = self.next_draw()
        self.last_indices, self.last_labels = indices, labels
        x = self.transform(self.images[indices.to(device)])
        self._pending = (x, labels.to(device, non_blocking=True))
        self._model = step.model

    def after_step(self, step) -> None:
        self._pending, self._rows, self._term = None, 0, None

    def points(self) -> tuple[str, ...]:
        return ("input", "features")

    def hook(self, point: str):
        return self._append if point == "input" else self._split

    def _append(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
        """At ``input``: the open images after the batch's (one forward, shared BatchNorm
        statistics)."""
        self._rows = 0
        if self._pending is None:
            return h, batch
        x = self._pending[0].to(h.dtype)
        self._rows = x.shape[0]
        h = torch.cat([h, x])
        return h, batch.replace(x=h)

    def _split(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
        """At ``features``: the open rows taken out, scored by the model's head, and their term
        kept for :meth:`auxiliary_loss`."""
        rows, self._rows = self._rows, 0
        if not rows:
            return h, batch
        h, opened = h[:-rows], h[-rows:]
        logits = self._model.head(opened)
        labels = self._pending[1]
        normalizer = None
        if self.weights is not None and self.world_size > 1 and _world()[1] > 1:
            # the global batch's weighted mean (see lttoolbox.engine.distributed.
            # global_normalizer): each process divides by the global sum over the processes
            # (unweighted, every process's count is the same share and needs no exchange)
            normalizer = self.weights.to(labels.device)[labels].sum().detach().clone()
            dist.all_reduce(normalizer)
            normalizer = normalizer / _world()[1]
        self._term = self.lambda_o * open_loss(logits, labels, self.weights, normalizer)
        return h, batch.replace(x=h)

    def auxiliary_loss(self) -> torch.Tensor | None:
        term, self._term = self._term, None
        return term

    def extra_repr(self) -> str:
        return (f"open={self.open!r}, images={self.images.shape[0]}, "
                f"batch_size={self.batch_size}, lambda_o={self.lambda_o}, "
                f"reweight={self.reweight}")
