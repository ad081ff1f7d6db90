"""Rebalanced Siamese contrastive mining (ResCom; Zhong, Cui, Li, Lo, Sun and Jia, "Rebalanced
Siamese Contrastive Mining for Long-Tailed Recognition", arXiv:2203.11506): two augmented views
of every image, a class-balanced supervised contrastive loss against the batch and a
class-balanced queue of keys mined for hard positives and hard negatives, beside a Balanced
Softmax classification loss on both views.

The paper's text could not be read here, so its equation and table numbers are not cited
(equation numbers: see the paper); the method follows the official code, folder ``ResCom/`` of
dvlab-research/Imbalanced-Learning at 01bbecf4c16d687d4a2a220ee3da8bdb4a0777d5 (its code files
are those of cc9b810, "update rescom"; file:line below are at 01bbecf).

Per step, on a batch of B images with labels ``y`` (``main_rescom.py:363-387``,
``rescom/builder.py:65-105``, ``losses.py:42-62``):

* a second view of every image, drawn by the training transform independently of the first
  (fetched before the step, :meth:`ResCom.before_step`), and the two views through one forward
  as one batch of 2B (the first view's rows first);
* ``z = normalize(g(f(x)))`` for the 2B rows, ``g`` the projection head
  ``Linear(d, d) - BatchNorm1d - ReLU - Linear(d, dim)`` on the pooled features ``f(x)``
  (``builder.py:19, 70-71``);
* the queue holds ``Q`` keys per class (a ring per class, random unit vectors at the start,
  ``builder.py:23-26``); each anchor's similarities to its own class's ``Q`` keys give the
  ``select_num_pos`` *least* similar (hard positives) and its similarities to the other classes'
  ``Q (C - 1)`` keys the ``select_num_neg`` *most* similar (hard negatives); the keys not selected
  take no part in the loss (``builder.py:78-87``);
* the contrast row of anchor ``i``: its similarities to the other ``2B - 1`` rows of the batch
  (positives: the same label, the other view of its image included), then the selected hard
  positives and hard negatives (``builder.py:90-97``); with ``P(i)`` its positives and ``A(i)``
  the whole row::

      L_con(i) = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip / tau) / sum_{a in A(i)} exp(s_ia / tau) )
      L_con    = 1/(2B) sum_i w_{y_i} L_con(i),   w_c = mean_k(E_k) / E_c,
      E_c      = (1 - beta^{n_c}) / (1 - beta)                     (losses.py:32-35, 48-57)

  (the code's ``KLDivLoss`` against the 0/1 targets is this cross-entropy);
* the loss ``L = L_cls + con_weight * L_con``, ``L_cls`` the Balanced Softmax cross-entropy
  ``CE(z + log pi, y)`` over both views (``losses.py:44-45, 60``): here ``L_cls`` is the recipe's
  loss (``loss: {name: balanced_softmax}`` in the recipes) on the 2B rows, which this component
  returns to the trainer; it adds ``con_weight * L_con`` as its auxiliary term;
* after the step the first view's embeddings enter the queue, each into its class's ring
  (``builder.py:42-59, 100-103``): the keys of a step are used from the next step on.

Evaluation and export: the model (encoder and classifier) with raw logits
(``builder.py:107-110``); the projection head, the queue and the momentum copy belong to this
component, which the checkpoint keeps and the exported weights do not.

Key encoder. The official code has no momentum encoder: its keys are the online network's
embeddings of the first view (the only "momentum" in the code is SGD's, ``logger.py:36``).
``key_encoder: online`` (the default) does what the code does, the code its README publishes
numbers with. ``key_encoder: momentum`` adds a MoCo-style key encoder: a copy
of the backbone and the projection head, taken at the phase's start and moved before every step
by ``xi <- m xi + (1 - m) theta`` (MoCo's order: the copy moves, then embeds the step's keys),
whose embeddings of the first view enter the queue. Its batch normalisation uses the batch's
statistics as MoCo's does; MoCo's shuffled batch normalisation guards against the current keys
leaking into the current loss, which cannot happen here (keys are used from the next step on).

Deliberate differences from the official code:

* the enqueue is vectorised (no Python loop over the samples, no host synchronisation per
  sample): the ring slots of each class are computed in one pass and, where a class has more
  than ``Q`` samples in one batch, the last ones are kept, as the code's loop leaves them
  (:func:`enqueue`);
* the in-batch self-mask is built from the batch's real size (the code's from the configured one,
  ``builder.py:31, 91``, so it needs ``drop_last``);
* the code's ``balsfx_n`` option (a log prior added to the contrastive logits, off by default,
  ``logger.py:54``) is not offered: its branch (``losses.py:50-51``) adds a vector of
  ``2B + Q C`` priors to rows of ``2B - 1 + select_num_pos + select_num_neg`` similarities, which
  does not run with the shipped values;
* the similarities and the contrastive loss are computed in float32, outside the phase's
  autocast (at ``tau = 0.2``, bfloat16's rounding of a cosine, up to 2^-9, would move a logit
  by up to 0.01);
* ``1e-9`` is not added to the positive count (which is at least ``select_num_pos >= 1``) nor to
  the prior inside the Balanced Softmax logarithm (every class count is at least 1 here).

Across processes: the code all-gathers the keys before the enqueue (``builder.py:45-46``), so
every process's queue takes the global batch's keys, in rank order, and all stay equal (their
initial keys come from a generator seeded by the run's seed alone); this entry does the same.
The in-batch contrast is per process, as the code's (each process contrasts its own 2B rows).

Example:
    >>> import torch
    >>> from lttoolbox.api import Context
    >>> part = ResCom(queue_size_per_cls=4, select_num_neg=8,
    ...               context=Context.from_counts([30, 10, 3], feature_dim=16))
    >>> tuple(part.queue.shape), part.queue_ptr.tolist()  # Q C keys of width dim, a ring per class
    ((12, 32), [0, 0, 0])
    >>> [round(w, 4) for w in part.class_weight.tolist()]  # mean(n) / n, nearly: beta 1 - 1e-6
    [0.4778, 1.4333, 4.7777]
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..api import Component, Context, ModuleComponent
from ..batch import Batch
from ..checks import check_int, check_number
from ..errors import ConfigError
from ..registry import AUGMENTS

CODE = "dvlab-research/Imbalanced-Learning at 01bbecf4c16d687d4a2a220ee3da8bdb4a0777d5"
KEY_ENCODERS = ("online", "momentum")


def effective_number_weights(counts, beta: float) -> np.ndarray:
    """``w_c = mean_k(E_k) / E_c`` with ``E_c = (1 - beta^{n_c}) / (1 - beta)``, in float64 as the
    code computes them (``losses.py:32-35``); ``beta = 0`` gives 1 for every class.

    Example:
        >>> [round(float(w), 6) for w in effective_number_weights([100, 10, 1], 0.999999)]
        [0.370002, 3.69985, 36.998335]
    """
    counts = np.asarray(counts, dtype=np.float64)
    effective = (1.0 - np.power(beta, counts)) / (1.0 - beta)
    return effective.mean() / effective


def contrast_logits(z: torch.Tensor, labels: torch.Tensor, queue: torch.Tensor, per_class: int,
                    select_num_pos: int, select_num_neg: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each anchor's contrast row and its 0/1 positive targets (``builder.py:76-97``).

    Args:
        z: ``(N, dim)`` unit embeddings (the anchors, both views).
        labels: ``(N,)`` their classes.
        queue: ``(C Q, dim)`` keys, class ``c``'s in rows ``c Q`` to ``c Q + Q - 1``.
        per_class: ``Q``.
        select_num_pos, select_num_neg: The hard positives and hard negatives kept per anchor.

    Returns:
        ``(s, t)``, both ``(N, N - 1 + select_num_pos + select_num_neg)``: the cosine similarities
        to the other rows of the batch (in batch order, the anchor itself left out), then to the
        ``select_num_pos`` least similar own-class keys, then to the ``select_num_neg`` most
        similar other-class keys (each in decreasing hardness); ``t`` is 1 for a positive.

    The code gathers the own-class and other-class columns through index tables of
    ``C x Q`` and ``C x Q (C - 1)`` entries (``builder.py:28-35, 79-80``); here the own class's
    ``Q`` columns are a view of the ``(N, C, Q)`` similarities, and the negatives' top-k runs over
    all columns with the own class's set to ``-inf`` (never selected, as ``select_num_neg <=
    Q (C - 1)``): the same values, in the same order, without a table that grows as ``C^2``.
    """
    n = z.shape[0]
    num_classes = queue.shape[0] // per_class
    sim_queue = z @ queue.t()
    rows = torch.arange(n, device=z.device)
    pos = sim_queue.view(n, num_classes, per_class)[rows, labels]
    own = torch.zeros(n, num_classes, dtype=torch.bool, device=z.device)
    own[rows, labels] = True
    neg = sim_queue.masked_fill(own.repeat_interleave(per_class, dim=1), float("-inf"))
    hard_pos = -torch.topk(-pos, select_num_pos, dim=1).values  # the least similar
    hard_neg = torch.topk(neg, select_num_neg, dim=1).values    # the most similar
    others = ~torch.eye(n, dtype=torch.bool, device=z.device)
    sim_batch = (z @ z.t())[others].view(n, n - 1)
    same = (labels[:, None] == labels[None, :])[others].view(n, n - 1).to(sim_batch.dtype)
    logits = torch.cat([sim_batch, hard_pos, hard_neg], dim=1)
    targets = torch.cat([same, torch.ones_like(hard_pos), torch.zeros_like(hard_neg)], dim=1)
    return logits, targets


