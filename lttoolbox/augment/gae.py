"""Guiding adversarial examples (GAE; Zhang, Zhang, Li and Wu, "Adversarial Examples for Good:
Adversarial Examples Guided Imbalanced Learning", ICIP 2022, arXiv:2201.12356): examples of the
tail classes pushed across the biased decision boundary by a small attack and trained on with
their true label, so the boundary moves away from the tail.

The paper's equations, sections and tables could not be read here (only its abstract: "adjust
the biased decision boundary by training with Guiding Adversarial Examples (GAEs)"), so nothing
below cites them; the method follows the official code, ``train_adv.py`` of
zj-jayzhang/Guided_Adversarial_Examples at 564c26d6c83d9e616d299d4342973bbc726ff6c0 (line numbers
below are of that file).

Per step, on the training batch ``(x, y)`` (``GA_PGD``, lines 181-213, and ``train``, lines
218-253):

* the attack: untargeted L-infinity PGD that raises the cross-entropy of the true label, from a
  uniform random start in ``[-eps, eps]``, ``num_steps`` steps of
  ``x' <- clip_[0,1](clip_[x-eps, x+eps](x' + alpha * sign(grad_x' CE(f(x'), y))))``, with
  ``eps = 1/255``, ``alpha = eps / 8`` and 8 steps (lines 221-222, 47);
* ``kappa`` of a sample counts the evaluated iterates (the start point and iterates 1 to
  ``num_steps - 1``; the last iterate is not evaluated) at which it is still classified
  correctly; a tail sample whose ``kappa < num_steps`` "crossed" the boundary;
* the loss: ``CE(f(x), y)`` on the clean batch (mean) ``+ weight * mean over the crossed tail
  samples of CE(f(x'), y)`` (lines 227, 244-250; ``weight`` 1).

The component crafts the examples in :meth:`before_step` (the step's model, its input gradient)
and returns the second term from :meth:`auxiliary_loss`, which the trainer adds inside the
step's forward, so the gradients of the term reach the model's parameters (and, across
processes, are synchronised with the rest; the mean is over the crossed samples of the global
batch, :func:`crossed_count`).

Deliberate differences from the official code:

* the crossing check is per sample. The code compares ``predict`` of shape ``(n, 1)`` with
  ``target`` of shape ``(n,)`` (line 196), a broadcast to ``(n, n)``: a sample counts as
  correct when its prediction equals the label of *any* sample of the tail sub-batch, so kappa
  is overestimated and fewer samples count as crossed;
* batch normalisation (``norm_stats``): the code's ``GA_PGD`` switches the model to evaluation
  mode (line 182) and nothing switches it back before the next epoch (line 220), so after the
  first batch of each epoch every forward, the clean batch's included, runs with the running
  statistics, which then never move. The default, ``fixed``, keeps that: in every step of the
  window the attack, the adversarial term and the clean batch run with the running statistics,
  which stay as the previous phase left them (the code's one training-mode batch per epoch is
  not reproduced). ``batch`` trains the clean batch in training mode instead (batch statistics,
  running statistics updated), as ordinary training does, with the attack and the term in
  evaluation mode. Measured on the quick CIFAR-10-LT row (seed 0, one fine-tuning epoch at lr
  0.001 from the same CE phase): ``batch`` fell to 44.62 % top-1 and ``fixed`` kept 57.70 %;
  after the 9 epochs ``fixed`` stood at 61.42 % (CE: 58.66) and ``batch`` at 37.43 %, its clean
  cross-entropy rising from 0.41 to 1.52 while the rate fell to 1e-5 (a reading, not measured:
  the term moves the weights through fixed statistics that the clean batch's own normalisation
  then undoes);
* which classes are the tail is a parameter (``tail_fraction``, the rarest share of the classes
  by training count, or ``tail_classes``); the code hard-codes class index ``>= 5``
  (line 230), the 5 rarest classes of CIFAR-10-LT, which the default (the rarest half)
  reproduces there; the code does not run on CIFAR-100 (10-slot counters, lines 223-224, 239,
  247);
* the adversarial term is a cross-entropy; the code uses the run's criterion (CE in its README
  command; LDAM or DRW weights if its pre-training flags are passed);
* inputs: the code trains on unnormalised pixels in ``[0, 1]``; here inputs are normalised
  per channel, and ``eps``, ``alpha`` and the ``[0, 1]`` clip are applied in pixel units through
  the data's mean and standard deviation (the same attack: the normalisation is affine per
  channel with a positive scale);
* the attack runs on the whole batch with the perturbation kept on the tail samples only (the
  code attacks the tail sub-batch): in evaluation mode each sample's forward is independent of
  the others, so the tail examples are the same, and a fixed batch shape needs no host
  synchronisation (no ``nonzero``) and compiles; it costs the attack on the whole batch;
* a step whose batch has no tail sample still trains on the clean batch (the code skips the
  update, line 231);
* the attack runs in float32 outside the phase's autocast.

The code fine-tunes the best-test-epoch checkpoint of a CE run at lr 0.001 (README lines 28-30);
the recipes express this as a second phase after CE (``configs/cifar10_lt/ce_gae.yaml``, whose
first phase can be reused with ``--from-run``), trained to its final epoch, with no choice made
on the test set.

Example:
    >>> import torch
    >>> from lttoolbox.api import Context
    >>> gae = GuidingAdversarialExamples(context=Context.from_counts([50, 20, 10, 5]))
    >>> gae.tail.tolist()                      # the rarest half of the classes
    [False, False, True, True]
    >>> gae.set_normalisation(mean=(0.5,), std=(0.25,))
    >>> gae.epsilon, gae.step_size == gae.epsilon / 8, gae.num_steps
    (0.00392156862745098, True, 8)
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..api import Component, Context
from ..checks import check_bool
from ..errors import ConfigError
from ..losses.weights import check_number
from ..models.base import norm_layers
from ..registry import AUGMENTS


NORM_STATS = ("fixed", "batch")


def tail_mask(counts: Sequence[int], fraction: float) -> np.ndarray:
    """The ``floor(fraction * C)`` classes with the fewest training images, as a mask over the
    classes; among equal counts the higher class index counts as rarer (the long-tailed sets
    order classes from head to tail).

    Example:
        >>> tail_mask([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], 0.5).nonzero()[0]
        array([5, 6, 7, 8, 9])
    """
    counts = np.asarray(counts)
    k = int(math.floor(fraction * len(counts) + 1e-9))
    order = np.lexsort((-np.arange(len(counts)), counts))  # by count, ties: higher index first
    mask = np.zeros(len(counts), dtype=bool)
    mask[order[:k]] = True
    return mask


def crossed_count(chosen: torch.Tensor) -> torch.Tensor:
    """The number of crossed samples the term's mean divides by: this process's, or across
    processes the global number over the number of processes, so that DDP's mean of the ranks'
    gradients is the gradient of the global batch's mean, as one process computes it (one
    all-reduce of one number, on the device; a constant for autograd, as the count is)."""
    count = chosen.sum().detach()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        count = count.clone()
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return count


@AUGMENTS.register("gae")
class GuidingAdversarialExamples(Component):
    """Guiding adversarial examples: tail samples attacked towards the decision boundary and
    those that crossed it trained on with their true label (see the module docstring).

    Args:
        epsilon: L-infinity radius in pixel units on the 0..1 scale (1/255, the code's).
        step_size: Attack step in pixel units; ``None``: ``epsilon / 8`` (the code's).
        num_steps: Attack steps (8).
        random_start: Start from a uniform draw in ``[-epsilon, epsilon]`` around the image
            (the code's); drawn from torch's generator of the batch's device, which the trainer
            seeds and checkpoints.
        weight: Weight of the adversarial term (1).
        tail_fraction: The tail is this share of the classes, the rarest by training count
            (:func:`tail_mask`); ``None``: 0.5, the rarest half (on CIFAR-10-LT the 5 rarest
            classes, the code's ``target >= 5``).
        tail_classes: The tail classes by index, instead of ``tail_fraction``.
        norm_stats: ``fixed`` (default): within the window every forward of the step runs with
            the normalisation layers' running statistics, which stay fixed (the official
            code's behaviour); ``batch``: the clean batch trains in training mode (see the
            module docstring for what each gave).
        start_epoch, end_epoch: The epoch window in which it acts.
        context: From the trainer: the class counts define the tail.

    Recipe (a fine-tuning phase after CE, as the official code)::

        phases:
          - name: joint
          - name: gae
            augment: [{name: gae}]
            optim: {lr: 0.001}

    Example:
        >>> import torch
        >>> from lttoolbox.augment.gae import GuidingAdversarialExamples
        >>> gae = GuidingAdversarialExamples(epsilon=0.1, num_steps=1, random_start=False,
        ...                                  tail_classes=[1])
        >>> gae.set_normalisation([0.5], [0.25])  # inputs are (pixel - 0.5) / 0.25
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1, 2, bias=False))
        >>> with torch.no_grad():
        ...     _ = model[1].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        >>> x, y = torch.zeros(2, 1, 1, 1), torch.tensor([0, 1])
        >>> adv, crossed = gae.craft(model, x, y)
        >>> # class 0 is not of the tail; the class-1 sample moves one step of 0.1 / 8 pixels
        >>> # (0.05 in input units) up its loss's gradient, and was misclassified on the way
        >>> [round(v, 4) for v in adv.flatten().tolist()], crossed.tolist()
        ([0.0, 0.05], [False, True])
    """

    adds_loss = True  # the adversarial term, added inside the step's forward
    mixes = False  # the clean batch is untouched: a mixing augmentation may still act on it

    def __init__(self, epsilon: float = 1 / 255, step_size: float | None = None,
                 num_steps: int = 8, random_start: bool = True, weight: float = 1.0,
                 tail_fraction: float | None = None, tail_classes: Sequence[int] | None = None,
                 norm_stats: str = "fixed", start_epoch: int = 0, end_epoch: int | None = None,
                 *,
                 context: Context | None = None):
        super().__init__(start_epoch, end_epoch, context=context)
        self.epsilon = check_number("epsilon", epsilon, 0.0, 1.0, low_open=True)
        self.step_size = (self.epsilon / 8 if step_size is None
                          else check_number("step_size", step_size, 0.0, 1.0, low_open=True))
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ConfigError(f"num_steps must be a positive integer, got {num_steps!r}")
        self.num_steps = num_steps
        check_bool("random_start", random_start)
        self.random_start = random_start
        self.weight = check_number("weight", weight, 0.0)
        self.tail = self._tail(tail_fraction, tail_classes)
        if norm_stats not in NORM_STATS:
            raise ConfigError(f"norm_stats must be one of {', '.join(NORM_STATS)}, got "
                              f"{norm_stats!r}")
        self.norm_stats = norm_stats
        self.mean: tuple[float, ...] | None = None
        self.std: tuple[float, ...] | None = None
        self._pending = None  # (model, adversarial batch, labels, crossed) of the current step

    def _tail(self, fraction, classes) -> torch.Tensor | None:
        num = self.context.num_classes
        if classes is not None:
            if fraction is not None:
                raise ConfigError(f"tail_classes and tail_fraction ({fraction!r}) both define the "
                                  f"tail: give one")
            if (not isinstance(classes, (list, tuple)) or not classes
                    or any(isinstance(c, bool) or not isinstance(c, int) or c < 0
                           or (num is not None and c >= num) for c in classes)):
                raise ConfigError(f"tail_classes must be a non-empty list of class indices"
                                  f"{f' below {num}' if num is not None else ''}, got {classes!r}")
            mask = torch.zeros(num if num is not None else max(classes) + 1, dtype=torch.bool)
            mask[list(classes)] = True
            return mask
        fraction = 0.5 if fraction is None else fraction
        check_number("tail_fraction", fraction, 0.0, 1.0, low_open=True)
        counts = self.context.class_counts
        if counts is None:
            return None  # standalone use without class counts: craft() refuses
        mask = tail_mask(counts, float(fraction))
        if not mask.any():
            raise ConfigError(f"tail_fraction {fraction!r} of {len(counts)} classes is no class "
                              f"(the tail is floor(tail_fraction x classes) classes)")
        return torch.from_numpy(mask)

    # --------------------------------------------------------------------------- pixel units
    def set_normalisation(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """The data's per-channel mean and standard deviation (0..1 scale): the model's inputs
        are ``(pixel - mean) / std``, and the attack's radius, step and clip are in pixels."""
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def before_phase(self, events) -> None:
        transform = events.eval_transform  # the normalisation the training batches share
        self.set_normalisation(transform.mean, transform.std)

    def _bounds(self, x: torch.Tensor):
        if self.mean is None:
            raise ConfigError("gae needs the data's normalisation (set_normalisation, which the "
                              "trainer calls at the phase's start)")
        if len(self.mean) != x.shape[1]:
            raise ConfigError(f"gae: the batch has {x.shape[1]} channels, the normalisation "
                              f"{len(self.mean)}")
        mean = torch.tensor(self.mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
        return -mean / std, (1 - mean) / std, self.epsilon / std, self.step_size / std

    # ---------------------------------------------------------------------------- the step
    def craft(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The adversarial batch (the clean image where the sample is not of the tail) and which
        samples crossed the boundary (tail samples misclassified at an evaluated iterate), with
        the model in evaluation mode (restored afterwards)."""
        if self.tail is None:
            raise ConfigError("gae needs the class counts (context) or tail_classes")
        tail = torch.isin(y, self.tail.nonzero().flatten().to(y.device))  # no host sync
        low, high, eps, alpha = self._bounds(x)
        x0 = x.detach().float()
        adv = x0
        if self.random_start:
            adv = x0 + (torch.rand_like(x0) * 2 - 1) * eps
        adv = torch.maximum(torch.minimum(adv, high), low)
        correct = torch.zeros_like(y)
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                for _ in range(self.num_steps):
                    adv = adv.detach().requires_grad_(True)
                    logits = model(adv).float()
                    correct += logits.argmax(dim=1) == y  # per sample
                    # the sum: each sample's gradient is its own (the code's mean only scales it)
                    loss = F.cross_entropy(logits, y, reduction="sum")
                    grad, = torch.autograd.grad(loss, adv)
                    adv = adv.detach() + alpha * grad.sign()
                    adv = torch.maximum(torch.minimum(adv, x0 + eps), x0 - eps)
                    adv = torch.maximum(torch.minimum(adv, high), low)
        finally:
            self._restore(model, was_training)
        adv = torch.where(tail.view(-1, 1, 1, 1), adv, x0).to(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last):  # the model's layout
            adv = adv.contiguous(memory_format=torch.channels_last)
        return adv, tail & (correct < self.num_steps)

    def _restore(self, model: torch.nn.Module, was_training: bool) -> None:
        """Back to the mode the step found, except that with ``norm_stats: fixed`` the
        normalisation layers of a training model stay in evaluation mode (the clean batch's
        forward, which follows the attack, runs with the running statistics)."""
        model.train(was_training)
        if was_training and self.norm_stats == "fixed":
            for layer in norm_layers(model):
                layer.eval()

    def before_step(self, step) -> None:
        self._pending = None
        if not self.active:
            return
        batch = step.batch
        adv, crossed = self.craft(step.model, batch.x, batch.y_a)
        self._pending = (step.model, adv, batch.y_a, crossed)

    def auxiliary_loss(self) -> torch.Tensor | None:
        """``weight`` x the mean cross-entropy of the crossed adversarial examples (0 where none
        crossed), computed with the model in evaluation mode; ``None`` outside the window."""
        if self._pending is None:
            return None
        model, adv, y, crossed = self._pending
        was_training = model.training
        model.eval()
        try:
            logits = model(adv)
        finally:
            self._restore(model, was_training)
        chosen = crossed.float()
        ce = F.cross_entropy(logits.float(), y, reduction="none")
        return self.weight * (ce * chosen).sum() / crossed_count(chosen).clamp_min(1.0)

    def after_step(self, step) -> None:
        self._pending = None  # never carried into another step
