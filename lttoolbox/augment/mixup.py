"""Mixup, manifold mixup and Remix: convex combinations of a batch with a permutation of itself.

* ``mixup`` (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018, Eq. 1):
  ``x~ = lam x_i + (1 - lam) x_j``, ``y~ = lam y_i + (1 - lam) y_j``, ``lam ~ Beta(alpha,
  alpha)``, ``j`` a random permutation of the batch; one ``lam`` per batch, as the authors' code.
* ``manifold_mixup`` (Verma et al., "Manifold Mixup: Better Representations by Interpolating
  Hidden States", ICML 2019, Sec. 2): the same at a hidden layer's output, the model point
  chosen per batch uniformly among the listed points (the paper's ``k ~ S``).
* ``remix`` (Chou et al., "Remix: Rebalanced Mixup", ECCV Workshops 2020, Eq. 4): images mixed
  as mixup, the label weight moved to the minority class: ``lam_y = 0`` when
  ``n_i / n_j >= kappa`` and ``lam < tau``, ``lam_y = 1`` when ``n_i / n_j <= 1 / kappa`` and
  ``1 - lam < tau``, otherwise ``lam_y = lam`` (per sample pair).

Example:
    >>> import torch
    >>> from lttoolbox.batch import Batch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    >>> h, mixed = Mixup(alpha=1.0)(x, Batch.plain(x, y))
    >>> mixed.mixed, tuple(mixed.lam.shape)
    (True, (4,))
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..api import Context
from ..batch import Batch
from ..errors import ConfigError
from ..losses.weights import check_number
from ..registry import AUGMENTS
from .base import MixingAugment, beta_draw, check_alpha, mixed_targets


def mix_with_permutation(h: torch.Tensor, batch: Batch, lam: float
                         ) -> tuple[torch.Tensor, Batch, torch.Tensor]:
    """``lam h + (1 - lam) h[perm]`` and the two-target batch; returns the permutation too."""
    perm = torch.randperm(h.shape[0], device=h.device)
    mixed = h * lam + h[perm] * (1.0 - lam)
    lam_per_sample = torch.full((h.shape[0],), lam, device=batch.y_a.device)
    return mixed, mixed_targets(batch.replace(x=mixed), perm, lam_per_sample), perm


@AUGMENTS.register("mixup")
class Mixup(MixingAugment):
    """Input mixup (Zhang et al., ICLR 2018).

    Args:
        alpha: Beta(alpha, alpha) parameter, ``> 0`` (1.0, the paper's CIFAR value).
        p, start_epoch, end_epoch, point, context: see
            :class:`~lttoolbox.augment.base.MixingAugment`.

    Recipe::

        augment: [{name: mixup, alpha: 1.0}]

    Example:
        >>> import torch
        >>> from lttoolbox.augment import Mixup
        >>> from lttoolbox.batch import Batch
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.arange(4.0).view(4, 1), torch.tensor([0, 1, 2, 3])
        >>> h, mixed = Mixup(alpha=1.0)(x, Batch.plain(x, y))
        >>> round(float(mixed.lam[0]), 4), mixed.y_b.tolist()  # one lam per batch; the partners
        (0.8638, [1, 0, 3, 2])
        >>> # lam x_i + (1 - lam) x_j: 0.8638 * 0 + 0.1362 * 1, 0.8638 * 1 + 0.1362 * 0, ...
        >>> [round(v, 4) for v in h.flatten().tolist()]
        [0.1362, 0.8638, 2.1362, 2.8638]
    """

    multilabel = True  # mixes the targets through lam only: multi-hot rows mix alike

    def __init__(self, alpha: float = 1.0, p: float = 1.0, start_epoch: int = 0,
                 end_epoch: int | None = None, point: str = "input", *,
                 context: Context | None = None):
        super().__init__(p, start_epoch, end_epoch, point, context=context)
        self.alpha = check_alpha(alpha)

    def mix(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
        mixed, out, _ = mix_with_permutation(h, batch, float(beta_draw(self.alpha)))
        return mixed, out


@AUGMENTS.register("manifold_mixup")
class ManifoldMixup(MixingAugment):
    """Manifold mixup (Verma et al., ICML 2019): mixup of the activations at a model point.

    The loss is the recipe's on the two targets, mixed by ``lam`` (as Bag of Tricks' code). The
    authors' code trains with ``nn.BCELoss`` on the softmax of the logits against the mixed
    one-hot target (``supervised/main.py`` lines 184-185 and 237 at 870ef77 of
    vikasverma1077/manifold_mixup), which this entry does not reproduce.

    Args:
        alpha: Beta(alpha, alpha) parameter (2.0, the paper's CIFAR value).
        point: One model point (default ``features``, the pooled features), or a list of
            points: each batch is mixed at one of them, drawn uniformly, as the paper's
            ``k ~ S``.
        p, start_epoch, end_epoch: see :class:`~lttoolbox.augment.base.MixingAugment`.
        context: From the trainer; its ``point_names`` (the model's points in order) order the
            listed points and refuse an unknown one.

    Recipe::

        augment: [{name: manifold_mixup, alpha: 2.0, point: [input, layer1, layer2]}]

    Example:
        >>> import torch
        >>> from lttoolbox.api import Context
        >>> from lttoolbox.augment import ManifoldMixup
        >>> from lttoolbox.batch import Batch
        >>> points = ("input", "layer1", "layer2", "features")
        >>> ManifoldMixup(point=["layer2", "layer1"], context=Context(point_names=points)).points()
        ('layer1', 'layer2')
        >>> _ = torch.manual_seed(0)
        >>> aug = ManifoldMixup(alpha=2.0)  # at the pooled features
        >>> f = torch.tensor([[0.0], [1.0]])
        >>> h, mixed = aug(f, Batch.plain(f, torch.tensor([0, 1])))
        >>> aug.point, round(float(mixed.lam[0]), 4), mixed.y_b.tolist()
        ('features', 0.4886, [1, 0])
        >>> [round(v, 4) for v in h.flatten().tolist()]  # 0.4886 * 0 + 0.5114 * 1, 0.4886 * 1 + 0
        [0.5114, 0.4886]
    """

    multilabel = True  # mixes the targets through lam only: multi-hot rows mix alike

    def __init__(self, alpha: float = 2.0, point: str | Sequence[str] = "features",
                 p: float = 1.0, start_epoch: int = 0, end_epoch: int | None = None, *,
                 context: Context | None = None):
        points = ([point] if isinstance(point, str)
                  else list(point) if isinstance(point, (list, tuple)) else [])
        if not points or not all(isinstance(s, str) and s for s in points):
            raise ConfigError(f"must be a model point name or a list of them, got {point!r}",
                              key="point")
        if len(set(points)) != len(points):
            raise ConfigError(f"lists a point twice: {points}", key="point")
        super().__init__(p, start_epoch, end_epoch, points[0], context=context)
        self.alpha = check_alpha(alpha)
        point_names = self.context.point_names
        if point_names:  # the model's order, so the draw happens at the first one
            unknown = [s for s in points if s not in point_names]
            if unknown:
                raise ConfigError(f"the model has no point {unknown[0]!r}; points: "
                                  f"{', '.join(point_names)}", key="point")
            points.sort(key=list(point_names).index)
        self._points = tuple(points)
        self.point = self._points[0]
        self._chosen: str | None = None
        self._lam = 1.0

    def points(self) -> tuple[str, ...]:
        """The listed points, in the model's order."""
        return self._points

    def hook(self, point: str):
        """The hook at one of the listed points (the trainer registers one per point)."""
        def at(h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
            if point == self._points[0]:  # the first listed point of this forward: draw
                self._chosen = None
                if self.active and self.coin():
                    pick = int(torch.randint(len(self._points), ()))
                    self._chosen, self._lam = self._points[pick], float(beta_draw(self.alpha))
            if point != self._chosen:
                return h, batch
            mixed, out, _ = mix_with_permutation(h, batch, self._lam)
            return mixed, out
        return at

    def __call__(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
        return self.hook(self._points[0])(h, batch) if len(self._points) == 1 else (h, batch)

    def mix(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
        """Mix the activations ``h`` at this entry's one point, unconditionally: how ``one_of``
        applies a choice (it refuses a choice listing several points)."""
        mixed, out, _ = mix_with_permutation(h, batch, float(beta_draw(self.alpha)))
        return mixed, out


@AUGMENTS.register("remix")
class Remix(MixingAugment):
    """Remix (Chou et al., ECCV-W 2020): mixup images, minority-favouring labels.

    Args:
        alpha: Beta(alpha, alpha) of the image weight (1.0).
        kappa: Count-ratio threshold ``>= 1`` (3, the paper's choice).
        tau: Image-weight threshold in ``[0, 1]`` (0.5, the paper's choice).
        p, start_epoch, end_epoch, point: see :class:`~lttoolbox.augment.base.MixingAugment`.
        context: From the trainer; its ``class_counts`` (training images per class) are
            required.

    Recipe::

        augment: [{name: remix, alpha: 1.0, kappa: 3.0, tau: 0.5}]

    Example:
        >>> import torch
        >>> from lttoolbox.api import Context
        >>> from lttoolbox.augment import Remix
        >>> aug = Remix(kappa=3.0, tau=0.5, context=Context.from_counts([100, 10]))
        >>> y_a, y_b = torch.tensor([0, 1]), torch.tensor([1, 0])  # head with tail, tail with head
        >>> # lam < tau: the head sample (0) keeps little of its image; its label goes to the tail
        >>> [round(v, 4) for v in aug.label_weight(0.3, y_a, y_b).tolist()]
        [0.0, 0.3]
        >>> # 1 - lam < tau: the tail sample (1) takes little of the head image; it keeps its label
        >>> [round(v, 4) for v in aug.label_weight(0.8, y_a, y_b).tolist()]
        [0.8, 1.0]
    """

    def __init__(self, alpha: float = 1.0, kappa: float = 3.0, tau: float = 0.5,
                 p: float = 1.0, start_epoch: int = 0, end_epoch: int | None = None,
                 point: str = "input", *, context: Context | None = None):
        super().__init__(p, start_epoch, end_epoch, point, context=context)
        self.alpha = check_alpha(alpha)
        self.kappa = check_number("kappa", kappa, 1.0)
        self.tau = check_number("tau", tau, 0.0, 1.0)
        class_counts = self.context.class_counts
        if class_counts is None:
            raise ConfigError("remix needs class_counts (the trainer passes them in its context; "
                              "outside it, give context=Context.from_counts([...]))")
        self.counts = torch.as_tensor(np.asarray(class_counts, dtype=np.float64),
                                      dtype=torch.float32)

    def label_weight(self, lam: float, y_a: torch.Tensor, y_b: torch.Tensor) -> torch.Tensor:
        """Eq. 4: the weight of ``y_a`` per sample given the image weight ``lam``."""
        counts = self.counts.to(y_a.device)
        ratio = counts[y_a] / counts[y_b]
        weight = torch.full(y_a.shape, lam, device=y_a.device)
        weight = torch.where((ratio >= self.kappa) & (lam < self.tau), 0.0, weight)
        return torch.where((ratio <= 1.0 / self.kappa) & (1.0 - lam < self.tau), 1.0, weight)

    def mix(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
        lam = float(beta_draw(self.alpha))
        mixed, out, perm = mix_with_permutation(h, batch, lam)
        return mixed, out.replace(lam=self.label_weight(lam, batch.y_a, batch.y_a[perm]))
