"""Optimal-transport re-weighting: per-example weights learned by matching the weighted training
batch to a balanced meta set with entropic optimal transport (log-domain Sinkhorn)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..checks import check_int
from ..batch import Batch
from ..errors import ConfigError
from ..registry import LOSSES
from .base import LTLoss
from .weights import check_number, effective_number

CODE = ("DandanGuo1993/reweight-imbalance-classification-with-OT at "
        "01f35a8c08610c4f09e19e346150af3a3428174e")


def sinkhorn(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float = 0.1,
             max_iter: int = 200, tol: float | None = None) -> torch.Tensor:
    """The entropic optimal-transport plan between masses ``a`` (rows) and ``b`` (columns), by
    Sinkhorn's iterations in the log domain, as the official code writes them
    (``Sinkhorn_distance_fl.py`` lines 64-77 at ``CODE``)::

        u <- eps (log a - logsumexp_j M_ij) + u,   v <- eps (log b - logsumexp_i M_ij) + v,
        M_ij = (-C_ij + u_i + v_j) / eps,          pi = exp(M)

    from ``u = v = 0``. ``pi`` minimises ``<pi, C> - eps H(pi)`` over the plans with marginals
    ``a`` and ``b``. The iterations are differentiable (autograd unrolls them, as in the code).

    Args:
        cost: ``(n, m)`` cost matrix.
        a, b: ``(n,)`` and ``(m,)`` positive masses, each summing to 1.
        eps: The entropic regularisation, ``> 0`` (the code's 0.1).
        max_iter: Iterations, ``>= 1`` (the code's at most 200).
        tol: ``None`` (default): run all ``max_iter`` iterations, with no host synchronisation.
            A number: stop once ``sum_i |u_i - u_i^prev| < tol`` (one host read per iteration;
            the code stops at 0.1, which is far from converged: docs/losses.md).

    Returns:
        The ``(n, m)`` plan.

    Example:
        >>> import torch
        >>> plan = sinkhorn(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.full((2,), 0.5),
        ...                 torch.full((2,), 0.5), eps=1.0)
        >>> [round(float(p), 4) for p in plan[0]]  # e / (2 (1 + e)), 1 / (2 (1 + e))
        [0.3655, 0.1345]
    """
    log_a, log_b = torch.log(a), torch.log(b)
    u = torch.zeros_like(log_a)
    v = torch.zeros_like(log_b)

    def m(u, v):
        return (-cost + u[:, None] + v[None, :]) / eps

    for _ in range(max_iter):
        previous = u
        u = eps * (log_a - torch.logsumexp(m(u, v), dim=1)) + u
        v = eps * (log_b - torch.logsumexp(m(u, v), dim=0)) + v
        if tol is not None and float((u - previous).abs().sum()) < tol:
            break
    return torch.exp(m(u, v))


def ot_cost(prototypes: torch.Tensor, proto_labels: torch.Tensor, features: torch.Tensor,
            labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The code's ``combined`` cost (``Sinkhorn_distance_fl.py`` lines 48-50, 93-101):
    ``C_ij = 0.5 (1 - cos(p_i, f_j)) + 0.5 mean_k (onehot(c_i)_k - onehot(y_j)_k)^2``, the second
    term ``2 / C`` between different classes and 0 within one.

    Example:
        >>> import torch
        >>> c = ot_cost(torch.eye(2), torch.arange(2), torch.tensor([[1.0, 0.0]]),
        ...             torch.tensor([1]), 2)
        >>> [round(float(x), 4) for x in c[:, 0]]
        [0.5, 0.5]
    """
    cos = F.cosine_similarity(prototypes[:, None, :], features[None, :, :], dim=-1, eps=1e-8)
    label_cost = (proto_labels[:, None] != labels[None, :]).to(cos.dtype) * (2.0 / num_classes)
    return 0.5 * (1.0 - cos) + 0.5 * label_cost


@LOSSES.register("ot_reweight")
class OTReweightLoss(LTLoss):
    """Optimal-transport re-weighting (Guo, Li, Zheng, Zhao, Zhou, Zha, "Learning to Re-weight
    Examples with Optimal Transport for Imbalanced Classification", NeurIPS 2022,
    arXiv:2208.02951). The paper's body could not be read here: its equation and table numbers
    are not cited; the method and every default are the official code's stage 2
    (``OT_train.py``, ``Sinkhorn_distance_fl.py`` at ``CODE``).

    One raw weight ``w_n`` per training image (a buffer, checkpointed), initialised to the
    class-balanced weight of its class (effective number, ``init_beta`` 0.9999, normalised to sum
    to C over the classes; ``OT_train.py`` lines 110-116). Before each step (``before_step``):

    1. Features ``f_j`` of the batch (model in eval mode as the code's line 200; no gradient,
       as line 214 detaches them).
    2. The meta distribution: C class prototypes ``p_c``, the features of the mean image of each
       class's validation images (``meta_set='prototype'``, lines 183-190), recomputed at each
       epoch's first step; uniform mass ``1/C``.
    3. The OT distance ``<pi, C>`` (:func:`ot_cost`, :func:`sinkhorn`) between the prototypes and
       the batch with mass ``softmax(w_batch)`` (over the batch, line 205).
    4. One step ``w <- w - lr (dOT/dw + weight_decay w)`` (a fresh ``SGD(lr 0.01, momentum 0.9,
       weight_decay 5e-4)`` per step in the code, line 201, so momentum never acts), written
       back to the buffer at the batch's indices (line 229).

    The step's loss (lines 234-239) is ``sum_i w_i CE_i + meta_weight * mean_val CE`` with the
    *updated raw* weights (not the softmax) and a sum over the batch, plus ``meta_weight``
    (the code's 10) times the mean cross-entropy of the model on the whole validation split
    (the meta images are trained on). A mixed batch weighs ``lam CE(y_a) + (1 - lam) CE(y_b)``;
    its OT step's label cost reads ``y_a`` (the code has no mixing).
    The main optimizer never moves the weights (a buffer, outside every optimizer).

    The code trains only the classifier in this stage on a pre-trained backbone (lr 2e-5, batch
    16, 90 epochs): the recipes ``configs/cifar10_lt/ot_reweight.yaml`` and
    ``configs/cifar100_lt/ot_reweight.yaml`` are a CE phase followed by such a phase with
    ``train.freeze: [backbone]``.

    Deliberate deviations from the code:

    * Sinkhorn runs all ``iterations`` (200) with no stopping test: the code's stop,
      ``sum |u - u_prev| < 0.1``, can stop after 2 iterations with a marginal off by about 0.05
      (docs/losses.md); the full iterations converge on such problems and need no host read.
    * The prototypes are computed in eval mode with no gradient, as the batch's features are in
      the code too (the code runs the prototypes' forward in train mode, which moves the
      BatchNorm statistics on a batch of C mean images).
    * The validation images are evaluation-transformed (the code augments its meta images) and
      the split is the toolbox's balanced one (``data.val_per_class``, the code's 10).

    Args:
        eps: Sinkhorn's entropic regularisation (0.1), ``> 0``.
        iterations: Sinkhorn iterations (200), ``>= 1``.
        weight_lr: The weights' SGD rate (0.01), ``> 0``.
        weight_decay: Its weight decay (5e-4), ``>= 0``.
        meta_weight: Factor of the validation split's mean cross-entropy (10), ``>= 0``.
        init_beta: Effective-number ``beta`` of the initial weights (0.9999), in ``[0, 1)``.
        **base: The context (:class:`~lttoolbox.losses.base.LTLoss`): ``class_counts`` and the
            training ``labels`` (without them, the images of ``class_counts`` in class order,
            as :meth:`~lttoolbox.api.Context.from_counts`). Class weights (``weights``, none in
            the code) multiply the per-example ones: ``sum_i w_i w_{y_i} CE_i``.

    Example:
        >>> loss = OTReweightLoss(class_counts=[3, 1])
        >>> [round(float(w), 4) for w in loss.raw_weights]  # class-balanced, beta 0.9999
        [0.5, 0.5, 0.5, 1.5]
    """

    needs_validation = True
    batch_weighted = True
    adds_loss = True
    requires_counts = True

    def __init__(self, eps: float = 0.1, iterations: int = 200, weight_lr: float = 0.01,
                 weight_decay: float = 5e-4, meta_weight: float = 10.0,
                 init_beta: float = 0.9999, **base: Any):
        self.eps = check_number("eps", eps, 0.0, low_open=True)
        self.iterations = check_int("iterations", iterations, 1, whole_floats=True)
        self.weight_lr = check_number("weight_lr", weight_lr, 0.0, low_open=True)
        self.weight_decay = check_number("weight_decay", weight_decay, 0.0)
        self.meta_weight = check_number("meta_weight", meta_weight, 0.0)
        init_beta = check_number("init_beta", init_beta, 0.0, 1.0, high_open=True)
        super().__init__(**base)
        world = self.context.world_size
        if world is not None and world > 1:
            raise ConfigError("ot_reweight computes its validation term and its weight step "
                              "outside the DistributedDataParallel forward: train it in one "
                              "process")
        labels = self.context.labels
        if labels is None:  # standalone: the training set of Context.from_counts, class 0 first
            labels = np.repeat(np.arange(self.num_classes), self.counts.astype(np.int64))
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self._labels = labels
        per_class = torch.as_tensor(effective_number(self.counts, init_beta), dtype=torch.float32)
        self.register_buffer("raw_weights", per_class[labels].clone())
        self._prototypes: torch.Tensor | None = None
        self._meta_term: torch.Tensor | None = None
        self._val_size: int | None = None

    def before_run(self, run) -> None:
        """Learn the validation split's size (``data.val_per_class`` images per class)."""
        per_class = (run.recipe.get("data") or {}).get("val_per_class")
        if isinstance(per_class, int) and not isinstance(per_class, bool):
            self._val_size = per_class * self.num_classes

    def before_epoch(self, epoch: int) -> None:
        super().before_epoch(epoch)
        self._prototypes = None  # recomputed at the epoch's first step (the code: once per epoch)

    # ------------------------------------------------------------------------ the weight step
    def prototypes(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The features of each class's mean image, ``(C, d)`` (the code's ``'prototype'``)."""
        sums = torch.zeros((self.num_classes, *x.shape[1:]), device=x.device, dtype=x.dtype)
        sums.index_add_(0, y, x)
        # counted by index_add_, not bincount, which reads the labels' maximum on the host
        count = torch.zeros(self.num_classes, device=x.device, dtype=x.dtype)
        count = count.index_add_(0, y, torch.ones_like(y, dtype=x.dtype)).clamp_min(1)
        means = sums / count.reshape(-1, *([1] * (x.dim() - 1)))
        return model.forward_features(means).float()

    def weight_step(self, prototypes: torch.Tensor, features: torch.Tensor,
                    labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """One SGD step of the batch's raw weights on the OT distance; returns that distance."""
        c = self.num_classes
        w = self.raw_weights[index].detach().requires_grad_(True)
        cost = ot_cost(prototypes, torch.arange(c, device=labels.device), features, labels, c)
        mu = torch.full((c,), 1.0 / c, device=cost.device, dtype=cost.dtype)
        plan = sinkhorn(cost, mu, torch.softmax(w, dim=0), self.eps, self.iterations)
        distance = (plan * cost).sum()
        (grad,) = torch.autograd.grad(distance, w)
        with torch.no_grad():
            new = w - self.weight_lr * (grad + self.weight_decay * w)
            # An image drawn twice in the batch (a re-sampling sampler) gets two updates; each
            # copy is written as its first occurrence's, so the result does not depend on the
            # order of the writes (undefined for duplicate indices, on CUDA). Fixed-size: no sync.
            index = index.to(new.device)
            first = (index[:, None] == index[None, :]).to(torch.int8).argmax(dim=1)
            self.raw_weights[index] = new[first]
        return distance.detach()

    def before_step(self, step) -> None:
        model, batch = step.model, step.batch
        if batch.index is None:
            raise ValueError("ot_reweight needs batch.index (the training-set index of each "
                             "sample)")
        device = batch.x.device
        if self.raw_weights.device != device:
            self.raw_weights = self.raw_weights.to(device)
        size = self._val_size
        if size is None:
            raise RuntimeError("ot_reweight reads the validation split's size at before_run; "
                               "train it with the trainer (data.val_per_class)")
        xv = yv = None
        if self._prototypes is None or self.meta_weight > 0:
            xv, yv = step.validation_batch(size)
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                if self._prototypes is None:
                    self._prototypes = self.prototypes(model, xv, yv)
                features = model.forward_features(batch.x).float()
        finally:
            model.train(was_training)
        self.weight_step(self._prototypes, features, batch.y_a.to(device),
                         batch.index.to(device))
        if self.meta_weight > 0:
            self._meta_term = self.meta_weight * F.cross_entropy(self._meta_logits(model, xv), yv)

    @staticmethod
    def _meta_logits(model, x: torch.Tensor) -> torch.Tensor:
        """The model's logits on the meta images in training mode (the code's line 236), through
        copies of its buffers, which then replace the buffers' values: the BatchNorm statistics
        move as in the code, and the graph kept for the step's backward holds the copies, which
        the step's own forward (compiled, it updates the buffers in place) leaves untouched."""
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        logits = torch.func.functional_call(model, buffers, (x,), strict=False)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        return logits.float()

    def auxiliary_loss(self) -> torch.Tensor | None:
        term, self._meta_term = self._meta_term, None
        return term

    # ------------------------------------------------------------------------ the step's loss
    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, reduction="none")

    def batch_loss(self, logits: torch.Tensor, batch: Batch, normalize=None) -> torch.Tensor:
        """``sum_i w_i CE_i`` with the batch's raw weights (the code's sum, not a mean)."""
        if batch.index is None:
            raise ValueError("ot_reweight needs batch.index (the training-set index of each "
                             "sample)")
        w = self.raw_weights.to(logits.device)[batch.index.to(logits.device)]
        per = self(logits, batch.y_a, reduction="none")
        if batch.mixed:
            lam = batch.lam.float()
            per = lam * per + (1 - lam) * self(logits, batch.y_b, reduction="none")
        return (w.to(per.dtype) * per).sum()

    # ------------------------------------------------------------------------ what is learned
    def learned_values(self) -> dict:
        """The mean raw weight of each class's training images."""
        labels = self._labels
        w = self.raw_weights.detach().cpu().double()
        sums = torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, labels, w)
        return {"class_mean_weight": [round(float(s / n), 6) for s, n in
                                      zip(sums, np.asarray(self.counts))]}

    def after_phase(self, events) -> None:
        """Record the weights' class means in results.json's ``selection`` (``ot_reweight``)."""
        events.record("ot_reweight", {"phase": events.name, **self.learned_values()})

    def extra_repr(self) -> str:
        return (f"eps={self.eps}, iterations={self.iterations}, weight_lr={self.weight_lr}, "
                f"meta_weight={self.meta_weight}, " + super().extra_repr())
