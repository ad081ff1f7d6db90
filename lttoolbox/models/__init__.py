"""Models (registry ``MODELS``, recipe section ``model``): ``resnet32``, ``digits_cnn``, and the
ImageNet-scale ``resnet10``, ``resnet50``, ``resnet152``, ``resnext50_32x4d``, the two-branch
``two_branch_resnet32`` and ``two_branch_digits_cnn`` (BBN, DBN-Mix; see
:mod:`lttoolbox.models.two_branch`); ``timm``: any timm architecture (the ``[timm]`` extra).

Every model is an :class:`LTModel` with named points (``model.point_names``), a swappable head
(``linear``, ``cosine``, see :mod:`lttoolbox.models.heads`; ``tau_norm`` and ``lws`` of decoupled
training, see :mod:`lttoolbox.models.decoupling`; ``marc``, margin calibration, see
:mod:`lttoolbox.models.marc`), ``forward_hooked`` for acting at a
point, ``freeze`` and ``reset_head``. Importing this package registers every entry.
"""
from .heads import HEADS, CosineHead, LinearHead, build_head, head_config
from .base import GlobalAvgPool, LTModel
from .resnet_cifar import BasicBlock, CifarResNet, PadShortcut, ResNet32, init_weights
from .digits_cnn import DigitsCNN
from .resnet_imagenet import (ImageNetResNet, ResNet10, ResNet50, ResNet152, ResNeXt50_32x4d,
                              load_torchvision_weights)
from .decoupling import LWSHead, TauNormHead
from .marc import MARCHead
from .timm_backbone import TimmModel, load_timm_weights
from .two_branch import BranchHeads, BranchPair, TwoBranchDigitsCNN, TwoBranchResNet32

__all__ = [
    "HEADS", "CosineHead", "LinearHead", "build_head", "head_config",
    "GlobalAvgPool", "LTModel",
    "BasicBlock", "CifarResNet", "PadShortcut", "ResNet32", "init_weights",
    "DigitsCNN", "LWSHead", "MARCHead", "TauNormHead",
    "ImageNetResNet", "ResNet10", "ResNet50", "ResNet152", "ResNeXt50_32x4d",
    "load_torchvision_weights", "TimmModel", "load_timm_weights",
    "BranchHeads", "BranchPair", "TwoBranchDigitsCNN", "TwoBranchResNet32",
]

# Every module of the package, so that a new entry file registers without being listed here.
from ..registry import import_submodules  # noqa: E402

import_submodules(__name__)
