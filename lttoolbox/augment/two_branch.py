"""BBN's cumulative learning and DBN-Mix's bilateral mixup: a second sampler stream per batch,
each stream trained through its own branch of a two-branch model.

Both act at the model's ``input``: they draw one second-stream index per sample of the batch
(from torch's global CPU generator, which the trainer seeds and checkpoints, so a resumed run
draws what the uninterrupted one drew; no device synchronisation), fetch those images with the
training transform through the trainer's ``fetch``, and hand the model a batch of two streams
(``streams = 2``), which a :class:`~lttoolbox.api.Branched` model routes: the trunk runs once per
stream (each stream's own BatchNorm statistics, as the official codes' two forward calls per
step), stream ``k`` through branch ``k`` only. Both replace the batch's targets, so they declare
``mixes`` and no other mixing augmentation may act in the same epochs; both refuse, before
training, a model without the two branches they train (:meth:`check_model`).

* ``bbn`` (Zhou et al., CVPR 2020; official code Megvii-Nanjing/BBN at 7992e90): the second
  stream is the reversed sampler, the two branches' pooled features are weighed by the
  cumulative weight ``alpha`` and the loss is ``alpha L(y_c) + (1 - alpha) L(y_r)``.
* ``dbn_mix`` (Baik, Yoon, Choi, arXiv:2207.02173 / Pattern Recognition 2024; official code
  soony1213/DBN-Mix at 4359585): the second stream is class-balanced; one
  ``lam ~ Beta(a, a)`` per batch, folded to ``max(lam, 1 - lam)``; branch 1 trains on
  ``lam x_u + (1 - lam) x_b`` and branch 2 on ``(1 - lam) x_u + lam x_b``.

Equation numbers: see the papers (their bodies were not readable when this was written); the
formulas below are the official codes', cited by file and line.
"""
from __future__ import annotations

import numpy as np
import torch

from ..api import Branched, Context
from ..batch import Batch
from ..errors import ConfigError
from ..registry import AUGMENTS
from .base import MixingAugment, beta_draw, check_alpha


