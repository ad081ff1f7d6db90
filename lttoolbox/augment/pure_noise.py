"""OPeN: oversampling with pure-noise images (Zada, Benou and Irani, "Pure Noise to the Rescue of
Insufficient Data: Improving Imbalanced Classification by Training on Random Noise Images", ICML
2022, PMLR 162, arXiv:2112.08810).

In a batch drawn by an oversampling (class-balanced) sampler, each sample of class ``y`` is
replaced, with probability

    p_y = delta * (1 - n_y / n_max),

by a fresh image of pure noise that keeps the label ``y``: the rarer the class, the more of its
(over-sampled, so repeated) images become noise; the most frequent class is never replaced. Each
noise pixel is drawn i.i.d. per channel from ``N(mean_c, std_c)`` (the data set's per-channel
mean and standard deviation) and clipped to ``[0, 1]``. The batch marks the replaced samples
(:attr:`lttoolbox.batch.Batch.synthetic`), so that DAR-BN (:mod:`lttoolbox.augment.dar_bn`)
normalises them with their own statistics.

Sources. The paper's body could not be read here, so no equation or table of it is cited. The
authors' repository (shiranzada/pure-noise at 102cac95bc90e7b5be0d656a3e003e7fa150dd93) holds no
code ("The code will be released in this repository soon."). What follows is the unofficial
reproduction seungjaeryanlee/pure-noise at 239a2b1254167b948b1e9be1d01d775e7879b2bd (not the
authors'): ``replace_with_pure_noise.py`` lines 5-47 (the rule and the noise), ``train.py``
lines 104-130 (the oversampling sampler) and 204-230 (where noise enters),
``default_cifar10lt.yaml`` lines 20-21, 26-27 and 61-67 (normalisation; over-sampling from epoch
160; ``delta`` 1/3, the noise mean and std, noise from epoch 160),
``bash_scripts/datasets_and_ir_ratios.sh`` (OPeN resumes the ERM run's epoch-159
checkpoint with oversampling and noise on: both deferred to epoch 160).

The schedule is the recipe's: ``sampler: {name: class_balanced, start_epoch: 160}`` is the
reproduction's ``WeightedRandomSampler`` (per-sample weight ``1 / n_y``, with replacement, ``N``
draws an epoch: every class with probability ``1 / C``), deferred as the toolbox's DRS recipes
defer a sampler, and ``augment: [{name: open_noise, start_epoch: 160}, {name: dar_bn}]`` starts the
noise in the same epoch. ``open_noise`` replaces samples in whatever batch the phase's sampler
draws; it is the recipe that pairs it with an oversampling sampler.

Deliberate difference from the reproduction: where the noise enters. The reproduction normalises
the natural images (``train.py`` line 206, ``(x - mean) / std``) and then writes noise images
that are still in ``[0, 1]`` pixel units into the normalised batch (line 224), so its noise has
another mean and scale than every natural input. Here the noise is made in pixel units, as an
image, and normalised exactly as the training images are: each input is ``(clip(N(mean, std),
0, 1) - m) / s`` with ``(m, s)`` the data's normalisation statistics. With the default noise
statistics (the data's own, ``mean``/``std`` left unset) that is a standard normal clipped to
``[-m / s, (1 - m) / s]`` per channel. The reproduction's noise statistics for CIFAR-10-LT are
the CIFAR-10 normalisation constants, the toolbox's CIFAR-10 normalisation, so the defaults draw
the reproduction's noise distribution.

Random draws: the replacement coins (``torch.rand``) and the noise (``normal_``) come from torch's
global generator of the batch's device (seeded and checkpointed by the trainer), on the device,
for the whole batch at a fixed shape: no host synchronisation, and a resumed run draws what the
uninterrupted one drew. (The reproduction draws noise only for the replaced samples; the
replaced samples' noise has the same distribution either way.)

Example:
    >>> import torch
    >>> from types import SimpleNamespace
    >>> from lttoolbox.api import Context
    >>> from lttoolbox.augment.pure_noise import OPeN
    >>> from lttoolbox.batch import Batch
    >>> open_noise = OPeN(context=Context.from_counts([100, 10, 1]))
    >>> [round(p, 4) for p in open_noise.probabilities.tolist()]  # delta (1 - n_y / n_max)
    [0.0, 0.3, 0.33]
    >>> open_noise.set_normalisation(mean=(0.5,), std=(0.25,))
    >>> _ = torch.manual_seed(0)
    >>> step = SimpleNamespace(batch=Batch.plain(torch.zeros(6, 1, 4, 4),
    ...                                          torch.tensor([0, 0, 2, 2, 2, 2])))
    >>> open_noise.before_step(step)
    >>> step.batch.synthetic.tolist()  # class 0 is never replaced
    [False, False, True, True, True, False]
    >>> step.batch.y_a.tolist()  # labels kept
    [0, 0, 2, 2, 2, 2]
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..api import Component, Context
from ..batch import Batch
from ..checks import check_number
from ..errors import ConfigError
from ..registry import AUGMENTS


def replacement_probabilities(class_counts: Sequence[int], delta: float) -> np.ndarray:
    """``delta * (1 - n_y / n_max)`` per class (``replace_with_pure_noise.py`` lines 30-33).

    Example:
        >>> replacement_probabilities([100, 10, 1], 1 / 3).round(4).tolist()
        [0.0, 0.3, 0.33]
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 1).any():
        raise ConfigError(f"open_noise needs every class count >= 1, got {list(class_counts)}")
    return delta * (1.0 - counts / counts.max())


