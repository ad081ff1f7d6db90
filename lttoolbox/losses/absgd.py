"""ABSGD: attentional-biased SGD as a wrapper around any per-sample loss (``absgd``)."""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..api import Component, Context
from ..batch import Batch
from ..epochs import UnreachableEpochWarning
from ..errors import ConfigError
from ..registry import LOSSES
from .base import LTLoss, check_epoch
from .weights import check_number

U_INITS = ("batch", "zero")


@LOSSES.register("absgd")
class ABSGDLoss(LTLoss):
    """Attentional-biased SGD (Qi, Xu, Jin, Yin, Yang, "Attentional-Biased Stochastic Gradient
    Descent", TMLR 2023, arXiv:2012.06951) around a per-sample loss.

    Each sample of the batch is weighted by ``exp(l_i / lam)``, normalised by a moving average
    ``u`` of the batches' mean, so that a step attends to the hard (high-loss) samples; with
    ``lam`` large the weights tend to uniform and the plain loss comes back. The paper's body
    (its Algorithm 1, equations and tables) could not be read here, so no equation number is
    cited; the formula is the official code's (qiqi-helloworld/ABSGD at a2b26f5, ``mylosses.py``
    lines 21-55, class ``ABSGD``; the same computation as the ``absgd`` 0.0.1 package's
    ``ABLoss``):

    ``u_t = (1 - gamma) u_{t-1} + gamma * alpha * mean_i exp(l_i / lam)``,
    ``p_i = exp(l_i / lam) / (B u_t)``, ``L = sum_i p_i l_i``,

    with ``p`` a constant for the gradient (``dL/dz = sum_i p_i dl_i/dz``). ``l_i`` is the wrapped
    loss's per-sample value, class weight included (the code weighs ``CBCELoss``'s weighted
    per-sample CE, so with DRW the weights also sharpen the attention). With ``alpha = 1`` and a
    steady ``u`` the weights sum to about 1; ``alpha`` scales them (and so the step) by about
    ``1 / alpha``.

    The two-phase schedule of the paper's abstract (SGD first, then ABSGD) is the epoch window:
    before ``start_epoch`` this is exactly the wrapped loss (its mean, its mixed-batch form, its
    normalizers) and ``u`` is not updated; from ``start_epoch`` on it is ABSGD.

    Deviations from the official code, each deliberate:

    * ``u`` is state without a graph: the code's ``u`` is built from the non-detached
      ``exp(l / lam)``, so every step's ``u`` links to all earlier steps' graphs (never
      traversed, since ``p`` is detached, but kept alive); here ``u`` is computed from detached
      values and kept as ``log u`` in a buffer, so it is in ``state_dict`` and a resumed run
      continues with the same ``u``.
    * Log space: ``exp(l / lam)`` overflows float32 once ``l / lam`` exceeds about 88 (a large
      class-weighted loss, a small ``lam``), and the code then gives ``inf / inf = NaN``. Here
      ``log u_t = logaddexp(log(1 - gamma) + log u_{t-1}, log gamma + log alpha +
      logmeanexp(l / lam))`` and ``p_i = exp(l_i / lam - log u_t) / B``: equal in exact
      arithmetic, and ``l_i / lam - log u_t <= log(B / (gamma alpha))``, so nothing overflows.
    * The first ABSGD step (``u_init``): the code starts from ``u_0 = 0``, so its first step has
      ``sum_i p_i = 1 / (gamma alpha)`` (2.9 for the CIFAR-10 command's gamma 0.7, alpha 0.5), a
      step ``1 / gamma`` times larger than the steady state's, decaying as ``(1 - gamma)^t``.
      The default ``u_init: batch`` starts the average at its first observation,
      ``u_1 = alpha mean_i exp(l_i / lam)`` (as if ``u_0`` were that value), so the first step
      has the steady scale; ``u_init: zero`` reproduces the code.
    * The stage switch is the epoch window, not the code's sentinel ``lam >= 200``.
    * Several processes: the mean in ``u`` is the global batch's (each process's
      ``logsumexp`` and count, exchanged with one all-reduce per step, on the device), and the
      batch size ``B`` in ``p`` is the global one through the trainer's ``normalize``, so two
      processes compute what one computes on their union (the code runs one process).

    A mixed (two-target) batch: each sample's loss is ``lam_i l(y_a)_i + (1 - lam_i) l(y_b)_i``
    (``lam_i`` the mixing weight, not ABSGD's ``lam``), and ABSGD weighs that value.

    ``u`` advances once per optimizer step: the forward pass computes ``u_t`` from the
    committed ``u_{t-1}`` and :meth:`after_step` commits it, so an optimizer that evaluates the
    loss twice in a step (a two-pass method) or a component that evaluates the objective does not
    advance the average twice. Each evaluation weighs its batch by the ``u_t`` of its own losses,
    and the last one's is committed: under ``sam``, the pass at the perturbed weights, whose
    gradient is the one applied.

    Args:
        loss: The wrapped per-sample loss, a registered loss name or ``{name: ..., ...}``
            (its class weights and DRW included); not a loss that weighs by the batch itself.
        lam: Temperature ``lam > 0`` of the weights ``exp(l / lam)``.
        gamma: Moving-average rate in ``(0, 1]`` (1: no memory, the weights are a softmax of
            ``l / lam`` over the batch, times ``1 / alpha``).
        alpha: Scale ``alpha > 0`` inside ``u``.
        start_epoch: First (0-based) epoch of ABSGD; before it, the plain wrapped loss.
        u_init: ``batch`` (``u`` starts at the first ABSGD batch's ``alpha`` mean) or ``zero``
            (the official code's ``u_0 = 0``).
        **base: The context (shorthands ``class_counts=``, ``num_classes=``), handed on to the
            wrapped loss as one object; see :class:`~lttoolbox.losses.base.LTLoss`.

    The defaults ``lam 0.5, gamma 0.9, alpha 1`` are the code README's key parameters and the
    ``absgd`` package's defaults; the CIFAR recipes use the README's commands.

    Example:
        >>> import torch
        >>> loss = ABSGDLoss(loss="ce", lam=1.0, gamma=0.9, alpha=1.0, u_init="zero",
        ...                  num_classes=3)
        >>> z = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
        >>> y = torch.tensor([0, 0, 0])
        >>> [round(float(v), 4) for v in loss(z, y, reduction="none")]  # the CE of each sample
        [0.2395, 0.862, 3.0949]
        >>> round(float(loss(z, y)), 4)  # first step from u_0 = 0
        3.0537
        >>> loss.after_step(None)  # the trainer, after the optimizer's step
        >>> round(float(loss.u), 4)
        7.7172
    """

    batch_weighted = True

    # its weighting is its own: class weights and their deferral belong to the wrapped loss
    fixed_parameters = ("weights", "weights_start_epoch")

    def __init__(self, loss: dict | str = "ce", lam: float = 0.5, gamma: float = 0.9,
                 alpha: float = 1.0, start_epoch: int = 0, u_init: str = "batch", **base: Any):
        lam = check_number("lam", lam, 0.0, low_open=True)
        gamma = check_number("gamma", gamma, 0.0, 1.0, low_open=True)
        alpha = check_number("alpha", alpha, 0.0, low_open=True)
        start_epoch = check_epoch("start_epoch", start_epoch)
        if u_init not in U_INITS:
            raise ConfigError(f"u_init must be one of {', '.join(U_INITS)}, got {u_init!r}")
        super().__init__(**base)
        # the ABSGD phase's window
        Component.__init__(self, start_epoch=start_epoch, context=self.context)
        total_epochs = self.context.total_epochs
        if total_epochs is not None and start_epoch > 0 and start_epoch >= total_epochs:
            warnings.warn(f"loss 'absgd': start_epoch={start_epoch} is never reached in "
                          f"{total_epochs} epochs, so it trains with the plain wrapped loss",
                          UnreachableEpochWarning, stacklevel=2)
        self.inner = self._build_inner(loss, self.context)
        # what the wrapped loss needs and withholds is the wrapper's (AutoBalance's outer step
        # reads the validation split and moves its own parameters, never the main step)
        self.needs_validation = self.inner.needs_validation
        self.lam, self.gamma, self.alpha, self.u_init = lam, gamma, alpha, u_init
        self._log_keep = math.log1p(-gamma) if gamma < 1 else -math.inf
        self._log_alpha = math.log(alpha)
        self._log_gamma = math.log(gamma)
        # log u: -inf before the first ABSGD step. Persistent (resumed runs continue with it);
        # the forward pass writes u_t to ``log_u_next``, committed once per step (after_step).
        self.register_buffer("log_u", torch.full((), -math.inf))
        self.register_buffer("log_u_next", torch.full((), -math.inf), persistent=False)

    @staticmethod
    def _build_inner(cfg: Any, context: Context) -> LTLoss:
        """The wrapped loss, built with the same context; errors keyed ``loss.<...>``."""
        if isinstance(cfg, str):
            cfg = {"name": cfg}
        if not isinstance(cfg, dict) or "name" not in cfg:
            raise ConfigError(f"must be a loss name or a mapping with a 'name' key, got {cfg!r}",
                              key="loss")
        factory = LOSSES.get(cfg["name"], key="loss")
        if getattr(factory, "batch_weighted", False):
            raise ConfigError(f"absgd wraps a per-sample loss; '{cfg['name']}' weighs its "
                              f"samples by the batch itself", key="loss.name")
        if not getattr(factory, "single_label", True):
            # its attention weights are per image of one class; caught here, before training
            raise ConfigError(f"absgd wraps a loss on class-id targets; '{cfg['name']}' takes "
                              f"multi-hot targets only", key="loss.name")
        return LOSSES.build(cfg, key="loss", context=context)

    # ------------------------------------------------------------------ the moving average
    @property
    def u(self) -> torch.Tensor:
        """The committed moving average ``u`` (0 before the first ABSGD step; float64, though
        with large losses and a small ``lam`` only ``log_u`` is in range)."""
        return self.log_u.double().exp()

    def _global_logsumexp(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``logsumexp(z)`` and the number of samples, over every process's batch."""
        lse = torch.logsumexp(z, 0)
        count = z.new_tensor(float(z.shape[0]))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            size, rank = dist.get_world_size(), dist.get_rank()
            # One slot per process: the sum adds only zeros to each value, so it is exact.
            slots = z.new_zeros(2 * size)
            slots[rank] = lse
            slots[size + rank] = count
            dist.all_reduce(slots)
            lse, count = torch.logsumexp(slots[:size], 0), slots[size:].sum()
        return lse, count

    def _attended_sum(self, per: torch.Tensor) -> torch.Tensor:
        """``sum_i exp(l_i / lam) / u_t * l_i`` (the weights detached); writes ``u_t``."""
        with torch.autocast(device_type=per.device.type, enabled=False):
            z = per.detach() / self.lam
            lse, count = self._global_logsumexp(z)
            log_mean = self._log_alpha + lse - count.log()  # log(alpha * mean exp(l / lam))
            prev = self.log_u.to(z.dtype)
            blended = torch.logaddexp(self._log_keep + prev, self._log_gamma + log_mean)
            if self.u_init == "batch":  # the average starts at its first observation
                blended = torch.where(torch.isneginf(prev), log_mean, blended)
            self.log_u_next.copy_(blended)
            weights = torch.exp(z - blended)  # exp(l / lam) / u_t, at most B / (gamma alpha)
            return (weights * per).sum()

    # ------------------------------------------------------------------ the loss
    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The wrapped loss's unweighted per-sample values."""
        return self.inner.per_sample(logits, target)

    def normalizer(self, target: torch.Tensor) -> torch.Tensor:
        """The batch size while ABSGD is on (its ``p`` divides by ``B``), else the wrapped
        loss's normalizer."""
        if not self.active:
            return self.inner.normalizer(target)
        return torch.full((), float(target.shape[0]), device=target.device)

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                reduction: str = "mean") -> torch.Tensor:
        """``none``: the wrapped loss's per-sample values (what ABSGD weighs); ``sum``:
        ``sum_i exp(l_i / lam) / u_t * l_i``; ``mean``: that over ``B``, ABSGD's loss. Before
        ``start_epoch``: the wrapped loss's reductions."""
        if not self.active or reduction == "none":
            return self.inner(logits, target, reduction)
        per = self.inner(logits, target, "none")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be one of mean, sum, none, got {reduction!r}")
        total = self._attended_sum(per)
        return total if reduction == "sum" else total / per.shape[0]

    def batch_loss(self, logits: torch.Tensor, batch: Batch,
                   normalize: Callable[[torch.Tensor], torch.Tensor] | None = None
                   ) -> torch.Tensor:
        """ABSGD's loss of a possibly mixed batch (each sample's loss mixed by its ``lam``);
        ``normalize`` (several processes) makes ``B`` the global batch size."""
        if not self.active:
            return self.inner.batch_loss(logits, batch, normalize)
        per = self.inner(logits, batch.y_a, "none")
        if batch.mixed:
            mix = batch.lam.to(per.dtype)
            per = mix * per + (1 - mix) * self.inner(logits, batch.y_b, "none")
        size = per.new_tensor(float(per.shape[0]))
        if normalize is not None:
            size = normalize(size.reshape(1))[0]
        return self._attended_sum(per) / size

    # ------------------------------------------------------------------ events
    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.inner.set_epoch(epoch)

    def before_run(self, run) -> None:
        self.inner.before_run(run)

    def before_phase(self, events) -> None:
        self.inner.before_phase(events)

    def before_step(self, step) -> None:
        self.inner.before_step(step)

    def after_step(self, step) -> None:
        """Commit the step's ``u_t`` (a device copy, no synchronisation)."""
        if self.active:
            self.log_u.copy_(self.log_u_next)
        self.inner.after_step(step)

    def after_epoch(self, epoch: int) -> None:
        self.inner.after_epoch(epoch)

    def frozen_parameters(self):
        return self.inner.frozen_parameters()

    def after_phase(self, events) -> None:
        self.inner.after_phase(events)

    def after_run(self, run) -> None:
        self.inner.after_run(run)

    def extra_repr(self) -> str:
        return (f"lam={self.lam}, gamma={self.gamma}, alpha={self.alpha}, "
                f"start_epoch={self.start_epoch}, u_init={self.u_init!r}")
