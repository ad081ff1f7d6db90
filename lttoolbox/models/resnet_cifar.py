"""The CIFAR ResNets of He et al. (CVPR 2016, Sec. 4.2), as used by the long-tailed literature.

``resnet32`` is the backbone of LDAM-DRW (Cao et al., NeurIPS 2019) and most CIFAR-LT papers after
it: a 3x3 conv (16) stem, three groups of ``n = 5`` basic blocks with 16/32/64 channels on
32x32/16x16/8x8 maps, global average pooling and a classifier head, ``6n + 2 = 32`` weighted
layers, about 0.46M parameters with a 10-class linear head (He et al., Table 6).

Example:
    >>> import torch
    >>> from lttoolbox.models import ResNet32
    >>> model = ResNet32(num_classes=10)
    >>> model(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> model.point_names
    ('input', 'stem', 'layer1', 'layer2', 'layer3', 'features')
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import MODELS
from .base import GlobalAvgPool, LTModel, check_image_size


def init_weights(model: nn.Module) -> None:
    """``kaiming_normal_`` (fan-in, ReLU gain) on every conv weight, as the LDAM-DRW reference
    code does (its ``_weights_init``; the He et al. init, Sec. 3.4). BatchNorm keeps PyTorch's
    ``gamma = 1, beta = 0`` and heads initialise themselves (see ``heads.py``)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)


class PadShortcut(nn.Module):
    """Option-A shortcut (He et al. 2016, Sec. 3.3 and 4.2): parameter-free identity that
    subsamples by ``stride`` and appends zero channels to reach ``out_channels``.

    ``out = concat([x[:, :, ::s, ::s], zeros(B, out_channels - C, H', W')], dim=1)``

    Deviation from the LDAM-DRW / akamaster reference code, which pads ``planes // 4`` zero
    channels on *both* sides: the zeros are appended after the input channels instead. The two
    differ only by a fixed permutation of the block's output channels, so a freshly initialised
    network is the same in distribution, but reference checkpoints do not load one to one.
    ``F.pad`` keeps the input's memory format, so channels_last inputs stay channels_last.

    Args:
        in_channels: Channels of the input.
        out_channels: Channels of the output (``>= in_channels``).
        stride: Spatial subsampling factor.

    Example:
        >>> PadShortcut(16, 32, 2)(torch.ones(1, 16, 8, 8)).shape
        torch.Size([1, 32, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError("option-A shortcut cannot reduce channels")
        self.extra = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        # F.pad's last pair pads dim 1 (channels):
        # (W_left, W_right, H_top, H_bottom, C_front, C_back)
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra}"


class BasicBlock(nn.Module):
    """Residual block of two 3x3 convs (He et al. 2016, Fig. 2): ``relu(bn(conv(relu(bn(conv(x)))))
    + shortcut(x))``, with the option-A shortcut when the shape changes.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first conv (and the shortcut's subsampling).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(LTModel):
    """CIFAR ResNet of depth ``6n + 2`` (He et al. 2016, Sec. 4.2) with named points
    ``input, stem, layer1, layer2, layer3, features``.

    Args:
        depth: ``6n + 2`` (20, 32, 44, 56, 110, ...).
        num_classes: Number of classes (context).
        in_channels: Image channels (context).
        image_size: Image side or ``(h, w)`` (context); only validated, the network is
            size-agnostic thanks to global pooling (at least 4 so ``layer3`` keeps a pixel).
        head: Head config, ``"linear"`` (default) or ``"cosine"`` or a dict.
        widths: Channels of the three groups of blocks (16, 32, 64 in the paper).
    """

    def __init__(self, depth: int = 32, num_classes: int = 10, in_channels: int = 3,
                 image_size: int = 32, head: str | dict = "linear",
                 widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__(num_classes, in_channels, head)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, ...), got {depth!r}")
        check_image_size(image_size, 4)
        blocks = (depth - 2) // 6
        named: list[tuple[str, nn.Module]] = [("stem", nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)))]
        channels = widths[0]
        for i, width in enumerate(widths):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(channels, width, stride=2 if (i > 0 and b == 0) else 1))
                channels = width
            named.append((f"layer{i + 1}", nn.Sequential(*layers)))
        named.append(("features", GlobalAvgPool()))
        self.depth = depth
        self._set_blocks(named, feature_dim=channels)
        init_weights(self)


@MODELS.register("resnet32")
class ResNet32(CifarResNet):
    """ResNet-32 for 32x32 images (He et al. 2016, Sec. 4.2, Table 6; the LDAM-DRW backbone).

    Recipe::

        model:
          name: resnet32
          head: linear          # or {name: cosine} for LDAM's normed classifier

    Args:
        num_classes: Number of classes (context).
        in_channels: Image channels (context, default 3).
        image_size: Image side (context, default 32); validated only.
        head: Head config (``"linear"`` default, ``"cosine"``, or a dict).

    Example:
        >>> ResNet32(num_classes=100, head="cosine")(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 100])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 head: str | dict = "linear"):
        super().__init__(32, num_classes, in_channels, image_size, head)
