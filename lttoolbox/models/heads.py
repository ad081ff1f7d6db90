"""Classifier heads: the last layer of every model, swappable from the recipe.

A model's ``head`` parameter is a name or a dict ``{name: ..., **params}``. Heads live in their own
small registry, :data:`HEADS`, so a later head (tau-normalised, learnable weight scaling: see
:mod:`lttoolbox.models.decoupling`) is one more registered class, and :func:`build_head` is the
single way to make one: models use it, and a trainer re-creating the classifier for classifier
re-training (``model.reset_head(cfg)``) uses it too.

Every head is built as ``Head(in_features, num_classes, **params)`` and maps pooled features of
shape ``(B, in_features)`` to logits ``(B, num_classes)``.

Example:
    >>> import torch
    >>> from lttoolbox.models import build_head
    >>> head = build_head({"name": "cosine"}, in_features=64, num_classes=10)
    >>> bool(head(torch.randn(4, 64)).abs().max() <= 1)
    True
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..api import Head
from ..errors import ConfigError
from ..registry import HEAD_CONTEXT as _HEAD_CONTEXT  # given by the model, never by a recipe
from ..registry import HEADS


def head_config(cfg: str | dict[str, Any], key: str = "model.head") -> dict[str, Any]:
    """Normalise a head config (a name or a dict with ``name``) to a fresh dict."""
    if isinstance(cfg, str):
        return {"name": cfg}
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise ConfigError(
            f"expected a head name or a mapping with a 'name' key, got {cfg!r}; "
            f"known heads: {', '.join(HEADS.names())}", key=key)
    for name in _HEAD_CONTEXT:
        if name in cfg:
            raise ConfigError(f"'{name}' is set by the model and cannot be given in the head "
                              f"config", key=f"{key}.{name}")
    return dict(cfg)


def build_head(cfg: str | dict[str, Any], in_features: int, num_classes: int,
               key: str = "model.head") -> nn.Module:
    """Build a classifier head from its recipe config.

    Args:
        cfg: Head name (``"linear"``) or ``{"name": "cosine", "scale": 1.0}``.
        in_features: Feature dimension of the model (``model.feature_dim``).
        num_classes: Number of output logits.
        key: Recipe key used in error messages.

    Returns:
        A freshly initialised head module.

    Raises:
        ConfigError: unknown head name (the known ones are listed), unknown or bad parameter.

    Example:
        >>> build_head("linear", in_features=64, num_classes=10).weight.shape
        torch.Size([10, 64])
    """
    return HEADS.build(head_config(cfg, key), key=key,
                       in_features=in_features, num_classes=num_classes)


@HEADS.register("linear")
class LinearHead(nn.Linear, Head):
    """Plain linear classifier with bias: ``logits = W f + b``.

    ``init: kaiming_normal`` (the default) initialises the weight with ``kaiming_normal_``
    (fan-in, ReLU gain), as the LDAM-DRW reference code initialises every ``nn.Linear`` of its
    CIFAR ResNets. ``init: pytorch`` keeps ``nn.Linear``'s own initialisation, ``U(-1/sqrt(in),
    1/sqrt(in))`` for the weight (``kaiming_uniform_`` with ``a = sqrt(5)``): the classifier that
    classifier re-training (cRT) trains from scratch in both reference codes, a plain
    ``nn.Linear`` left out of the loaded weights (facebookresearch/classifier-balancing
    ``models/DotProductClassifier.py`` line 25 and ``run_networks.py`` lines 678-684 at f162ade;
    Bag of Tricks ``lib/net/network.py`` lines 120-130 and 179-180 at ce7859a), which the cRT
    recipes use. The bias keeps PyTorch's default ``U(-1/sqrt(in), 1/sqrt(in))`` unless ``prior``
    is given.

    ``prior`` is for one-vs-all sigmoid losses (sigmoid CE, sigmoid focal, their class-balanced
    forms). It is the prior initialisation of Lin et al.'s focal loss (ICCV 2017, Sec. 4.1),
    ``b = -log((1 - pi) / pi)``, so that each class's sigmoid starts at ``pi`` instead of 0.5: at
    0.5 the C - 1 negative terms of every sample swamp the positive one and the first steps are
    unstable. The official code of the class-balanced loss (Cui et al., CVPR 2019) sets it for its
    sigmoid and focal losses with ``pi = 1 / C`` (``b = -log(C - 1)``): ``prior: uniform`` here.

    Args:
        in_features: Feature dimension.
        num_classes: Number of classes.
        prior: ``None`` (PyTorch's default bias), a probability in (0, 1), or ``"uniform"`` for
            ``1 / num_classes``.
        init: The weight's initialisation, ``kaiming_normal`` or ``pytorch``.

    Example:
        >>> LinearHead(64, 10)(torch.randn(2, 64)).shape
        torch.Size([2, 10])
        >>> bool(LinearHead(64, 10, init="pytorch").weight.abs().max() <= 1 / 8)
        True
        >>> round(torch.sigmoid(LinearHead(64, 10, prior="uniform").bias[0]).item(), 6)
        0.1
    """

    INITS = ("kaiming_normal", "pytorch")

    def __init__(self, in_features: int, num_classes: int, prior: float | str | None = None,
                 init: str = "kaiming_normal"):
        if init not in self.INITS:
            raise ConfigError(f"init must be one of {', '.join(self.INITS)}, got {init!r}")
        # Set before nn.Linear.__init__, which calls reset_parameters (a plain attribute may be
        # assigned before Module.__init__; parameters and sub-modules may not).
        self.prior = _prior_probability(prior, num_classes)
        self.init = init
        super().__init__(in_features, num_classes, bias=True)

    def reset_parameters(self) -> None:
        super().reset_parameters()  # nn.Linear's init; the bias's depends on fan-in only
        if self.init == "kaiming_normal":
            nn.init.kaiming_normal_(self.weight)
        if self.prior is not None:
            nn.init.constant_(self.bias, -math.log((1.0 - self.prior) / self.prior))

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.init != "kaiming_normal":
            text = f"{text}, init={self.init}"
        return text if self.prior is None else f"{text}, prior={self.prior:g}"


def _prior_probability(prior: float | str | None, num_classes: int) -> float | None:
    """Check the ``prior`` parameter of :class:`LinearHead` and turn it into a probability."""
    if prior is None:
        return None
    if prior == "uniform":
        if num_classes < 2:  # pi = 1 would make the bias -log(0)
            raise ConfigError(f"prior 'uniform' needs at least 2 classes, got {num_classes}")
        return 1.0 / num_classes
    if isinstance(prior, bool) or not isinstance(prior, (int, float)) or not 0 < prior < 1:
        raise ConfigError(f"prior must be a probability in (0, 1) or 'uniform', got {prior!r}")
    return float(prior)


@HEADS.register("cosine")
class CosineHead(nn.Module, Head):
    """Cosine classifier, the "NormedLinear" of LDAM-DRW (Cao et al., NeurIPS 2019, Sec. 4 /
    reference code): ``logits_j = scale * <f / ||f||, w_j / ||w_j||>``, no bias.

    With the default ``scale = 1`` the logits are cosines in ``[-1, 1]``; the loss scales them
    (LDAM uses ``s = 30``), so do not set both unless you mean it.

    Deviations from the reference code: the weight is stored as ``(num_classes, in_features)`` like
    ``nn.Linear`` (the reference stores the transpose), so per-class weight norms are rows for
    every head alike; the reference init (``uniform(-1, 1)`` then each class vector rescaled to unit
    norm) is reproduced. The optional ``scale`` is an addition (the reference has none).

    Args:
        in_features: Feature dimension.
        num_classes: Number of classes.
        scale: Positive factor applied to the cosines (recipe parameter, default 1.0).

    Example:
        >>> head = CosineHead(64, 10)
        >>> logits = head(torch.rand(3, 64))
        >>> bool(logits.abs().max() <= 1)
        True
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 1.0):
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
                or not math.isfinite(scale) or scale <= 0:
            raise ConfigError(f"scale must be a positive number, got {scale!r}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.div_(self.weight.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))
        return cosine if self.scale == 1.0 else cosine * self.scale

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, scale={self.scale}"
