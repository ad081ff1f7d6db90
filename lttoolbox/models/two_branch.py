"""Two-branch networks: a shared trunk and two parallel branches, the models of BBN and DBN-Mix.

Two layouts (``layout``), each its paper's official code:

* ``bbn`` (Zhou et al., "BBN: Bilateral-Branch Network with Cumulative Learning for Long-Tailed
  Visual Recognition", CVPR 2020; Megvii-Nanjing/BBN at 7992e90, ``lib/backbone/
  resnet_cifar.py`` lines 153-212 and ``lib/net/network.py`` lines 87-121): the branches share
  everything but the last residual block; each branch is one block and global pooling, and
  **one** classifier reads the concatenated features ``[f_c; f_r]`` (``joins: features``). A
  single linear layer on the concatenation is two classifiers whose outputs are summed, with
  one bias.
* ``dbn_mix`` (Baik, Yoon, Choi, "DBN-Mix: Training Dual Branch Network Using Bilateral Mixup
  Augmentation for Long-Tailed Visual Recognition", arXiv:2207.02173, Pattern Recognition 2024;
  soony1213/DBN-Mix at 4359585, ``models/resnet_cifar.py`` lines 91-173): the branches share
  the stem and the first two groups; each has its own last group, pooling and classifier
  (``joins: logits``).

Evaluation (``forward``, the exported model) is what each paper evaluates: both branches on the
same image with equal weights. ``bbn``: ``head([f_c(x); f_r(x)])`` with no cumulative weight and
no factor 2 (``lib/core/function.py`` lines 75-77, ``main/valid.py`` line 51); ``dbn_mix``: the
mean of the two classifiers' logits (``main.py`` lines 392-395).

Training: a batch whose ``streams`` is 2 is routed (:class:`~lttoolbox.api.Branched`): block
``k`` of its rows goes through the trunk on its own (its own BatchNorm statistics, as the
official codes' two forward calls per step) and then through branch ``k`` only. The ``bbn`` and
``dbn_mix`` augmentations build those streams (:mod:`lttoolbox.augment.two_branch`). Trained
without them, both branches see the same batch.

Example:
    >>> import torch
    >>> from lttoolbox.models import TwoBranchResNet32
    >>> model = TwoBranchResNet32(num_classes=10, layout="bbn")
    >>> model.point_names, model.feature_dim, model.joins
    (('input', 'stem', 'layer1', 'layer2', 'layer3', 'features'), 128, 'features')
    >>> model(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""
from __future__ import annotations

import torch
from torch import nn

from ..api import Branched, Head
from ..batch import Batch
from ..checks import check_bool
from ..errors import ConfigError
from ..registry import MODELS
from .base import GlobalAvgPool, LTModel, check_image_size
from .digits_cnn import conv_bn_relu
from .heads import build_head
from .resnet_cifar import BasicBlock, init_weights

LAYOUTS = ("bbn", "dbn_mix")


def check_layout(layout: object) -> str:
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)} (bbn: branches share all "
                          f"but the last block, one classifier; dbn_mix: branches share up to "
                          f"the last group, one classifier each), got {layout!r}")
    return str(layout)


class BranchPair(nn.Module):
    """The ``features`` block of a two-branch model: two branches, each ending with global
    average pooling, on the same input; their pooled features concatenated ``[f_1; f_2]``.

    Args:
        first, second: The branches, ``(B, C, H, W) -> (B, d)``.
    """

    def __init__(self, first: nn.Module, second: nn.Module):
        super().__init__()
        self.branch = nn.ModuleList([first, second])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(h) for branch in self.branch], dim=1)

    def run(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """Branch ``k`` alone on ``h``."""
        return self.branch[k](h)


class BranchHeads(nn.Module, Head):
    """One classifier per branch (DBN-Mix's ``linear`` and ``linear_rb``), each a head of the
    configured kind on one branch's ``d`` features; on ``[f_1; f_2]`` the logits are the mean
    ``(head_1(f_1) + head_2(f_2)) / 2``.

    Args:
        cfg: The head config of each branch's classifier (``linear`` by default).
        in_features: ``d``, one branch's feature width.
        num_classes: Number of logits.
        key: Recipe key for errors.
    """

    def __init__(self, cfg: str | dict, in_features: int, num_classes: int,
                 key: str = "model.head"):
        super().__init__()
        self.heads = nn.ModuleList([build_head(cfg, in_features, num_classes, key)
                                    for _ in range(2)])
        self.in_features = in_features
        self.follows = self.heads[0].follows
        self.needs_validation = self.heads[0].needs_validation

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        d = self.in_features
        return 0.5 * (self.heads[0](h[:, :d]) + self.heads[1](h[:, d:]))

    def branch(self, k: int, f: torch.Tensor) -> torch.Tensor:
        """Branch ``k``'s logits on its own features ``f`` (``(B, d)``)."""
        return self.heads[k](f)

    def adopt(self, previous: nn.Module) -> None:
        for mine, theirs in zip(self.heads, previous.heads):
            mine.adopt(theirs)

    def after_phase(self, events) -> None:
        for head in self.heads:
            head.after_phase(events)


class TwoBranchModel(LTModel, Branched):
    """Base of the two-branch models: the trunk's blocks, then a :class:`BranchPair` as the
    ``features`` block, then one head (``joins: features``) or a :class:`BranchHeads`
    (``joins: logits``). Subclasses build the blocks and call :meth:`_set_branches`."""

    def _set_branches(self, trunk: list[tuple[str, nn.Module]], make_branch,
                      branch_dim: int, joins: str) -> None:
        self.joins = joins
        self.branch_dim = branch_dim
        pair = BranchPair(make_branch(), make_branch())
        self._set_blocks([*trunk, ("features", pair)], feature_dim=2 * branch_dim)
        if joins == "logits":
            self.head = BranchHeads(self.head_cfg, branch_dim, self.num_classes)
        init_weights(self)

    # ---------------------------------------------------------------------------- routing
    def forward_hooked(self, batch: Batch, hooks: dict) -> tuple[torch.Tensor, Batch]:
        """As :meth:`LTModel.forward_hooked`; a batch that the ``input`` hook (or the caller)
        made of two streams (``batch.streams == 2``) is routed, see
        :class:`~lttoolbox.api.Branched`."""
        if not hooks and batch.streams == 1:
            return self.forward(batch.x), batch
        h, batch = self._enter_hooked(batch, hooks)
        if batch.streams == 1:
            for name in self._body:
                h = getattr(self, name)(h)
                if name in hooks:
                    h, batch = self._call_hook(hooks, name, h, batch)
            return self.head(h), batch
        return self._routed(h, batch, hooks)

    def _routed(self, h: torch.Tensor, batch: Batch, hooks: dict) -> tuple[torch.Tensor, Batch]:
        if batch.streams != 2 or h.shape[0] % 2:
            raise ValueError(f"a routed batch holds 2 equal blocks of rows, got streams="
                             f"{batch.streams} and {h.shape[0]} rows")
        rows = h.shape[0]
        parts = list(h.chunk(2))
        for name in self._body[:-1]:  # the trunk, once per stream
            block = getattr(self, name)
            parts = [block(part) for part in parts]
            if name in hooks:
                h, batch = self._call_hook(hooks, name, torch.cat(parts), batch)
                if h.shape[0] != rows:
                    raise ConfigError(f"a component at '{name}' changed the rows of a batch "
                                      f"routed through two branches ({rows} -> {h.shape[0]})")
                parts = list(h.chunk(2))
        feats = [self.features.run(k, part) for k, part in enumerate(parts)]
        if self.joins == "logits":
            if "features" in hooks:
                raise ConfigError("a component acts at 'features' of a model whose two routed "
                                  "streams meet only at their logits (layout dbn_mix)")
            return torch.cat([self.head.branch(k, f) for k, f in enumerate(feats)]), batch
        if batch.mixed:  # an identity test, no device synchronisation
            raise ConfigError("the streams joined at 'features' (layout bbn) must be unmixed: "
                              "each block's target is one of the joined sample's two targets")
        half = rows // 2
        h = torch.cat(feats, dim=1)
        batch = batch.replace(x=h, y_a=batch.y_a[:half], y_b=batch.y_a[half:],
                              lam=torch.full((half,), 0.5, device=h.device), streams=1)
        if "features" in hooks:
            h, batch = self._call_hook(hooks, "features", h, batch)
        return self.head(h), batch

    # ------------------------------------------------------------------------------- head
    def _new_head(self, cfg: dict, key: str) -> nn.Module:
        """The head :meth:`LTModel.reset_head` puts in: with ``joins: logits`` each branch gets a
        new head of the kind ``cfg`` names (one that takes over takes over its own branch's)."""
        if self.joins == "features":
            return super()._new_head(cfg, key)
        return BranchHeads(cfg, self.branch_dim, self.num_classes, key)


@MODELS.register("two_branch_resnet32")
class TwoBranchResNet32(TwoBranchModel):
    """ResNet-32 (He et al. 2016, Sec. 4.2) with two branches, as BBN and DBN-Mix build it.

    * ``layout: bbn``: points ``input, stem, layer1, layer2, layer3, features``; ``layer3``
      holds the group's first 4 blocks (shared), and each branch is the 5th block (64 -> 64,
      stride 1) plus pooling: ``feature_dim`` 128, one head on ``[f_c; f_r]``
      (``bbn_res32_cifar``, ``resnet_cifar.py`` lines 162-164, 227-238).
    * ``layout: dbn_mix``: points ``input, stem, layer1, layer2, features``; each branch is a
      whole third group (5 blocks, 32 -> 64, stride 2) plus pooling and its own head of the
      configured kind (``resnet32(use_block=True)``, ``models/resnet_cifar.py`` lines 100-113).

    Conv weights use ``kaiming_normal_`` as in both official codes (their ``_weights_init``).

    Recipe::

        model: {name: two_branch_resnet32, layout: bbn}

    Args:
        layout: ``bbn`` or ``dbn_mix``.
        num_classes, in_channels, image_size: From the context (``image_size`` validated only).
        head: Head config: the one head (``bbn``) or each branch's (``dbn_mix``).

    Example:
        >>> import torch
        >>> model = TwoBranchResNet32(num_classes=10, layout="dbn_mix")
        >>> model.point_names, model.branch_dim, model.joins
        (('input', 'stem', 'layer1', 'layer2', 'features'), 64, 'logits')
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, layout: str = "bbn", num_classes: int = 10, in_channels: int = 3,
                 image_size: int = 32, head: str | dict = "linear"):
        super().__init__(num_classes, in_channels, head)
        self.layout = check_layout(layout)
        check_image_size(image_size, 4)
        widths, per_group = (16, 32, 64), 5
        trunk: list[tuple[str, nn.Module]] = [("stem", nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
            nn.ReLU(inplace=True)))]

        def group(in_ch: int, width: int, count: int, stride: int) -> list[nn.Module]:
            return [BasicBlock(in_ch if b == 0 else width, width, stride if b == 0 else 1)
                    for b in range(count)]

        trunk.append(("layer1", nn.Sequential(*group(16, 16, per_group, 1))))
        trunk.append(("layer2", nn.Sequential(*group(16, 32, per_group, 2))))
        if self.layout == "bbn":
            trunk.append(("layer3", nn.Sequential(*group(32, 64, per_group - 1, 2))))
            self._set_branches(trunk, lambda: nn.Sequential(BasicBlock(64, 64, 1),
                                                            GlobalAvgPool()), widths[2], "features")
        else:
            self._set_branches(trunk, lambda: nn.Sequential(*group(32, 64, per_group, 2),
                                                            GlobalAvgPool()), widths[2], "logits")


@MODELS.register("two_branch_digits_cnn")
class TwoBranchDigitsCNN(TwoBranchModel):
    """:class:`~lttoolbox.models.DigitsCNN` with two branches, for the fast end-to-end runs of
    BBN and DBN-Mix on the digits: points ``input, stem, layer1, features``; the digits model's
    two convs (to 32, then 64 channels, 8x8) are shared, and each branch is its 2x2 max pooling,
    one more 3x3 conv (64 -> 64, 4x4) and global pooling (``branch_dim`` 64), as BBN duplicates
    a last block. Both layouts split there (the model is too shallow for DBN-Mix's whole last
    group); they differ in the heads: one on ``[f_1; f_2]`` (``bbn``) or one per branch, logits
    averaged (``dbn_mix``).

    Recipe::

        model: {name: two_branch_digits_cnn, layout: bbn}

    Args:
        layout: ``bbn`` or ``dbn_mix``.
        num_classes, in_channels, image_size: From the context.
        head: Head config.
        batch_norm: ``false`` drops the batch norms (the distributed tests need a step that
            does not depend on how a batch is split).

    Example:
        >>> import torch
        >>> model = TwoBranchDigitsCNN(num_classes=10, layout="bbn")
        >>> model.forward_features(torch.randn(4, 1, 8, 8)).shape
        torch.Size([4, 128])
    """

    def __init__(self, layout: str = "bbn", num_classes: int = 10, in_channels: int = 1,
                 image_size: int = 8, head: str | dict = "linear", batch_norm: bool = True):
        super().__init__(num_classes, in_channels, head)
        self.layout = check_layout(layout)
        check_image_size(image_size, 2)
        check_bool("batch_norm", batch_norm)
        trunk = [("stem", nn.Sequential(*conv_bn_relu(in_channels, 32, batch_norm))),
                 ("layer1", nn.Sequential(*conv_bn_relu(32, 64, batch_norm)))]
        self._set_branches(trunk, lambda: nn.Sequential(nn.MaxPool2d(2),
                                                        *conv_bn_relu(64, 64, batch_norm),
                                                        GlobalAvgPool()),
                           64, "features" if self.layout == "bbn" else "logits")
