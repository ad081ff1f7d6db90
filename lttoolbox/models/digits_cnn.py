"""A small convnet for 8x8 one-channel digits (scikit-learn's ``load_digits``).

Not from a paper: a fast, CPU-friendly model so that every trick can be run end to end on
``digits_lt`` in seconds. Two 3x3 conv + BatchNorm + ReLU layers (32 then 64 channels), one 2x2
max pooling, global average pooling: feature dim 64, about 19k parameters with a 10-class head.

Example:
    >>> import torch
    >>> from lttoolbox.models import DigitsCNN
    >>> DigitsCNN(num_classes=10)(torch.randn(4, 1, 8, 8)).shape
    torch.Size([4, 10])
"""
from __future__ import annotations

from torch import nn

from ..checks import check_bool
from ..registry import MODELS
from .base import GlobalAvgPool, LTModel, check_image_size
from .resnet_cifar import init_weights


def conv_bn_relu(in_channels: int, out_channels: int, batch_norm: bool = True) -> list[nn.Module]:
    if not batch_norm:  # the conv then needs its own bias
        return [nn.Conv2d(in_channels, out_channels, 3, 1, 1), nn.ReLU(inplace=True)]
    return [nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


@MODELS.register("digits_cnn")
class DigitsCNN(LTModel):
    """Small convnet with points ``input, stem, layer1, layer2, features``.

    * ``stem``: 3x3 conv (``in_channels`` -> 32) + BN + ReLU, 8x8;
    * ``layer1``: 3x3 conv (32 -> 64) + BN + ReLU, 8x8;
    * ``layer2``: 2x2 max pooling, 4x4 (a parameter-free block, so manifold mixup has a
      down-sampled map to act on);
    * ``features``: global average pooling, 64-d.

    Conv weights use ``kaiming_normal_`` like the ResNets.

    Recipe::

        model:
          name: digits_cnn
          head: linear

    Args:
        num_classes: Number of classes (context).
        in_channels: Image channels (context, default 1).
        image_size: Image side (context, default 8); validated only (>= 2 for the pooling).
        head: Head config (``"linear"`` default, ``"cosine"``, or a dict).
        batch_norm: ``false`` drops the batch norms (the convs get biases): a model whose step
            does not depend on how a batch is split, as the distributed tests need.

    Example:
        >>> DigitsCNN(num_classes=5, head={"name": "cosine"}).feature_dim
        64
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 8,
                 head: str | dict = "linear", batch_norm: bool = True):
        super().__init__(num_classes, in_channels, head)
        check_image_size(image_size, 2)
        check_bool("batch_norm", batch_norm)
        self._set_blocks([
            ("stem", nn.Sequential(*conv_bn_relu(in_channels, 32, batch_norm))),
            ("layer1", nn.Sequential(*conv_bn_relu(32, 64, batch_norm))),
            ("layer2", nn.MaxPool2d(2)),
            ("features", GlobalAvgPool()),
        ], feature_dim=64)
        init_weights(self)
