"""AutoBalance: a parametric cross-entropy whose per-class logit adjustments are learned by a
hypergradient on the validation split (a bilevel loss design)."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..batch import Batch
from ..checks import check_bool, check_int
from ..errors import ConfigError
from ..registry import LOSSES
from .base import LTLoss
from .weights import check_number

CODE = "ucr-optml/AutoBalance at 8b4bd4c22ca7579a43ce0a8a8d5b9079731e5e39"


def neumann_inverse_hvp(hvp, v: Sequence[torch.Tensor], terms: int, alpha: float
                        ) -> list[torch.Tensor]:
    """``alpha * sum_{j=0}^{terms} (I - alpha H)^j v``: the Neumann-series approximation of
    ``H^{-1} v`` that the official code computes (``core/utils.py`` lines 19-35,
    ``neumann_hyperstep_preconditioner``); it converges when every eigenvalue of ``H`` lies in
    ``(0, 2 / alpha)``.

    Args:
        hvp: ``hvp(u) -> H u`` for a list of tensors ``u`` shaped as ``v``.
        v: The vector (a list of tensors).
        terms: The series' terms after the first (the code's 5).
        alpha: Its step size (the code's ``elementary_lr``, 1.0).

    Example:
        >>> import torch
        >>> h = torch.tensor([0.5])
        >>> round(float(neumann_inverse_hvp(lambda u: [h * u[0]], [torch.ones(1)], 5, 1.0)[0]), 5)
        1.96875
    """
    counter = [t.detach() for t in v]
    total = list(counter)
    for _ in range(terms):
        product = hvp(counter)
        counter = [c - alpha * p for c, p in zip(counter, product)]
        total = [t + c for t, c in zip(total, counter)]
    return [alpha * t for t in total]


@LOSSES.register("autobalance")
class AutoBalanceLoss(LTLoss):
    """AutoBalance's parametric loss and its outer step (Li, Zhang, Thrampoulidis, Chen, Oymak,
    "AutoBalance: Optimized Loss Functions for Imbalanced Data", NeurIPS 2021,
    arXiv:2201.01212). The paper's body could not be read here: its equation and table numbers
    are not cited; the formula and every default are the official code's (``CODE``).

    Training loss (``core/utils.py`` lines 38-52, ``loss_adjust_cross_entropy``)::

        l(z, y) = CE(sigmoid(d) * z + l, y),

    per class a multiplicative factor ``sigmoid(d_c)`` in (0, 1) and an additive offset ``l_c``
    (init ``d = 1``, so the factor starts at 0.7311, and ``l = 0``), with the base class weights
    ``w_y`` (``weights``; fixed, as the code's ``wy: false``). With ``group_size = g`` one
    ``(d, l)`` pair is shared by each block of ``g`` consecutive classes (the code's CIFAR-100
    search uses 10). The model is evaluated on its plain logits.

    Outer step, every ``every`` steps of the epochs from ``start_epoch`` on, before the step's
    update (``core/trainer.py`` lines 52-100): the implicit-function-theorem hypergradient

        dL_val/d(d, l) = -(d^2 L_train / d(d, l) dw) H^{-1} grad_w L_val,

    ``L_train`` the mean training objective of ``train_batches`` fresh training batches
    (``step.objective``), ``H`` its Hessian in the model's weights ``w``, ``L_val`` the mean
    cross-entropy of the plain logits on ``val_batches`` validation batches
    (``step.validation_batch``), ``H^{-1} v`` by :func:`neumann_inverse_hvp` (``neumann_terms``,
    ``neumann_lr``); the loss's own SGD (``outer_lr``, momentum ``outer_momentum``, weight
    decay ``outer_weight_decay``; the code's ``SGD([dy, ly], momentum=0.9, weight_decay=1e-4)``)
    then steps ``(d, l)``. Its rate follows the code's schedule: linear warm-up over
    ``outer_warmup_epochs`` counted from ``start_epoch``, then ``x outer_gamma`` at each of
    ``milestones``. The main optimizer never moves ``(d, l)`` (:meth:`frozen_parameters`).

    The validation objective is the code's balanced one: its class-weighted cross-entropy
    (weights ``1 / n_val_c``) on an imbalanced split equals the plain mean here, where the
    toolbox's validation split is balanced (``data.val_per_class``).

    Deliberate deviations from the code:

    * The code also takes an outer-optimizer step at every step of an outer epoch on a
      validation loss that does not depend on ``(d, l)``: a zero (PyTorch < 2.0) or missing
      (>= 2.0) gradient, so under old PyTorch momentum and weight decay re-apply the last
      hypergradient about 8.8 times over the next 20 steps and under new PyTorch nothing moves.
      Here only the hypergradient steps (the PyTorch >= 2.0 behaviour); that extra forward and
      backward is not spent.
    * The outer step's forwards leave the model as they found it: the BatchNorm running
      statistics are restored after it (the code lets its 10 extra training and 10 validation
      batches, the latter augmented, update them).
    * The fresh training batches are drawn uniformly (without replacement within a batch) from
      the training set with torch's global generator, which the trainer seeds and checkpoints;
      the code reads its (unseeded) training loader.
    * The validation split is the toolbox's balanced one, carved with the run's seed; the code's
      is an imbalanced, unseeded 80/20 split, whose CIFAR-100 version crashes at 8b4bd4c.
    * The code's second stage (a fresh model retrained 200 epochs with ``(d, l)`` frozen, the
      grouped values interpolated per class) is not part of this loss: ``dy_init``/``ly_init``
      take lists and ``search: false`` freezes them, so a second run retrains with a run's
      learned values (results.json ``selection``).

    Args:
        every: Steps between outer steps (the code's ``iter_interval``, 20).
        train_batches, val_batches: Batches averaged by each (10 and 10).
        batch_size, val_batch_size: Their sizes (128 and 128, the code's ``low_batch_size``); a
            batch holds at most the whole training set or validation split.
        neumann_terms, neumann_lr: The Neumann series' terms and step size (5, 1.0).
        outer_lr: The outer SGD's rate (0.01; the code's CIFAR-100 config uses 0.1).
        outer_momentum, outer_weight_decay: Its momentum and weight decay (0.9, 1e-4).
        outer_warmup_epochs: Its linear warm-up, from ``start_epoch`` (10; CIFAR-100: 40).
        milestones, outer_gamma: Epochs at which its rate is multiplied by ``outer_gamma``
            ([220, 260], 0.1).
        group_size: Classes sharing one ``(d, l)`` pair (1); must divide the class count.
        dy_init, ly_init: Initial ``d`` and ``l``: a number, or one value per group (1.0, 0.0).
        search: ``false``: no outer step (a fixed loss with the given values; no validation
            split needed).
        start_epoch, end_epoch: The epochs with outer steps (the code's 120 and its last).
        **base: ``weights``, ``weights_start_epoch`` and the context
            (:class:`~lttoolbox.losses.base.LTLoss`).

    Example:
        >>> import torch
        >>> loss = AutoBalanceLoss(num_classes=3, dy_init=[1.0, 0.0, -1.0],
        ...                        ly_init=[0.5, 0.0, -0.5], search=False)
        >>> z = torch.tensor([[2.0, 1.0, 0.0]])
        >>> round(loss(z, torch.tensor([2])).item(), 4)  # CE of (1.9621, 0.5, -0.5)
        2.7375
    """

    needs_validation = True  # with search: false, an instance declares False

    def __init__(self, every: int = 20, train_batches: int = 10, val_batches: int = 10,
                 batch_size: int = 128, val_batch_size: int = 128, neumann_terms: int = 5,
                 neumann_lr: float = 1.0, outer_lr: float = 0.01, outer_momentum: float = 0.9,
                 outer_weight_decay: float = 1e-4, outer_warmup_epochs: int = 10,
                 milestones: Sequence[int] = (220, 260), outer_gamma: float = 0.1,
                 group_size: int = 1, dy_init: float | Sequence[float] = 1.0,
                 ly_init: float | Sequence[float] = 0.0, search: bool = True,
                 start_epoch: int = 120, end_epoch: int | None = None, **base: Any):
        self.every = check_int("every", every, 1, whole_floats=True)
        self.train_batches = check_int("train_batches", train_batches, 1, whole_floats=True)
        self.val_batches = check_int("val_batches", val_batches, 1, whole_floats=True)
        self.batch_size = check_int("batch_size", batch_size, 1, whole_floats=True)
        self.val_batch_size = check_int("val_batch_size", val_batch_size, 1, whole_floats=True)
        self.neumann_terms = check_int("neumann_terms", neumann_terms, 0, whole_floats=True)
        self.neumann_lr = check_number("neumann_lr", neumann_lr, 0.0, low_open=True)
        self.outer_lr = check_number("outer_lr", outer_lr, 0.0, low_open=True)
        self.outer_momentum = check_number("outer_momentum", outer_momentum, 0.0, 1.0,
                                           high_open=True)
        self.outer_weight_decay = check_number("outer_weight_decay", outer_weight_decay, 0.0)
        self.outer_warmup_epochs = check_int("outer_warmup_epochs", outer_warmup_epochs, 0,
                                             whole_floats=True)
        self.outer_gamma = check_number("outer_gamma", outer_gamma, 0.0, low_open=True)
        if not isinstance(milestones, (list, tuple)):
            raise ConfigError(f"milestones must be a list of epochs, got {milestones!r}")
        self.milestones = [check_int("milestones", m, 0, whole_floats=True) for m in milestones]
        check_bool("search", search)
        self.search = search
        start_epoch = check_int("start_epoch", start_epoch, 0, whole_floats=True)
        super().__init__(**base)
        # The outer-step window; LTLoss's own (start_epoch) is the weights' DRW switch.
        self.outer_start, self.outer_end = start_epoch, end_epoch
        if (end_epoch is not None
                and check_int("end_epoch", end_epoch, 0, whole_floats=True) <= start_epoch):
            raise ConfigError(f"end_epoch must be greater than start_epoch ({start_epoch}), "
                              f"got {end_epoch!r}")
        if self.num_classes is None:
            raise ConfigError("loss 'autobalance' needs the number of classes; the trainer "
                              "passes it, outside the trainer build with num_classes=...")
        self.group_size = check_int("group_size", group_size, 1, whole_floats=True)
        if self.num_classes % self.group_size:
            raise ConfigError(f"group_size {self.group_size} must divide the {self.num_classes} "
                              f"classes (one (d, l) pair per block of consecutive classes)")
        groups = self.num_classes // self.group_size
        self.dy = nn.Parameter(self._initial("dy_init", dy_init, groups))
        self.ly = nn.Parameter(self._initial("ly_init", ly_init, groups))
        self.needs_validation = search  # read by the trainer before training
        world = self.context.world_size
        if search and world is not None and world > 1:
            raise ConfigError(
                "autobalance's outer step differentiates the training objective twice (a "
                "Hessian-vector product through step.objective) and runs its forward many times "
                "per update, which DistributedDataParallel does not support (one backward per "
                "forward, no double backward): train it in one process, or set search: false")
        self._optimizer: torch.optim.SGD | None = None
        self.outer_steps = 0
        self._val_size: int | None = None  # the validation split's images, where known

    def before_run(self, run) -> None:
        """Learn the validation split's size (``data.val_per_class`` images per class): a
        validation batch holds at most the whole split."""
        per_class = (run.recipe.get("data") or {}).get("val_per_class")
        if isinstance(per_class, int) and not isinstance(per_class, bool):
            self._val_size = per_class * self.num_classes

    @staticmethod
    def _initial(name: str, value: Any, groups: int) -> torch.Tensor:
        if isinstance(value, (list, tuple)):
            values = [check_number(name, v) for v in value]
            if len(values) != groups:
                raise ConfigError(f"{name} has {len(values)} values; give one number or one per "
                                  f"group ({groups})")
            return torch.tensor(values, dtype=torch.float32)
        return torch.full((groups,), check_number(name, value), dtype=torch.float32)

    # ----------------------------------------------------------------------- the training loss
    def adjustments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-class factor ``sigmoid(d)`` and offset ``l`` (groups expanded), each ``(C,)``."""
        scale, offset = torch.sigmoid(self.dy), self.ly
        if self.group_size > 1:
            scale = scale.repeat_interleave(self.group_size)
            offset = offset.repeat_interleave(self.group_size)
        return scale, offset

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        scale, offset = self.adjustments()
        adjusted = logits * scale.to(logits.dtype) + offset.to(logits.dtype)
        return F.cross_entropy(adjusted, target, reduction="none")

    def frozen_parameters(self):
        """``(d, l)`` move only in the outer step: the main optimizer never sees their gradient."""
        return (self.dy, self.ly)

    # --------------------------------------------------------------------------- the outer step
    def outer_active(self, epoch: int) -> bool:
        return (self.search and epoch >= self.outer_start
                and (self.outer_end is None or epoch < self.outer_end))

    def outer_lr_at(self, epoch: int) -> float:
        """The code's ``warm_up_with_multistep_lr_up`` (``loss_search.py`` lines 140-142)."""
        since = epoch - self.outer_start
        if since < self.outer_warmup_epochs:
            return self.outer_lr * (since + 1) / self.outer_warmup_epochs
        return self.outer_lr * self.outer_gamma ** sum(m <= epoch for m in self.milestones)

    def outer_optimizer(self) -> torch.optim.SGD:
        if self._optimizer is None:
            self._optimizer = torch.optim.SGD([self.dy, self.ly], lr=self.outer_lr,
                                              momentum=self.outer_momentum,
                                              weight_decay=self.outer_weight_decay)
        return self._optimizer

    def _train_batch(self, step) -> Batch:
        labels = self.context.labels
        fetch = self.context.fetch
        if fetch is None or labels is None:
            raise RuntimeError("autobalance draws training batches through the context's fetch; "
                               "train it with the trainer")
        size = min(self.batch_size, len(labels))
        indices = torch.randperm(len(labels))[:size]
        x, y = fetch(indices)
        return Batch.plain(x, y)

    def hypergradient(self, step) -> tuple[torch.Tensor, torch.Tensor]:
        """``dL_val/d(d, l)`` by the implicit function theorem and the Neumann series, at the
        model's current weights (the code's ``core/trainer.py`` lines 56-96)."""
        model = step.model
        weights = [p for p in model.parameters() if p.requires_grad]
        grads = None
        for _ in range(self.train_batches):
            total = step.objective(self._train_batch(step))[0]
            g = torch.autograd.grad(total, weights, create_graph=True, allow_unused=True,
                                    materialize_grads=True)
            grads = list(g) if grads is None else [a + b for a, b in zip(grads, g)]
        grads = [g / self.train_batches for g in grads]
        v = None
        for _ in range(self.val_batches):
            x, y = step.validation_batch(min(self.val_batch_size, self._val_size or
                                             self.val_batch_size))
            val_loss = F.cross_entropy(model(x).float(), y)
            g = torch.autograd.grad(val_loss, weights, allow_unused=True, materialize_grads=True)
            v = list(g) if v is None else [a + b for a, b in zip(v, g)]
        v = [g / self.val_batches for g in v]

        def hvp(u):
            return torch.autograd.grad(grads, weights, grad_outputs=u, retain_graph=True,
                                       allow_unused=True, materialize_grads=True)

        p = neumann_inverse_hvp(hvp, v, self.neumann_terms, self.neumann_lr)
        mixed = torch.autograd.grad(grads, [self.dy, self.ly], grad_outputs=p,
                                    allow_unused=True, materialize_grads=True)
        return -mixed[0], -mixed[1]

    def before_step(self, step) -> None:
        if not self.outer_active(step.epoch) or step.step % self.every:
            return
        model = step.model
        # the outer forwards must not move the model: keep its buffers (BatchNorm statistics)
        kept = [b.detach().clone() for b in model.buffers()]
        try:
            grad_d, grad_l = self.hypergradient(step)
        finally:
            with torch.no_grad():
                for b, saved in zip(model.buffers(), kept):
                    b.copy_(saved)
        opt = self.outer_optimizer()
        for group in opt.param_groups:
            group["lr"] = self.outer_lr_at(step.epoch)
        self.dy.grad, self.ly.grad = grad_d.detach(), grad_l.detach()
        opt.step()
        self.dy.grad = self.ly.grad = None
        self.outer_steps += 1

    # ------------------------------------------------------------------------ what is learned
    def learned_values(self) -> dict:
        """The current values, per group: ``dy``, ``ly`` and the factor ``sigmoid(dy)``."""
        return {"dy": [round(float(v), 6) for v in self.dy.detach().cpu()],
                "ly": [round(float(v), 6) for v in self.ly.detach().cpu()],
                "scale": [round(float(v), 6) for v in torch.sigmoid(self.dy.detach()).cpu()],
                "group_size": self.group_size, "outer_steps": self.outer_steps}

    def after_phase(self, events) -> None:
        """Record the learned values in results.json's ``selection`` (``autobalance``, with the
        phase's name when the run has several phases)."""
        if self.search:
            events.record("autobalance", {"phase": events.name, **self.learned_values()})

    def get_extra_state(self) -> dict:
        return {"outer_steps": self.outer_steps,
                "optimizer": None if self._optimizer is None else self._optimizer.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.outer_steps = int(state["outer_steps"])
        if state["optimizer"] is not None:
            self.outer_optimizer().load_state_dict(state["optimizer"])

    def extra_repr(self) -> str:
        return (f"every={self.every}, group_size={self.group_size}, search={self.search}, "
                + super().extra_repr())
