"""ImageNet-scale ResNets built from torchvision's code, with the named-point contract.

The backbones of the large long-tailed benchmarks (ImageNet-LT, Places-LT, iNaturalist):

* ``resnet10``: He et al.'s design (CVPR 2016) with one BasicBlock per group; trained from
  scratch on ImageNet-LT by OLTR (Liu et al., CVPR 2019) and the decoupling paper (Kang et al.,
  ICLR 2020);
* ``resnet50`` (He et al., CVPR 2016): iNaturalist in Kang et al.;
* ``resnet152`` (He et al., CVPR 2016): Places-LT, from ImageNet weights, in both papers;
* ``resnext50_32x4d`` (Xie et al., CVPR 2017): Kang et al.'s main ImageNet-LT backbone.

The blocks are torchvision's (``torchvision.models.resnet``), regrouped into named blocks::

    input -> stem (conv1, bn1, relu, maxpool) -> layer1 -> layer2 -> layer3 -> layer4
          -> features (global average pooling) -> head

so ``forward_hooked``, ``freeze`` and ``reset_head`` work as on the CIFAR models. torchvision's
``fc`` is dropped: the head is the recipe's (``linear``, ``cosine``, ...).

``weights`` loads a local torchvision-format state dict (nothing is ever downloaded; see
:func:`load_torchvision_weights`).

Example:
    >>> import torch
    >>> from lttoolbox.models import ResNet10
    >>> model = ResNet10(num_classes=5)
    >>> model.point_names
    ('input', 'stem', 'layer1', 'layer2', 'layer3', 'layer4', 'features')
    >>> model(torch.randn(1, 3, 64, 64)).shape
    torch.Size([1, 5])
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checks import check_bool
from ..errors import ConfigError
from ..registry import MODELS
from .base import GlobalAvgPool, LTModel, check_image_size

ARCHS = ("resnet10", "resnet50", "resnet152", "resnext50_32x4d")
WEIGHTS_KEY = "model.weights"

# torchvision's top-level modules that move under ``stem``, and those kept by name; ``fc`` is
# neither: the head replaces it.
_STEM = ("conv1", "bn1")
_LAYERS = ("layer1", "layer2", "layer3", "layer4")


def torchvision_resnet(arch: str, **kwargs: Any) -> nn.Module:
    """torchvision's ``ResNet`` for ``arch`` (one of :data:`ARCHS`), randomly initialised.

    torchvision is imported here, not at module level: it adds seconds to every start, and runs
    of the small models never need it.
    """
    from torchvision.models import resnet as tv

    if arch == "resnet10":  # not in torchvision: its ResNet class with one BasicBlock per group
        return tv.ResNet(tv.BasicBlock, [1, 1, 1, 1], **kwargs)
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    return getattr(tv, arch)(weights=None, **kwargs)


class ImageNetResNet(LTModel):
    """A torchvision ResNet with points ``input, stem, layer1, layer2, layer3, layer4,
    features`` and a recipe head (unregistered; see the four entries below).

    Attributes:
        arch: The architecture's name (one of :data:`ARCHS`).
        weights_path: The ``weights`` file the backbone was loaded from, or ``None``.

    Args:
        arch: torchvision architecture, one of :data:`ARCHS`.
        num_classes: Number of classes (context).
        in_channels: Image channels (context). For anything but 3, ``conv1`` is a fresh conv
            taking ``in_channels`` (torchvision's init), so 3-channel weight files do not fit.
        image_size: Image side or ``(h, w)`` (context); validated only (>= 32, the network's
            total stride, so ``layer4`` has at least one pixel of real input behind it).
        head: Head config, ``"linear"`` (default) or ``"cosine"`` or a dict.
        weights: Path of a local torchvision-format state dict for the backbone, or ``None``
            (random init, torchvision's). See :func:`load_torchvision_weights`.
        norm_eval: Keep every BatchNorm of the backbone (``stem``, ``layer1``-``layer4``) in
            eval mode while the model trains: running statistics fixed at the loaded weights,
            affine parameters still learning. This is mmcv's ``ResNet(norm_eval=True)``, the
            backbone of the distribution-balanced loss's VOC-MLT and COCO-MLT models
            (wutong16/DistributionBalancedLoss@14460d0, ``mllt/models/backbones/resnet.py:310,
            432-439``); a head's own BatchNorm (``pfc``) still trains.
        zero_init_residual: torchvision's option: the last BN of every block starts at
            ``gamma = 0`` (Goyal et al. 2017), so each block starts as the identity.
    """

    def __init__(self, arch: str, num_classes: int = 1000,
                 in_channels: int = 3, image_size: int = 224, head: str | dict = "linear",
                 weights: str | os.PathLike | None = None, zero_init_residual: bool = False,
                 norm_eval: bool = False):
        super().__init__(num_classes, in_channels, head)
        check_image_size(image_size, 32)
        check_bool("zero_init_residual", zero_init_residual)
        self.norm_eval = check_bool("norm_eval", norm_eval)
        # num_classes=1: torchvision's fc is thrown away, no point allocating 1000 x 2048.
        net = torchvision_resnet(arch, num_classes=1, zero_init_residual=zero_init_residual)
        conv1 = net.conv1
        if in_channels != conv1.in_channels:
            conv1 = nn.Conv2d(in_channels, conv1.out_channels, conv1.kernel_size, conv1.stride,
                              conv1.padding, bias=False)
            # torchvision's own init for its convs, so only the channel count differs
            nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
        stem = nn.Sequential(OrderedDict(conv1=conv1, bn1=net.bn1, relu=net.relu,
                                         maxpool=net.maxpool))
        named: list[tuple[str, nn.Module]] = [("stem", stem)]
        named += [(name, getattr(net, name)) for name in _LAYERS]
        named.append(("features", GlobalAvgPool()))
        self._set_blocks(named, feature_dim=net.fc.in_features)
        self.arch = arch
        self.weights_path: str | None = None
        if weights is not None:
            load_torchvision_weights(self, weights)
            self.weights_path = os.fspath(weights)

    def train(self, mode: bool = True) -> "ImageNetResNet":
        super().train(mode)
        if mode and self.norm_eval:
            for name in ("stem", *_LAYERS):
                for module in self._block(name).modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self


def first_line(err: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def weights_file(path: Any, library: str) -> Path:
    """``model.weights`` as an existing local file (nothing is downloaded).

    Args:
        path: The recipe value.
        library: Whose state dict belongs there (``torchvision``, ``timm``), for the message.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"must be a path to a local weights file, got {path!r}", key=WEIGHTS_KEY)
    file = Path(path).expanduser()
    if not file.exists():
        raise ConfigError(f"weights file {file} does not exist (nothing is downloaded; save a "
                          f"{library} state dict there, see docs/models.md)", key=WEIGHTS_KEY)
    if not file.is_file():
        raise ConfigError(f"weights file {file} is not a file", key=WEIGHTS_KEY)
    return file


def _read_state_dict(path: Any) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from a checkpoint dict if need be."""
    file = weights_file(path, "torchvision")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here is a bad file, not a toolbox bug
        raise ConfigError(f"cannot read weights file {file} ({first_line(err)})",
                          key=WEIGHTS_KEY) from None
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):  # a training checkpoint around the state dict
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj:
        kind = "an empty dict" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise ConfigError(f"weights file {file} holds {kind}, not a state dict (a mapping of "
                          f"parameter names to tensors)", key=WEIGHTS_KEY)
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise ConfigError(f"weights file {file} is not a state dict: entry {name!r} is a "
                              f"{type(value).__name__}, not a tensor", key=WEIGHTS_KEY)
    if all(name.startswith("module.") for name in obj):  # saved from DataParallel / DDP
        obj = {name[len("module."):]: value for name, value in obj.items()}
    return obj


def _our_name(key: str) -> str | None:
    """This model's name for a file's key (``None`` if it has none): torchvision's ``conv1`` and
    ``bn1`` move under ``stem``; this toolbox's own names (``stem.*``) stay."""
    top = key.split(".", 1)[0]
    if top in _STEM:
        return "stem." + key
    return key if top in _LAYERS or top == "stem" else None


def _tv_name(name: str) -> str:
    block, rest = name.split(".", 1)
    return rest if block == "stem" else name


def load_torchvision_weights(model: ImageNetResNet, path: str | os.PathLike) -> list[str]:
    """Load a torchvision-format ResNet state dict from a local file into ``model``'s backbone.

    The file is read with ``torch.load(..., weights_only=True)`` (no code runs) and may hold:

    * a state dict as ``torchvision.models.resnet50().state_dict()`` gives it (``conv1.weight``,
      ``bn1.running_mean``, ``layer1.0.conv1.weight``, ..., ``fc.weight``);
    * a checkpoint dict with that state dict under ``state_dict`` or ``model``;
    * either one with every key prefixed by ``module.`` (saved from ``DataParallel``/DDP);
    * this toolbox's own names (``stem.conv1.weight``, ..., ``head.*``), so the
      ``model-<phase>.pt`` or ``checkpoint.pt`` of a run of the same architecture can start
      another one.

    ``conv1``/``bn1`` go to ``stem.conv1``/``stem.bn1``, ``layerN`` to ``layerN``. The
    classifier (``fc.*``, or ``head.*``) is never loaded: the head has the recipe's classes and
    keeps its fresh init. Every backbone tensor must be present with the right shape (BatchNorm's
    ``num_batches_tracked`` may be absent, as in files from before PyTorch 0.4.1); anything else
    in the file is an error.

    Args:
        model: The model to load into (in place).
        path: Local path of the weights file.

    Returns:
        The file's keys that were not loaded (the classifier's: ``fc.weight``, ``fc.bias``).

    Raises:
        ConfigError: (key ``model.weights``, naming the file) the file is missing, unreadable,
            not a state dict, or does not match the architecture (the first missing or
            unexpected key, or the first shape mismatch, is named).
    """
    state = _read_state_dict(path)
    file, arch = Path(path).expanduser(), model.arch
    ours = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    mapped: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}  # our name -> the file's, for messages
    unexpected, skipped = [], []
    for key, tensor in state.items():
        if key.split(".", 1)[0] in ("fc", "head"):  # a classifier for other classes
            skipped.append(key)
            continue
        name = _our_name(key)
        if name is None or name not in ours:
            unexpected.append(key)
        else:
            mapped[name], source[name] = tensor, key
    missing = [_tv_name(k) for k in ours
               if k not in mapped and not k.endswith("num_batches_tracked")]
    check_weights_fit(file, arch, model.in_channels, mapped, ours, missing, unexpected, source)
    # strict=False only because the head (and perhaps num_batches_tracked) is not in ``mapped``;
    # every backbone key was checked above.
    model.load_state_dict(mapped, strict=False)
    return skipped