def contrastive_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """``mean_i w_i * (-sum_j t_ij log softmax(s_i / tau)_j / sum_j t_ij)``
    (``losses.py:48-57``): the supervised contrastive loss of each anchor, averaged over its
    positives, weighted per anchor and averaged over the anchors.

    Example:
        >>> import torch
        >>> s = torch.tensor([[0.9, 0.1, -0.2, 0.3, 0.6, 0.5]])  # the fact sheet's worked example
        >>> t = torch.tensor([[1.0, 0, 0, 1, 0, 0]])
        >>> round(float(contrastive_loss(s, t, torch.ones(1), 0.2)), 5)
        1.85813
    """
    log_prob = F.log_softmax(logits / temperature, dim=1)
    per_anchor = -(targets * log_prob).sum(dim=1) / targets.sum(dim=1)
    return (weights * per_anchor).mean()


@torch.no_grad()
def enqueue(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor,
            per_class: int) -> None:
    """Write ``keys`` into their classes' rings of ``queue`` in place, as the code's loop over the
    samples does (``builder.py:50-59``): sample ``i`` of class ``c`` goes to slot
    ``(ptr[c] + r_i) mod Q`` of class ``c``, ``r_i`` the number of earlier samples of class ``c``
    in the batch, and ``ptr[c]`` moves by the class's count. Where a slot is written more than
    once (more than ``Q`` samples of a class), the last sample wins, as in the loop.

    One pass on the device, no host synchronisation: a stable sort by class gives ``r_i``, and a
    scatter of the sample order with ``amax`` gives each slot's last writer (deterministic, unlike
    a plain indexed write with repeated indices).

    Example:
        >>> import torch
        >>> queue, ptr = torch.zeros(4, 1), torch.tensor([1, 0])  # Q = 2, C = 2
        >>> enqueue(queue, ptr, torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([0, 0, 1]), 2)
        >>> queue.flatten().tolist(), ptr.tolist()   # class 0 wrote slot 1, then wrapped to 0
        ([2.0, 1.0, 3.0, 0.0], [1, 1])
    """
    n = labels.shape[0]
    if n == 0:
        return
    num_classes = ptr.shape[0]
    labels = labels.to(ptr.device, torch.long)
    counts = torch.bincount(labels, minlength=num_classes)
    order = torch.sort(labels, stable=True).indices
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(labels)
    rank[order] = torch.arange(n, device=labels.device) - starts[labels[order]]
    slot = labels * per_class + (ptr[labels] + rank) % per_class
    last = torch.full((queue.shape[0],), -1, dtype=torch.long, device=queue.device)
    last.scatter_reduce_(0, slot, torch.arange(n, device=queue.device), reduce="amax")
    written = (last >= 0).unsqueeze(1)
    queue.copy_(torch.where(written, keys.to(queue.dtype)[last.clamp(min=0)], queue))
    ptr.copy_((ptr + counts) % per_class)