class SecondStream(MixingAugment):
    """What BBN and DBN-Mix share: the class -> images map of the training set, the draw of a
    class's image, the fetch, and the model they need.

    Args:
        start_epoch, end_epoch: The window (0-based, ``end_epoch`` exclusive).
        context: From the trainer: ``labels`` and ``fetch`` are required.
    """

    #: The ``joins`` of the :class:`~lttoolbox.api.Branched` model it trains.
    joins = "features"
    regroups_rows = True  # two streams of rows, joined (bbn) or scored by two branches

    def __init__(self, start_epoch: int = 0, end_epoch: int | None = None, *,
                 context: Context | None = None):
        super().__init__(1.0, start_epoch, end_epoch, "input", context=context)
        name = self.registry_name or type(self).__name__
        if self.context.labels is None or self.context.fetch is None:
            raise ConfigError(f"{name} needs the training labels and the trainer's fetch; use "
                              f"it in a recipe, or pass context=Context(labels=..., fetch=...)")
        labels = torch.as_tensor(np.asarray(self.context.labels), dtype=torch.long)
        num_classes = self.context.num_classes or int(labels.max()) + 1
        counts = torch.bincount(labels, minlength=num_classes)
        if bool((counts == 0).any()):
            empty = int(torch.nonzero(counts == 0)[0])
            raise ConfigError(f"{name}: class {empty} has no training image; the second stream "
                              f"draws from every class")
        self.fetch = self.context.fetch
        self.counts = counts
        # the training indices sorted by class: class c's images are order[start[c]:start[c+1]]
        self.order = torch.argsort(labels, stable=True)
        self.start = torch.cumsum(counts, 0) - counts
        self.last_indices: torch.Tensor | None = None  # for inspection and tests

    def check_model(self, model) -> None:
        layout = "bbn" if self.joins == "features" else "dbn_mix"
        if not isinstance(model, Branched):
            raise ConfigError(f"it trains the two branches of a two-branch model (e.g. "
                              f"two_branch_resnet32 or two_branch_digits_cnn with layout: "
                              f"{layout}), and this model has a single branch")
        if model.joins != self.joins:
            raise ConfigError(f"it needs the branches to meet at their {self.joins} (layout: "
                              f"{layout}); this model's meet at their {model.joins}")

    def images_of(self, classes: torch.Tensor) -> torch.Tensor:
        """One training index per entry of ``classes``, uniform within its class (CPU draws)."""
        n = self.counts[classes]
        within = (torch.rand(classes.shape, dtype=torch.float64) * n).long()
        return self.order[self.start[classes] + torch.minimum(within, n - 1)]

    def draw(self, size: int) -> torch.Tensor:
        """``size`` indices of the second stream."""
        raise NotImplementedError

    def second_batch(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The second stream's images and labels, one per sample, on the batch's device."""
        self.last_indices = self.draw(h.shape[0])
        x, y = self.fetch(self.last_indices.to(h.device))
        return x.to(h.dtype), y.to(batch.y_a.device)


@AUGMENTS.register("bbn")
class BBN(SecondStream):
    """BBN's reversed sampler and cumulative learning (Zhou et al., CVPR 2020).

    Per batch of ``B`` uniformly drawn images (the recipe's sampler, ``instance`` in the paper),
    ``B`` images of the reversed sampler, one per image, as the official dataset draws one in
    every ``__getitem__`` (``lib/dataset/imbalance_cifar.py`` lines 59-64, 78-88, 114-118): class
    ``c`` with probability ``P_c = w_c / sum_j w_j``, ``w_c = N_max / N_c``, then an image of
    the class uniformly. On a :class:`~lttoolbox.api.Branched` model with ``joins: features``
    (``layout: bbn``), the conventional branch reads the uniform images and the re-balancing
    branch the reversed ones, each with its own trunk pass (``lib/core/combiner.py`` lines
    43-46: ``feature_cb`` and ``feature_rb`` are two forward calls). Then
    (``combiner.py`` lines 48-58)::

        alpha = 1 - ((epoch - 1) / T_max)^2          epoch = 1, 2, ... in the code
        f     = 2 * [alpha f_c ; (1 - alpha) f_r]
        loss  = alpha L(W f, y_c) + (1 - alpha) L(W f, y_r)

    which is the two-target batch: ``y_a = y_c``, ``y_b = y_r``, ``lam = alpha`` for every
    sample, so any registered loss works with it (the code's is cross-entropy). Here epochs
    count from 0 within the window, so ``alpha = 1 - (e / T_max)^2`` with ``e`` the epochs
    since ``start_epoch``: 1 on the first epoch and ``1 - ((T_max - 1) / T_max)^2`` on the last
    (0.009975 for 200 epochs), never 0. The paper's form ``1 - (T / T_max)^2`` with ``T``
    counted from 1 would reach 0 on the last epoch; this follows the code. The factor 2 keeps
    the training features on the scale of evaluation's ``[f_c; f_r]`` (``alpha = 0.5`` without
    it). ``alpha`` changes per epoch, not per step (``combiner.reset_epoch``).

    The code's ``div_epoch`` is ``MAX_EPOCH`` except for 90 and 180 epochs, where it is 100 and
    200 (``combiner.py`` lines 16-19): set ``t_max`` to reproduce that.

    Evaluation is the model's own (``layout: bbn``): both branches on the same image,
    ``W [f_c; f_r]``, no ``alpha`` and no factor 2 (``lib/core/function.py`` lines 75-77).

    Args:
        t_max: ``T_max``; default (``null``): the epochs of the window. It must be at least
            that, or ``alpha`` would turn negative.
        start_epoch, end_epoch: The window (0-based); outside it both branches see the batch.
        context: From the trainer: ``labels``, ``fetch`` and ``total_epochs``.

    Recipe::

        model: {name: two_branch_resnet32, layout: bbn}
        augment: [{name: bbn}]

    Example:
        >>> from lttoolbox.api import Context
        >>> ctx = Context.from_counts([100, 10, 1], total_epochs=200, fetch=lambda i: None)
        >>> part = BBN(context=ctx)
        >>> [round(p, 6) for p in part.probabilities.tolist()]  # w = N_max / N, normalised
        [0.009009, 0.09009, 0.900901]
        >>> part.before_epoch(99); round(part.alpha, 6)  # 1 - (99 / 200)^2
        0.754975
    """

    joins = "features"

    def __init__(self, t_max: int | None = None, start_epoch: int = 0,
                 end_epoch: int | None = None, *, context: Context | None = None):
        super().__init__(start_epoch, end_epoch, context=context)
        total = self.context.total_epochs
        window = None
        if total is not None:
            window = min(total, end_epoch or total) - start_epoch
        if t_max is None:
            if window is None:
                raise ConfigError("t_max is required outside the trainer (the window's epochs "
                                  "are not known)")
            t_max = max(1, window)
        if isinstance(t_max, bool) or not isinstance(t_max, int) or t_max < 1:
            raise ConfigError(f"t_max must be a positive integer, got {t_max!r}")
        if window is not None and t_max < window:
            raise ConfigError(f"t_max must be at least the {window} epochs BBN acts in, or the "
                              f"cumulative weight 1 - (e / t_max)^2 turns negative; got {t_max}")
        self.t_max = t_max
        weights = self.counts.max().double() / self.counts.double()  # w_c = N_max / N_c
        self.probabilities = weights / weights.sum()

    @property
    def alpha(self) -> float:
        """The cumulative weight of this epoch, ``1 - (e / T_max)^2``."""
        return 1.0 - (self.epochs_since_start / self.t_max) ** 2

    def draw(self, size: int) -> torch.Tensor:
        classes = torch.multinomial(self.probabilities, size, replacement=True)
        return self.images_of(classes)

    def points(self) -> tuple[str, ...]:
        return ("input", "features")

    def hook(self, point: str):
        return self.route if point == "input" else self.combine

    def mix(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
        return self.route(h, batch)

    def route(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
        """At ``input``: the uniform batch, then as many reversed images, as two streams."""
        x_r, y_r = self.second_batch(h, batch)
        x = torch.cat([h, x_r])
        return x, Batch.plain(x, torch.cat([batch.y_a, y_r]), batch.index).replace(streams=2)

    def combine(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
        """At ``features`` (``[f_c; f_r]`` of the joined streams): the cumulative weights."""
        alpha, d = self.alpha, h.shape[1] // 2
        h = torch.cat([(2 * alpha) * h[:, :d], (2 * (1 - alpha)) * h[:, d:]], dim=1)
        return h, batch.replace(x=h, lam=torch.full_like(batch.lam, alpha))


@AUGMENTS.register("dbn_mix")
class DBNMix(SecondStream):
    """DBN-Mix's bilateral mixup on the dual-branch network (Baik, Yoon, Choi, 2022/2024).

    Per batch of ``B`` uniformly drawn images ``x_u`` (the recipe's sampler; the code's
    ``sampler_type: default``), ``B`` images ``x_b`` of a class-balanced sampler, one per image
    (the code's ``dual_sampler_type: balance``, ``data/imbalance_cifar.py`` lines 185-193:
    a class uniformly, then an image of it uniformly: its instance weights are all ones and
    never updated). One ``lam ~ Beta(a, a)`` per batch, folded to ``max(lam, 1 - lam)``, and
    (``losses.py`` lines 48-70, ``main.py`` lines 305-317)::

        branch 1 (conventional):  (lam x_u + (1 - lam) x_b,  lam y_u + (1 - lam) y_b)
        branch 2 (re-balancing):  ((1 - lam) x_u + lam x_b,  (1 - lam) y_u + lam y_b)
        loss = 0.5 (L(z_1, t_1) + L(z_2, t_2))

    The two mixes go to the model as two streams of one batch (``layout: dbn_mix``), each
    through the shared trunk on its own and its own branch and classifier; the logits come
    back as ``2B`` rows (branch 1's, then branch 2's) with the targets ``(y_u, y_b, lam)`` and
    ``(y_u, y_b, 1 - lam)``, so the batch mean of the loss is the code's ``0.5 (L_1 + L_2)``
    (``loss_lambda`` 0.5) for any loss linear in the target, as the code's class-wise
    temperature loss is (``class_temperature``, :mod:`lttoolbox.losses.class_temperature`).
    Evaluation is the model's: the mean of the two classifiers' logits.

    Deviation: the code re-pairs the uniform batch with ``torch.randperm`` before mixing
    (``losses.py`` line 57); the balanced images are drawn independently of the uniform ones,
    so the pairing is already random and sample ``i`` is mixed with balanced image ``i``.

    Args:
        alpha: ``a`` of Beta(a, a) (the scripts' ``--mixup-beta 1.00``).
        start_epoch, end_epoch: The window (0-based); outside it both branches see the batch.
        context: From the trainer: ``labels`` and ``fetch``.

    Recipe::

        model: {name: two_branch_resnet32, layout: dbn_mix}
        loss: {name: class_temperature, epsilon: 0.6, eta: 3}
        augment: [{name: dbn_mix, alpha: 1.0}]

    Example:
        >>> import torch
        >>> from lttoolbox.api import Context
        >>> labels = torch.tensor([0, 0, 0, 1])
        >>> images = torch.tensor([0.0, 0.0, 0.0, 1.0]).view(4, 1, 1, 1)
        >>> part = DBNMix(context=Context(labels=labels.numpy(), num_classes=2,
        ...                               fetch=lambda i: (images[i], labels[i])))
        >>> _ = torch.manual_seed(0)
        >>> x, out = part(torch.zeros(2, 1, 1, 1), Batch.plain(torch.zeros(2, 1, 1, 1),
        ...                                                     torch.tensor([0, 0])))
        >>> out.streams, out.y_b.tolist(), [round(v, 4) for v in out.lam.tolist()]
        (2, [0, 1, 0, 1], [0.9035, 0.9035, 0.0965, 0.0965])
        >>> [round(v, 4) for v in x.flatten().tolist()]  # (1 - lam) and lam of a class-1 image
        [0.0, 0.0965, 0.0, 0.9035]
    """

    joins = "logits"

    def __init__(self, alpha: float = 1.0, start_epoch: int = 0, end_epoch: int | None = None,
                 *, context: Context | None = None):
        super().__init__(start_epoch, end_epoch, context=context)
        self.alpha = check_alpha(alpha)
        self.last_lam: float | None = None

    def draw(self, size: int) -> torch.Tensor:
        classes = torch.randint(self.counts.numel(), (size,))
        return self.images_of(classes)

    def mix(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
        x_b, y_b = self.second_batch(h, batch)
        lam = float(beta_draw(self.alpha)[0])  # a CPU draw: no device synchronisation
        lam = max(lam, 1.0 - lam)
        self.last_lam = lam
        first = lam * h + (1 - lam) * x_b
        second = (1 - lam) * h + lam * x_b
        x = torch.cat([first, second])
        b = h.shape[0]
        weights = torch.cat([torch.full((b,), lam), torch.full((b,), 1 - lam)])
        return x, Batch(x, torch.cat([batch.y_a, batch.y_a]), torch.cat([y_b, y_b]),
                        weights.to(batch.y_a.device), batch.index, streams=2)
