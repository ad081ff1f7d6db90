"""DAR-BN: distribution-aware routing batch normalisation (Zada, Benou and Irani, "Pure Noise to
the Rescue of Insufficient Data", ICML 2022, arXiv:2112.08810), for batches that mix natural
images with pure-noise images (:mod:`lttoolbox.augment.pure_noise`).

Every BatchNorm layer of the model routes the samples of a training batch by
``batch.synthetic``:

* natural samples: ordinary batch normalisation on the natural sub-batch: its per-channel mean
  and biased variance, and the running statistics updated from natural samples only (momentum
  and unbiased variance as ``torch.nn.BatchNorm``);
* noise samples: normalised with their own per-channel batch mean and biased variance; no
  running statistics are kept for them;
* the affine ``gamma``, ``beta`` is shared, and it learns from natural samples only.

Evaluation (the model in evaluation mode), and a training batch without ``synthetic``, are plain
BatchNorm: the routing layer calls ``torch.nn.BatchNorm``'s own forward. The routing layers share
the plain layers' parameters and buffers (the same tensors, under the same names), so the state
dict, every checkpoint and the exported weights are those of the plain model, which loads them
unchanged; after the run (``after_run``) the plain layers are put back in the model.

Sources. The paper's body and its appendix could not be read here, and the authors published no
code (shiranzada/pure-noise at 102cac95bc90e7b5be0d656a3e003e7fa150dd93). This follows the
unofficial reproduction seungjaeryanlee/pure-noise at 239a2b1254167b948b1e9be1d01d775e7879b2bd,
``models/dar_bn.py`` lines 1-62 (whose docstring is found elsewhere with the comment "From
Appendix E in Zada et al., 2022"; not verified here), applied to every BatchNorm layer as its
models do (``models/resnet_akamaster.py`` lines 85, 88, 137).

Deliberate differences from the reproduction:

* gradient through the noise samples. The reproduction computes the noise branch inside
  ``torch.no_grad()`` (lines 46-52), which keeps the noise samples from training ``gamma`` and
  ``beta`` but also cuts every gradient through the noise activations: a noise image's loss then
  reaches the layers before a BatchNorm only through identity shortcuts, and the stem not at
  all. Here the default (``noise_gradient: activations``) detaches ``gamma`` and ``beta`` only,
  the likely intent (noise must not shape the shared affine), and the gradient flows through the
  noise activations and their own statistics as through any batch norm; ``noise_gradient:
  none`` is the reproduction's ``no_grad``. Which the paper means could not be read.
* statistics as masked reductions over the whole batch (the routing mask on the device, fixed
  shapes): no host synchronisation, no ``nonzero``, and it compiles, where the reproduction
  gathers the two sub-batches (``x[mask]``). The natural branch is then equal to
  ``torch.nn.functional.batch_norm`` on the natural sub-batch up to float rounding, not bit for
  bit; the statistics are computed in float32 under autocast.
* a batch with no natural or no noise sample is handled: the empty group's statistics are not
  used and the running statistics do not move when there is no natural sample (the
  reproduction takes the mean of an empty tensor, and ``BatchNorm`` on an empty natural
  sub-batch raises).

Across processes (DDP) each process normalises its own share of the batch, as plain
``torch.nn.BatchNorm`` does: natural and noise statistics are per process, and the running
statistics are rank 0's when checkpointed and evaluated (the trainer synchronises buffers before
evaluation). ``torch.nn.SyncBatchNorm`` (``train.sync_bn: true``) is refused: a synchronised
DAR-BN is not implemented.

Example:
    >>> import torch
    >>> from lttoolbox.augment.dar_bn import dar_batch_norm
    >>> x = torch.tensor([1.0, 3.0, 10.0, 14.0]).view(4, 1, 1, 1)   # two natural, two noise
    >>> noise = torch.tensor([False, False, True, True])
    >>> mean, var = torch.zeros(1), torch.ones(1)
    >>> out = dar_batch_norm(x, noise, torch.tensor([2.0]), torch.tensor([0.5]), mean, var)
    >>> [round(v, 4) for v in out.flatten().tolist()]   # each group normalised by its own stats
    [-1.5, 2.5, -1.5, 2.5]
    >>> round(float(mean), 4), round(float(var), 4)     # from the natural samples only
    (0.2, 1.1)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..api import Component, Context
from ..batch import Batch
from ..errors import ConfigError
from ..registry import AUGMENTS

#: The plain layers DAR-BN replaces (exact types: a subclass with a forward of its own, such as
#: SyncBatchNorm, is refused rather than silently changed).
PLAIN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
GRADIENTS = ("activations", "none")


def dar_batch_norm(x: torch.Tensor, noise: torch.Tensor, weight: torch.Tensor | None,
                   bias: torch.Tensor | None, running_mean: torch.Tensor | None = None,
                   running_var: torch.Tensor | None = None,
                   num_batches_tracked: torch.Tensor | None = None, momentum: float | None = 0.1,
                   eps: float = 1e-5, noise_gradient: str = "activations") -> torch.Tensor:
    """Training-mode DAR-BN of ``x`` ``(B, C, ...)`` with ``noise`` ``(B,)`` bool marking the
    noise samples.

    Natural rows: ``(x - mu_n) / sqrt(var_n + eps) * gamma + beta`` with ``mu_n``, ``var_n``
    the per-channel mean and biased variance over the natural rows; noise rows the same with the
    noise rows' own statistics and ``gamma``, ``beta`` detached (``noise_gradient``:
    ``activations``) or everything detached (``none``, the reproduction's ``no_grad``). The
    running statistics (where given) move as ``torch.nn.BatchNorm``'s, ``r <- (1 - f) r + f s``
    with ``f`` the momentum (``None``: ``1 / num_batches_tracked``) and the unbiased variance,
    from the natural rows only, and not at all for a batch without a natural row.
    """
    if noise.dtype != torch.bool or noise.shape != (x.shape[0],):
        raise ValueError(f"the noise mask must be a bool tensor of shape ({x.shape[0]},), got "
                         f"{noise.dtype} {tuple(noise.shape)}")
    if noise_gradient not in GRADIENTS:
        raise ValueError(f"noise_gradient must be one of {', '.join(GRADIENTS)}, got "
                         f"{noise_gradient!r}")
    b, c = x.shape[:2]
    row = (b,) + (1,) * (x.dim() - 1)           # broadcasts over a sample
    spatial = tuple(range(2, x.dim()))
    per_sample = x[0, 0].numel()                # elements of one channel of one sample
    xf = x.float()
    is_noise = noise.view(row)
    if noise_gradient == "none":
        xf = torch.where(is_noise, xf.detach(), xf)
    noise_f = noise.to(torch.float32).view(b, 1)
    natural_f = 1.0 - noise_f
    n_noise = noise_f.sum() * per_sample
    n_natural = natural_f.sum() * per_sample
    # an empty group's statistics are 0 / 1, finite and never selected below
    den_noise, den_natural = n_noise.clamp(min=1.0), n_natural.clamp(min=1.0)

    def sums(t: torch.Tensor) -> torch.Tensor:  # per sample and channel, (B, C)
        return t.sum(dim=spatial) if spatial else t

    s1 = sums(xf)
    mean_natural = (s1 * natural_f).sum(0) / den_natural
    mean_noise = (s1 * noise_f).sum(0) / den_noise
    pick = noise.view(b, 1)
    centered = xf - torch.where(pick, mean_noise, mean_natural).view(b, c, *([1] * len(spatial)))
    s2 = sums(centered * centered)
    var_natural = (s2 * natural_f).sum(0) / den_natural
    var_noise = (s2 * noise_f).sum(0) / den_noise
    scale = torch.where(pick, torch.rsqrt(var_noise + eps), torch.rsqrt(var_natural + eps))
    shape = (b, c) + (1,) * len(spatial)
    out = centered * scale.view(shape)
    if weight is not None:
        # the shared affine learns from the natural rows only
        out = out * torch.where(pick, weight.detach().float(), weight.float()).view(shape)
    if bias is not None:
        out = out + torch.where(pick, bias.detach().float(), bias.float()).view(shape)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            seen = (n_natural > 0).to(torch.float32)
            if num_batches_tracked is not None:
                num_batches_tracked.add_(seen.to(num_batches_tracked.dtype))
            if momentum is None:  # cumulative moving average
                factor = seen / num_batches_tracked.clamp(min=1).to(torch.float32)
            else:
                factor = seen * momentum
            unbiased = var_natural * n_natural / (n_natural - 1).clamp(min=1.0)
            running_mean.mul_(1 - factor).add_(factor * mean_natural.to(running_mean.dtype))
            running_var.mul_(1 - factor).add_(factor * unbiased.to(running_var.dtype))
    return out.to(x.dtype)


@dataclass
class Router:
    """Which samples of the batch now in the model are noise (``mask``, or ``None``) and how the
    noise samples' gradient flows (``noise_gradient``): one object shared by a model's routing
    layers, set by the hook of whichever :class:`DARBN` component acts (one per phase may)."""

    noise_gradient: str = "activations"
    mask: torch.Tensor | None = None


class DARBatchNorm(_BatchNorm):
    """A BatchNorm layer that routes noise samples (see :func:`dar_batch_norm`), built on a plain
    ``torch.nn.BatchNorm1d/2d/3d`` whose parameters and buffers it shares (the same tensors and
    dictionaries, so state dict keys, optimizer entries and device moves are the plain layer's).

    In evaluation mode, or while the router holds no mask, its forward is the plain layer's.
    """

    def __init__(self, plain: _BatchNorm, router: Router):
        nn.Module.__init__(self)
        for name in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
            setattr(self, name, getattr(plain, name))
        self._parameters = plain._parameters
        self._buffers = plain._buffers
        self._non_persistent_buffers_set = plain._non_persistent_buffers_set
        self.training = plain.training
        object.__setattr__(self, "plain", plain)   # not a child module: no key prefix
        object.__setattr__(self, "router", router)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        self.plain._check_input_dim(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.router.mask
        if not self.training or mask is None:
            return super().forward(x)  # torch.nn.BatchNorm's forward, on the shared tensors
        self._check_input_dim(x)
        if mask.shape[0] != x.shape[0]:
            raise RuntimeError(
                f"dar_bn: the batch marks {mask.shape[0]} samples as natural or noise, and "
                f"{x.shape[0]} reach this BatchNorm layer; a hook before it added or dropped "
                f"rows without extending batch.synthetic")
        track = self.track_running_stats
        return dar_batch_norm(x, mask, self.weight, self.bias,
                              self.running_mean if track else None,
                              self.running_var if track else None,
                              self.num_batches_tracked if track else None,
                              self.momentum, self.eps, self.router.noise_gradient)


def check_batch_norms(model: nn.Module) -> None:
    """Refuse a model without a BatchNorm layer, or with one that is not a plain
    ``torch.nn.BatchNorm1d/2d/3d`` (``SyncBatchNorm``), in one line (``ConfigError``)."""
    found = False
    for where, module in model.named_modules():
        if isinstance(module, DARBatchNorm) or type(module) in PLAIN:
            found = True
        elif isinstance(module, _BatchNorm):
            raise ConfigError(f"dar_bn routes plain torch.nn.BatchNorm1d/2d/3d layers; the "
                              f"model's '{where}' is a {type(module).__name__} (for "
                              f"SyncBatchNorm set train.sync_bn: false)")
    if not found:
        raise ConfigError(f"dar_bn routes the BatchNorm layers of the model, and "
                          f"{type(model).__name__} has none; use a model with BatchNorm or drop "
                          f"dar_bn")


def route_batch_norms(model: nn.Module, router: Router
                      ) -> tuple[Router, list[tuple[nn.Module, str, _BatchNorm]]]:
    """Replace every plain BatchNorm layer of ``model`` by a :class:`DARBatchNorm` on ``router``.
    A model already routed (another phase's component routed it) keeps its router, which is
    returned: every component on one model then sets the same one. Returns the router and
    ``(parent, name, plain)`` of each layer, for :func:`restore_batch_norms`.

    Raises:
        ConfigError: the model has no BatchNorm layer, or one that is not a plain
            ``torch.nn.BatchNorm1d/2d/3d`` (``SyncBatchNorm``).
    """
    check_batch_norms(model)
    found = []
    routed = [m for m in model.modules() if isinstance(m, DARBatchNorm)]
    router = routed[0].router if routed else router
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DARBatchNorm):
                found.append((parent, name, child.plain))
            elif type(child) in PLAIN:
                setattr(parent, name, DARBatchNorm(child, router))
                found.append((parent, name, child))
    return router, found


def restore_batch_norms(found: list[tuple[nn.Module, str, _BatchNorm]]) -> None:
    """Put the plain layers back (they hold the trained parameters and statistics)."""
    for parent, name, plain in found:
        current = getattr(parent, name)
        plain.train(current.training)
        setattr(parent, name, plain)


@AUGMENTS.register("dar_bn")
class DARBN(Component):
    """DAR-BN (Zada et al., ICML 2022; the unofficial reproduction's ``models/dar_bn.py``, see
    :mod:`lttoolbox.augment.dar_bn`): the model's BatchNorm layers normalise the samples that
    ``batch.synthetic`` marks with their own statistics, the others as plain BatchNorm with the
    running statistics from them alone.

    It acts at the model's ``input`` (reads the batch's mask for the layers) and, at the run's
    start (``before_run``), swaps routing layers in for the model's BatchNorm layers; after the
    run the plain layers are back. A model without BatchNorm, or with ``SyncBatchNorm``, is
    refused when the phase is built (``check_model``).

    Args:
        noise_gradient: ``activations`` (default): the noise samples' gradient flows through
            their activations and statistics, but not into ``gamma``/``beta``; ``none``: no
            gradient through the noise samples' normalisation at all (the reproduction's
            ``torch.no_grad()``).
        start_epoch, end_epoch: The epoch window (outside it the layers are plain BatchNorm).
        context: Unused (accepted as every component's).

    Recipe::

        augment: [{name: open_noise, start_epoch: 160}, {name: dar_bn}]

    Example:
        >>> import torch
        >>> from lttoolbox.augment.dar_bn import DARBN
        >>> from lttoolbox.batch import Batch
        >>> from lttoolbox.models import DigitsCNN
        >>> model, part = DigitsCNN(num_classes=3), DARBN()
        >>> part.route(model)
        >>> type(model.stem[1]).__name__, sorted(model.state_dict()) == sorted(
        ...     DigitsCNN(num_classes=3).state_dict())
        ('DARBatchNorm', True)
        >>> batch = Batch.plain(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 2]))
        >>> batch = batch.replace(synthetic=torch.tensor([False, False, True, True]))
        >>> logits, _ = model.forward_hooked(batch, {"input": part})
        >>> part.restore(); type(model.stem[1]).__name__
        'BatchNorm2d'
    """

    def __init__(self, noise_gradient: str = "activations", start_epoch: int = 0,
                 end_epoch: int | None = None, *, context: Context | None = None):
        super().__init__(start_epoch, end_epoch, context=context)
        if noise_gradient not in GRADIENTS:
            raise ConfigError(f"noise_gradient must be one of {', '.join(GRADIENTS)}, got "
                              f"{noise_gradient!r}")
        self.noise_gradient = noise_gradient
        self.router = Router(noise_gradient)
        self._swapped: list = []

    def points(self) -> tuple[str, ...]:
        return ("input",)

    def __call__(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
        mask = batch.synthetic
        if mask is not None and (mask.dtype != torch.bool or mask.shape != (h.shape[0],)):
            raise ValueError(f"batch.synthetic must be a bool tensor of shape ({h.shape[0]},), "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        self.router.mask = mask
        self.router.noise_gradient = self.noise_gradient
        return h, batch

    def route(self, model: nn.Module) -> None:
        """Swap routing layers in for the model's BatchNorm layers."""
        self.router, self._swapped = route_batch_norms(model, self.router)

    def restore(self) -> None:
        """Put the plain BatchNorm layers back."""
        restore_batch_norms(self._swapped)
        self._swapped = []
        self.router.mask = None

    def check_model(self, model: nn.Module) -> None:
        check_batch_norms(model)

    def before_run(self, run: Any) -> None:
        self.route(run.model)

    def after_step(self, step: Any) -> None:
        self.router.mask = None  # no mask outlives its step's forward

    def after_run(self, run: Any) -> None:
        self.restore()
