"""CutMix and CMO: a box of one image pasted into another.

* ``cutmix`` (Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with
  Localizable Features", ICCV 2019, Sec. 3.1): ``lam ~ Beta(alpha, alpha)``, a box of width
  ``W sqrt(1 - lam)`` and height ``H sqrt(1 - lam)`` centred uniformly in the image, clipped to
  it, the partner (a permutation of the batch) pasted inside, and ``lam`` corrected to the
  share of the image left uncovered after clipping (as the official code does).
* ``cmo`` (Park et al., "The Majority Can Help the Minority: Context-rich Minority Oversampling
  for Long-tailed Classification", CVPR 2022, Sec. 3.2, Algorithm 1): the background is the
  batch the recipe's sampler drew (normally instance-balanced, so mostly majority images), the
  foreground a second batch drawn from a minority-weighted stream (the ``cmo_weighted``
  sampler), a CutMix box of the foreground pasted into the background; the loss
  ``lam L(out, y_background) + (1 - lam) L(out, y_foreground)``.

Deviation from both official codes: they draw one ``lam`` and one box per batch; here every
sample draws its own (the papers define the operation per pair), which leaves each sample's
distribution unchanged and makes the batch's mix less lumpy. Boxes are built as masks on the
device, with no host synchronisation.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..api import Context
from ..batch import Batch
from ..errors import ConfigError
from ..registry import AUGMENTS, SAMPLERS
from .base import MixingAugment, beta_draw, check_alpha


def random_boxes(lam: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boxes ``(B, 4)`` as ``(top, left, bottom, right)`` (exclusive ends), one per ``lam``:
    size ``sqrt(1 - lam)`` of each side, centre uniform over the image, clipped to it.

    The integer rounding follows the official CutMix code: ``cut_w = int(W * sqrt(1 - lam))``,
    centre ``randint(W)``, ends clipped with ``clip(c -/+ cut_w // 2, 0, W)``.
    """
    device = lam.device
    ratio = torch.sqrt(1.0 - lam)
    cut_h = (height * ratio).long()
    cut_w = (width * ratio).long()
    cy = torch.randint(height, lam.shape, device=device)
    cx = torch.randint(width, lam.shape, device=device)
    top = (cy - cut_h // 2).clamp(0, height)
    bottom = (cy + cut_h // 2).clamp(0, height)
    left = (cx - cut_w // 2).clamp(0, width)
    right = (cx + cut_w // 2).clamp(0, width)
    return torch.stack([top, left, bottom, right], dim=1)


def paste_boxes(background: torch.Tensor, foreground: torch.Tensor, boxes: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``background`` with each sample's box taken from ``foreground``.

    Returns:
        ``(mixed, lam)``: the images and, per sample, the share of the image that is still
        background (``1 - box area / image area``), the weight of the background's label.
    """
    b, _, h, w = background.shape
    rows = torch.arange(h, device=background.device).view(1, h, 1)
    cols = torch.arange(w, device=background.device).view(1, 1, w)
    top, left, bottom, right = (boxes[:, i].view(b, 1, 1) for i in range(4))
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    mixed = torch.where(inside.unsqueeze(1), foreground, background)
    area = ((bottom - top) * (right - left)).view(b).float()
    return mixed, 1.0 - area / float(h * w)


@AUGMENTS.register("cutmix")
class CutMix(MixingAugment):
    """CutMix (Yun et al., ICCV 2019), a box of a permuted partner per sample.

    Args:
        alpha: Beta(alpha, alpha) of the uncovered share (1.0, the paper's).
        p: Probability that a batch is mixed (the official CIFAR command's ``cutmix_prob``).
        start_epoch, end_epoch, context: see :class:`~lttoolbox.augment.base.MixingAugment`.

    Recipe::

        augment: [{name: cutmix, alpha: 1.0, p: 0.5}]

    Example:
        >>> import torch
        >>> from lttoolbox.augment import CutMix
        >>> from lttoolbox.batch import Batch
        >>> _ = torch.manual_seed(4)
        >>> x = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 4, 4)  # images of 0s, 1s and 2s
        >>> aug = CutMix(p=1.0)
        >>> h, mixed = aug(x, Batch.plain(x, torch.tensor([0, 1, 2])))
        >>> aug.last_boxes.tolist()  # (top, left, bottom, right) per sample
        [[1, 0, 3, 1], [0, 1, 2, 3], [1, 1, 3, 3]]
        >>> mixed.y_b.tolist(), mixed.lam.tolist()  # lam: the share left uncovered, 1 - 4 / 16
        ([0, 2, 1], [0.875, 0.75, 0.75])
        >>> h.mean(dim=(1, 2, 3)).tolist()  # lam x_i + (1 - lam) x_j: 0.75 * 1 + 0.25 * 2, ...
        [0.0, 1.25, 1.75]
    """

    multilabel = True  # mixes the targets through lam only: multi-hot rows mix alike

    def __init__(self, alpha: float = 1.0, p: float = 0.5, start_epoch: int = 0,
                 end_epoch: int | None = None, *, context: Context | None = None):
        super().__init__(p, start_epoch, end_epoch, "input", context=context)
        self.alpha = check_alpha(alpha)
        self.last_boxes: torch.Tensor | None = None  # for inspection and tests

    def mix(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
        b = h.shape[0]
        lam = beta_draw(self.alpha, b).to(h.device)
        perm = torch.randperm(b, device=h.device)
        self.last_boxes = random_boxes(lam, h.shape[2], h.shape[3])
        mixed, kept = paste_boxes(h, h[perm], self.last_boxes)
        return mixed, batch.replace(x=mixed, y_b=batch.y_a[perm], lam=kept)


def stream_seed(seed: int) -> int:
    """The seed of CMO's foreground stream: a function of the run's seed, apart from the
    background sampler's stream."""
    return int(np.random.SeedSequence([seed, 0x434D4F]).generate_state(1)[0])


@AUGMENTS.register("cmo")
class CMO(MixingAugment):
    """Context-rich minority oversampling (Park et al., CVPR 2022).

    The foreground stream is a :class:`~lttoolbox.samplers.CMOWeightedSampler` over the same
    training set, with its own seed, re-drawn every epoch (and rank-aware under
    ``torch.distributed``); like the official code's, it starts afresh every epoch
    (``cifar_train.py`` lines 279-280 at 10d2d09). Its images come through the trainer's
    ``fetch``, with the training transform. A batch draws foreground images only when it is
    mixed.

    Args:
        alpha: Beta(alpha, alpha) of the background share (1.0, the paper's).
        p: Probability that a batch is mixed (0.5, the official code's ``mix_prob``).
        r: Exponent of the foreground weighting (the code's ``weighted_alpha``, 1).
        weighting: ``image`` (the official code's per-image weights, class probability ∝
            ``n^(1-r)``) or ``class`` (the paper's ``q(r, k)`` ∝ ``n^(-r)``).
        start_epoch, end_epoch: The window; the official CIFAR code mixes in the epochs with
            ``3 < epoch < epochs - 3`` (0-based), i.e. ``start_epoch: 4, end_epoch: 197`` of 200.
        context: From the trainer: the ``labels`` and ``fetch`` are required; the foreground
            sampler is built on this context, with the seed :func:`stream_seed` derives from
            its ``seed``.

    Recipe::

        augment: [{name: cmo, alpha: 1.0, p: 0.5, start_epoch: 4, end_epoch: 197}]

    Example:
        >>> import torch
        >>> from lttoolbox.api import Context
        >>> from lttoolbox.augment import CMO
        >>> from lttoolbox.batch import Batch
        >>> labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])  # class 1 is the minority
        >>> images = labels.float().view(8, 1, 1, 1).expand(8, 1, 4, 4)  # its images are 1s
        >>> aug = CMO(p=1.0, r=2.0, context=Context(labels=labels,
        ...                                          fetch=lambda i: (images[i], labels[i])))
        >>> _ = torch.manual_seed(0)
        >>> x = torch.zeros(4, 1, 4, 4)  # a background batch of class 0
        >>> h, mixed = aug(x, Batch.plain(x, torch.zeros(4, dtype=torch.long)))
        >>> mixed.y_b.tolist(), mixed.lam.tolist()  # foreground labels; background shares
        ([0, 1, 1, 0], [1.0, 0.875, 0.75, 0.875])
        >>> h.mean(dim=(1, 2, 3)).tolist()  # a class-1 box covers 1 - lam of the image
        [0.0, 0.125, 0.25, 0.0]
    """

    def __init__(self, alpha: float = 1.0, p: float = 0.5, r: float = 1.0,
                 weighting: str = "image", start_epoch: int = 0, end_epoch: int | None = None,
                 *, context: Context | None = None):
        super().__init__(p, start_epoch, end_epoch, "input", context=context)
        self.alpha = check_alpha(alpha)
        if self.context.labels is None or self.context.fetch is None:
            raise ConfigError("cmo needs the training labels and the trainer's fetch; use it in "
                              "a recipe, or pass context=Context(labels=..., fetch=...) yourself")
        self.fetch = self.context.fetch
        # key "": r and weighting are this entry's own parameters (augment[i].r)
        self.foreground = SAMPLERS.build(
            {"name": "cmo_weighted", "r": r, "weighting": weighting}, key="",
            context=replace(self.context, seed=stream_seed(self.context.seed)))
        self._stream: torch.Tensor | None = None
        self._cursor = 0
        self.last_boxes: torch.Tensor | None = None
        self.last_foreground: torch.Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.foreground.set_epoch(epoch)
        self._stream, self._cursor = None, 0

    def next_indices(self, count: int) -> torch.Tensor:
        """The next ``count`` indices of this epoch's foreground stream (it wraps around)."""
        if self._stream is None:
            self._stream = self.foreground.indices()
        take = torch.arange(self._cursor, self._cursor + count) % self._stream.numel()
        self._cursor += count
        return self._stream[take]

    def mix(self, h: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
        b = h.shape[0]
        fg_x, fg_y = self.fetch(self.next_indices(b).to(h.device))
        lam = beta_draw(self.alpha, b).to(h.device)
        self.last_boxes = random_boxes(lam, h.shape[2], h.shape[3])
        self.last_foreground = fg_x
        mixed, kept = paste_boxes(h, fg_x.to(h.dtype), self.last_boxes)
        return mixed, batch.replace(x=mixed, y_b=fg_y.to(batch.y_a.device), lam=kept)