def gather_keys(keys: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's keys and labels, in rank order (the code's ``concat_all_gather``,
    ``builder.py:121-132``); in one process, these."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return keys, labels
    size = dist.get_world_size()
    all_keys = [torch.empty_like(keys) for _ in range(size)]
    all_labels = [torch.empty_like(labels) for _ in range(size)]
    dist.all_gather(all_keys, keys.contiguous())
    dist.all_gather(all_labels, labels.contiguous())
    return torch.cat(all_keys), torch.cat(all_labels)


def queue_seed(seed: int) -> int:
    """The seed of the initial keys: a function of the run's seed alone (equal on every rank)."""
    return int(np.random.SeedSequence([seed, 0x52436F6D]).generate_state(1)[0])


def projection_head(feature_dim: int, dim: int) -> nn.Sequential:
    """``Linear(d, d) - BatchNorm1d(d) - ReLU - Linear(d, dim)`` (``builder.py:19``)."""
    return nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.BatchNorm1d(feature_dim),
                         nn.ReLU(), nn.Linear(feature_dim, dim))


@AUGMENTS.register("rescom")
class ResCom(ModuleComponent):
    """Rebalanced Siamese contrastive mining (see the module docstring): the second view, the
    projection head, the class-balanced queue with hard positive and negative mining, and the
    class-balanced supervised contrastive term. The classification term on both views is the
    recipe's loss (``balanced_softmax`` in the recipes).

    Before each step of its window (:meth:`before_step`) it appends the second view to the step's
    batch (2B rows, the first view first, the labels and indices twice); at ``features`` it
    projects the 2B rows and computes its term; after the step it enqueues the first view's keys.

    Args:
        dim: Width of the projection (the code's ``dim_con``, 32 in its CIFAR config).
        queue_size_per_cls: Keys per class in the queue, ``Q`` (10).
        select_num_pos: Hard positives kept per anchor, ``1 <= k <= Q`` (1).
        select_num_neg: Hard negatives kept per anchor, ``1 <= k <= Q (C - 1)``; ``None``: all
            ``Q (C - 1)`` other-class keys (no negative mining). The code's CIFAR-100 config keeps
            400; with ``Q = 10`` CIFAR-10 has only 90.
        temperature: ``tau > 0`` of the contrastive logits (0.2).
        con_weight: Weight of the contrastive term, ``>= 0`` (0.5).
        effective_num_beta: ``0 <= beta < 1`` of the per-anchor class weights (0.999999).
        key_encoder: ``online`` (the code's: the keys are the online network's first-view
            embeddings) or ``momentum`` (a MoCo-style EMA copy of backbone and projection).
        momentum: ``m`` of the momentum copy, ``0 <= m < 1`` (0.999, MoCo's; only with
            ``key_encoder: momentum``).
        start_epoch, end_epoch: The epoch window in which it acts.
        context: From the trainer: the class counts, the model's ``feature_dim``, the ``fetch``
            of the second view and the run's seed (the initial keys).

    Recipe::

        loss: {name: balanced_softmax}
        augment: [{name: rescom, select_num_neg: 400}]

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from lttoolbox.api import Context
        >>> from lttoolbox.batch import Batch
        >>> _ = torch.manual_seed(0)
        >>> images, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 0, 0])
        >>> fetch = lambda i: (images[i] + 0.1 * torch.randn(len(i), 8), labels[i])
        >>> part = ResCom(dim=4, queue_size_per_cls=3,
        ...               context=Context.from_counts([4, 1, 1], feature_dim=8, fetch=fetch))
        >>> step = SimpleNamespace(batch=Batch.plain(images[:4], labels[:4], index=torch.arange(4)))
        >>> part.before_step(step)                      # the second view joins the batch
        >>> tuple(step.batch.x.shape), step.batch.y_a.tolist()
        ((8, 8), [0, 1, 2, 0, 0, 1, 2, 0])
        >>> h, _ = part.hook("features")(step.batch.x, step.batch)  # here the 2B "features"
        >>> bool(part.auxiliary_loss() > 0), part.queue_ptr.tolist()  # nothing enqueued yet
        (True, [0, 0, 0])
        >>> part.after_step(step); part.queue_ptr.tolist()  # the first view's 4 keys
        [2, 1, 1]
    """

    adds_loss = True  # the contrastive term
    regroups_rows = True  # the batch's rows are two views of its images, paired by position
    # It adds the second view's rows to the batch and needs each sample's single class up to
    # ``features``: mixing at or before ``features`` in its epochs is refused before training.
    generates = True

    def __init__(self, dim: int = 32, queue_size_per_cls: int = 10, select_num_pos: int = 1,
                 select_num_neg: int | None = None, temperature: float = 0.2,
                 con_weight: float = 0.5, effective_num_beta: float = 0.999999,
                 key_encoder: str = "online", momentum: float = 0.999, start_epoch: int = 0,
                 end_epoch: int | None = None, *, context: Context | None = None):
        nn.Module.__init__(self)
        Component.__init__(self, start_epoch, end_epoch, context=context)
        self.dim = check_int("dim", dim, 1)
        self.per_class = check_int("queue_size_per_cls", queue_size_per_cls, 1)
        self.select_num_pos = check_int("select_num_pos", select_num_pos, 1)
        if self.select_num_pos > self.per_class:
            raise ConfigError(f"select_num_pos must be at most queue_size_per_cls "
                              f"({self.per_class}), got {select_num_pos!r}")
        check_int("select_num_neg", select_num_neg, 1, optional=True)
        self.temperature = check_number("temperature", temperature, 0.0, low_open=True)
        self.con_weight = check_number("con_weight", con_weight, 0.0)
        self.beta = check_number("effective_num_beta", effective_num_beta, 0.0, 1.0,
                                 high_open=True)
        if key_encoder not in KEY_ENCODERS:
            raise ConfigError(f"key_encoder must be one of {', '.join(KEY_ENCODERS)}, got "
                              f"{key_encoder!r}")
        self.key_mode = key_encoder
        self.momentum = check_number("momentum", momentum, 0.0, 1.0, high_open=True)
        counts, feature_dim = self.context.class_counts, self.context.feature_dim
        if counts is None or feature_dim is None:
            raise ConfigError("rescom needs the class counts and the model's feature_dim; use it "
                              "in a recipe, or pass context=Context.from_counts(counts, "
                              "feature_dim=...) yourself")
        if min(counts) < 1:
            empty = [c for c, n in enumerate(counts) if n < 1]
            raise ConfigError(f"rescom needs at least one training image of every class (the "
                              f"effective number of class {empty[0]} is 0)")
        num_classes = len(counts)
        negatives = self.per_class * (num_classes - 1)
        if select_num_neg is not None and select_num_neg > negatives:
            raise ConfigError(f"select_num_neg must be at most queue_size_per_cls x (classes - 1)"
                              f" = {negatives} negative keys, got {select_num_neg!r}")
        self.select_num_neg = negatives if select_num_neg is None else int(select_num_neg)
        self.fetch = self.context.fetch
        self.projection = projection_head(int(feature_dim), self.dim)
        init = torch.randn(num_classes * self.per_class, self.dim,
                           generator=torch.Generator().manual_seed(queue_seed(self.context.seed)))
        self.register_buffer("queue", F.normalize(init, dim=1))
        self.register_buffer("queue_ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("class_weight", torch.tensor(
            effective_number_weights(counts, self.beta), dtype=torch.float32), persistent=False)
        # the momentum copy (key_encoder: momentum): the backbone's, made in before_run
        self.key_backbone: nn.Module | None = None
        self.key_projection = (copy.deepcopy(self.projection).requires_grad_(False)
                               if self.key_mode == "momentum" else None)
        self._first: torch.Tensor | None = None  # the step's first view (B rows)
        self._term: torch.Tensor | None = None
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # keys to enqueue

    # ------------------------------------------------------------------------ the two views
    def points(self) -> tuple[str, ...]:
        return ("features",)

    def hook(self, point: str):
        return self.contrast

    def two_views(self, batch: Batch) -> Batch:
        """The batch followed by its second view (the training transform drawn afresh through
        the context's ``fetch``): 2B rows, the labels and the indices twice."""
        if batch.index is None or self.fetch is None:
            raise ConfigError("rescom draws the second view of each image through the trainer's "
                              "fetch and the batch's index; use it in a recipe")
        if batch.mixed:
            raise ConfigError("rescom needs each sample's single class; a component before it "
                              "mixed the batch")
        second, _ = self.fetch(batch.index)
        x = torch.cat([batch.x, second.to(device=batch.x.device, dtype=batch.x.dtype)])
        index = torch.cat([batch.index, batch.index])
        return Batch.plain(x, torch.cat([batch.y_a, batch.y_a]), index=index)

    def contrast(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
        """At ``features``: the projection of the rows (the two views), the contrastive term
        (kept for :meth:`auxiliary_loss`) and the keys the step enqueues: the first view's
        embeddings (online), or the momentum copy's embeddings of the first view. Called
        without :meth:`before_step` (a caller's own loop), it contrasts the rows as given and
        their embeddings are the keys."""
        first = self._first
        rows = h.shape[0] if first is None else first.shape[0]
        if h.shape[0] != (rows if first is None else 2 * rows):
            raise ConfigError(f"rescom: the features hold {h.shape[0]} rows, not the two views "
                              f"of {rows} images it made; another component adds samples in its "
                              f"epochs (a generator): give them disjoint epoch windows")
        z = F.normalize(self.projection(h).float(), dim=1)
        labels = batch.y_a
        # similarities at tau = 0.2 in float32, not in the phase's bfloat16
        with torch.autocast(h.device.type, enabled=False):
            logits, targets = contrast_logits(z, labels, self.queue, self.per_class,
                                              self.select_num_pos, self.select_num_neg)
            self._term = self.con_weight * contrastive_loss(logits, targets,
                                                            self.class_weight[labels],
                                                            self.temperature)
        if self.key_backbone is None:
            self._pending = (z[:rows].detach(), labels[:rows])
        elif first is not None:  # MoCo's keys: the copy's embedding of the first view
            self.key_backbone.train()
            self.key_projection.train()
            with torch.no_grad():
                keys = self.key_projection(self.key_backbone(first))
                self._pending = (F.normalize(keys.float(), dim=1), labels[:rows])
        return h, batch

    def auxiliary_loss(self) -> torch.Tensor | None:
        return self._term if self.active else None

    # --------------------------------------------------------------------------- lifecycle
    def before_run(self, run) -> None:
        if self.key_mode == "momentum" and self.key_backbone is None:
            # the structure exists before a resumed run's checkpoint is loaded into it
            self.key_backbone = backbone_copy(run.model)

    def before_phase(self, events) -> None:
        if self.key_mode == "momentum":  # the copy starts from the phase's online network
            self.key_backbone = backbone_copy(events.model)
            self.key_projection.load_state_dict(self.projection.state_dict())

    def before_step(self, step) -> None:
        self._term, self._pending, self._first = None, None, None
        if not self.active:
            return
        if self.key_backbone is not None:  # MoCo's order: the copy moves, then embeds
            self._momentum_update(step.model)
        self._first = step.batch.x
        step.batch = self.two_views(step.batch)

    def after_step(self, step) -> None:
        if self._pending is not None:
            keys, labels = gather_keys(*self._pending)
            enqueue(self.queue, self.queue_ptr, keys, labels, self.per_class)
        self._term, self._pending, self._first = None, None, None

    @torch.no_grad()
    def _momentum_update(self, model: nn.Module) -> None:
        online = [*backbone_parameters(model), *self.projection.parameters()]
        copies = [*self.key_backbone.parameters(), *self.key_projection.parameters()]
        torch._foreach_mul_(copies, self.momentum)
        torch._foreach_add_(copies, [p.detach() for p in online], alpha=1.0 - self.momentum)


def backbone_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks from the input to the pooled features (``features``), in order."""
    return [(name, getattr(model, name)) for name in model.point_names[1:]]


def backbone_parameters(model: nn.Module) -> list[torch.Tensor]:
    return [p for _, block in backbone_blocks(model) for p in block.parameters()]


def backbone_copy(model: nn.Module) -> nn.Sequential:
    """A frozen copy of the model's backbone (its blocks up to ``features``), the momentum key
    encoder."""
    blocks = nn.Sequential()
    for name, block in backbone_blocks(model):
        blocks.add_module(name, copy.deepcopy(block))
    return blocks.requires_grad_(False)
