"""Mixing augmentations (mixup, manifold mixup, Remix, CutMix, CMO, ``one_of``) and CAM-based
re-sampling (``cam_resample``).

Each is a model hook on the two-target batch (:class:`lttoolbox.batch.Batch`), usable alone::

    from lttoolbox.augment import Mixup
    from lttoolbox.batch import Batch
    from lttoolbox.losses import CELoss, mixed_loss

    x, batch = Mixup(alpha=1.0)(images, Batch.plain(images, labels))
    loss = mixed_loss(CELoss(num_classes=10), model(x), batch)

See docs/augmentations.md.
"""
from .base import MixingAugment
from .cam import CAMResample
from .combine import OneOf
from .cutmix import CMO, CutMix, paste_boxes, random_boxes
from .mixup import ManifoldMixup, Mixup, Remix

__all__ = ["MixingAugment", "CAMResample", "Mixup", "ManifoldMixup", "Remix", "CutMix", "CMO",
           "OneOf", "paste_boxes", "random_boxes"]

# Every module of the package, so that a new entry file registers without being listed here.
from ..registry import import_submodules  # noqa: E402

import_submodules(__name__)