@MODELS.register("resnet10")
class ResNet10(ImageNetResNet):
    """ResNet-10: torchvision's ResNet with BasicBlocks, layers ``[1, 1, 1, 1]``.

    The from-scratch ImageNet-LT baseline of OLTR (Liu et al., CVPR 2019) and of the decoupling
    paper (Kang et al., ICLR 2020); the ResNet design is He et al. (CVPR 2016). 512-d features.
    torchvision has no pretrained ResNet-10, so ``weights`` takes a file saved from this
    architecture (``torchvision.models.resnet.ResNet(BasicBlock, [1, 1, 1, 1])``).

    Recipe::

        model:
          name: resnet10
          head: linear

    Args:
        num_classes, in_channels, image_size, head, weights, zero_init_residual, norm_eval: as for
            :class:`ImageNetResNet` (``num_classes`` defaults to 1000, ``image_size`` to 224).

    Example:
        >>> ResNet10(num_classes=1000).feature_dim
        512
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
                 head: str | dict = "linear", weights: str | os.PathLike | None = None,
                 zero_init_residual: bool = False, norm_eval: bool = False):
        super().__init__("resnet10", num_classes, in_channels, image_size, head, weights,
                         zero_init_residual, norm_eval)


@MODELS.register("resnet50")
class ResNet50(ImageNetResNet):
    """ResNet-50 (He et al., CVPR 2016), torchvision's ``resnet50``.

    Bottleneck blocks ``[3, 4, 6, 3]``, 2048-d features; Kang et al.'s (ICLR 2020) iNaturalist
    backbone.

    Recipe::

        model:
          name: resnet50
          weights: /data/weights/resnet50_imagenet1k_v1.pth   # optional, local file

    Args:
        num_classes, in_channels, image_size, head, weights, zero_init_residual, norm_eval: as for
            :class:`ImageNetResNet` (``num_classes`` defaults to 1000, ``image_size`` to 224).

    Example:
        >>> ResNet50(num_classes=8).feature_dim
        2048
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
                 head: str | dict = "linear", weights: str | os.PathLike | None = None,
                 zero_init_residual: bool = False, norm_eval: bool = False):
        super().__init__("resnet50", num_classes, in_channels, image_size, head, weights,
                         zero_init_residual, norm_eval)