def _channels(name: str, value: Any, positive: bool) -> tuple[float, ...] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(f"{name} must be a number per channel (a list), got {value!r}")
    # a mean on the 0..1 pixel scale, a positive standard deviation
    return tuple(check_number(name, v, 0.0, None if positive else 1.0, low_open=positive)
                 for v in values)


@AUGMENTS.register("open_noise")
class OPeN(Component):
    """OPeN: minority samples of an oversampled batch replaced by pure-noise images (Zada et al.,
    ICML 2022; the rule of the unofficial reproduction, see :mod:`lttoolbox.augment.pure_noise`).

    Not a mix (``mixes = False``): it replaces inputs in :meth:`before_step`, keeps the labels,
    and marks the replaced samples in ``batch.synthetic``.

    Args:
        delta: The largest replacement probability, reached as ``n_y / n_max -> 0``; ``[0, 1]``
            (1/3, the reproduction's ``default_cifar10lt.yaml`` line 63).
        mean: Per-channel mean of the noise on the 0..1 pixel scale; ``None`` (default): the
            data's normalisation mean (the reproduction's ``pure_noise_mean`` is the CIFAR-10
            normalisation mean).
        std: Per-channel standard deviation of the noise (each > 0); ``None``: the data's
            normalisation std.
        start_epoch, end_epoch: The epoch window; the reproduction starts at epoch 160 of 200,
            with the oversampling sampler.
        context: From the trainer: the ``class_counts`` are required.

    Recipe::

        sampler: {name: class_balanced, start_epoch: 160}
        augment: [{name: open_noise, delta: 0.3333333333333333, start_epoch: 160},
                  {name: dar_bn}]

    Example:
        >>> from lttoolbox.api import Context
        >>> OPeN(delta=0.5, context=Context.from_counts([8, 4, 2])).probabilities.tolist()
        [0.0, 0.25, 0.375]
    """

    def __init__(self, delta: float = 1.0 / 3.0, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, start_epoch: int = 0,
                 end_epoch: int | None = None, *, context: Context | None = None):
        super().__init__(start_epoch, end_epoch, context=context)
        self.delta = check_number("delta", delta, 0.0, 1.0)
        self.noise_mean = _channels("mean", mean, positive=False)
        self.noise_std = _channels("std", std, positive=True)
        if (self.noise_mean is None) != (self.noise_std is None):
            raise ConfigError("give both mean and std of the noise, or neither (then the data's "
                              "normalisation statistics)", key="mean" if mean is None else "std")
        if self.noise_mean is not None and len(self.noise_mean) != len(self.noise_std):
            raise ConfigError(f"mean and std need one value per channel, got "
                              f"{len(self.noise_mean)} and {len(self.noise_std)}", key="std")
        if self.context.class_counts is None:
            raise ConfigError("open_noise needs the class counts; use it in a recipe, or pass "
                              "context=Context.from_counts([...]) yourself")
        self.probabilities = torch.as_tensor(
            replacement_probabilities(self.context.class_counts, self.delta), dtype=torch.float32)
        self.mean: tuple[float, ...] | None = None  # the data's normalisation
        self.std: tuple[float, ...] | None = None
        self._on_device: dict = {}

    def set_normalisation(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """The data's per-channel mean and standard deviation (0..1 scale): the model's inputs
        are ``(pixel - mean) / std``; the noise is made in pixels and normalised so."""
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._on_device = {}

    def before_phase(self, events) -> None:
        transform = events.eval_transform  # the normalisation the training batches share
        if not hasattr(transform, "mean"):
            raise ConfigError("open_noise needs the data's normalisation (mean/std), which this "
                              "data path's evaluation transform does not expose; use data.path: "
                              "memory")
        self.set_normalisation(transform.mean, transform.std)

    def _constants(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.mean is None:
            raise ConfigError("open_noise needs the data's normalisation (set_normalisation, "
                              "which the trainer calls at the phase's start)")
        channels = x.shape[1]
        noise_mean = self.noise_mean or self.mean
        noise_std = self.noise_std or self.std
        if len(self.mean) != channels or len(noise_mean) != channels:
            raise ConfigError(f"open_noise: the batch has {channels} channels, the noise mean/std "
                              f"{len(noise_mean)} and the normalisation {len(self.mean)}",
                              key="mean")
        key = (x.device, channels)
        if key not in self._on_device:
            def column(values):
                return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1).to(x.device)
            self._on_device[key] = (column(noise_mean), column(noise_std), column(self.mean),
                                    column(self.std), self.probabilities.to(x.device))
        return self._on_device[key]

    def noise_like(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of pure-noise images shaped as ``x``, normalised as the training inputs:
        ``(clip(N(mean, std), 0, 1) - m) / s`` per pixel and channel (``replace_with_pure_noise.py``
        lines 5-11, then the data's normalisation)."""
        noise_mean, noise_std, mean, std, _ = self._constants(x)
        noise = torch.empty_like(x, dtype=torch.float32).normal_()  # x's memory format
        noise = (noise * noise_std + noise_mean).clamp_(0.0, 1.0)
        return ((noise - mean) / std).to(x.dtype)

    def replace(self, batch: Batch) -> Batch:
        """The batch with each sample of class ``y`` replaced by noise with probability ``p_y``
        (labels kept), and the replaced samples marked in ``synthetic``."""
        x = batch.x
        probs = self._constants(x)[4]
        coins = torch.rand(x.shape[0], device=x.device) < probs[batch.y_a.to(x.device)]
        where = coins.view(-1, *([1] * (x.dim() - 1)))
        mixed = torch.where(where, self.noise_like(x), x)
        marked = coins if batch.synthetic is None else batch.synthetic | coins
        return batch.replace(x=mixed, synthetic=marked)

    def before_step(self, step) -> None:
        if self.active:
            step.batch = self.replace(step.batch)