@MODELS.register("resnet152")
class ResNet152(ImageNetResNet):
    """ResNet-152 (He et al., CVPR 2016), torchvision's ``resnet152``.

    Bottleneck blocks ``[3, 8, 36, 3]``, 2048-d features; the Places-LT backbone, started from
    ImageNet weights, of OLTR (Liu et al., CVPR 2019) and Kang et al. (ICLR 2020).

    Recipe::

        model:
          name: resnet152
          weights: /data/weights/resnet152_imagenet1k_v1.pth
          head: linear

    Args:
        num_classes, in_channels, image_size, head, weights, zero_init_residual, norm_eval: as for
            :class:`ImageNetResNet` (``num_classes`` defaults to 1000, ``image_size`` to 224).

    Example:
        >>> from lttoolbox.registry import MODELS
        >>> MODELS.get("resnet152") is ResNet152
        True
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
                 head: str | dict = "linear", weights: str | os.PathLike | None = None,
                 zero_init_residual: bool = False, norm_eval: bool = False):
        super().__init__("resnet152", num_classes, in_channels, image_size, head, weights,
                         zero_init_residual, norm_eval)


@MODELS.register("resnext50_32x4d")
class ResNeXt50_32x4d(ImageNetResNet):
    """ResNeXt-50 32x4d (Xie et al., CVPR 2017), torchvision's ``resnext50_32x4d``.

    Bottleneck blocks ``[3, 4, 6, 3]`` with 32 groups of width 4, 2048-d features; the main
    ImageNet-LT backbone of the decoupling paper (Kang et al., ICLR 2020), trained from scratch
    there.

    Recipe::

        model:
          name: resnext50_32x4d
          head: {name: cosine}

    Args:
        num_classes, in_channels, image_size, head, weights, zero_init_residual, norm_eval: as for
            :class:`ImageNetResNet` (``num_classes`` defaults to 1000, ``image_size`` to 224).

    Example:
        >>> ResNeXt50_32x4d(num_classes=1000).layer1[0].conv2.groups
        32
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
                 head: str | dict = "linear", weights: str | os.PathLike | None = None,
                 zero_init_residual: bool = False, norm_eval: bool = False):
        super().__init__("resnext50_32x4d", num_classes, in_channels, image_size, head, weights,
                         zero_init_residual, norm_eval)



def check_weights_fit(file, what: str, in_channels: int, state: dict, ours: dict,
                      missing: list, unexpected: list, source: dict | None = None) -> None:
    """Refuse a weights file that does not fit the model, in one line naming ``model.weights``
    and the file: its missing and unexpected keys, then the first tensor of another shape
    (``source`` maps a model key to the file's key where they are named differently)."""
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), first {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), first {unexpected[0]}")
    if problems:
        raise ConfigError(f"weights file {file} does not fit {what}: {'; '.join(problems)}",
                          key=WEIGHTS_KEY)
    for name, tensor in state.items():
        if tensor.shape != ours[name].shape:
            raise ConfigError(
                f"weights file {file} does not fit {what} (in_channels={in_channels}): "
                f"{(source or {}).get(name, name)} has shape {tuple(tensor.shape)} in the file, "
                f"{tuple(ours[name].shape)} in the model", key=WEIGHTS_KEY)
