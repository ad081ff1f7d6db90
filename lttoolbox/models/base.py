"""The model contract shared by every registered network: named points, hooks, freezing, heads.

A model is a chain of named blocks followed by a classifier head; each block's output, and the
input before the first, is a named *point* of the model::

    input -> stem -> layer1 -> ... -> features -> head -> logits

``input`` is the image batch, ``features`` the pooled feature vector that enters the head. The
trainer (or any caller) can act at any point with ``forward_hooked(batch, hooks)``, which is how
input mixup, manifold mixup and feature generators plug in without a model knowing about them.

Example:
    >>> import torch
    >>> from lttoolbox.batch import Batch
    >>> from lttoolbox.models import DigitsCNN
    >>> model = DigitsCNN(num_classes=10)
    >>> seen = []
    >>> def spy(h, batch):
    ...     seen.append(tuple(h.shape))
    ...     return h, batch
    >>> batch = Batch.plain(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))
    >>> logits, batch = model.forward_hooked(batch, {"features": spy})
    >>> seen, tuple(logits.shape)
    ([(2, 64)], (2, 10))
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..checks import check_int
from ..batch import Batch
from ..errors import ConfigError
from .heads import build_head, head_config

Hook = Callable[[torch.Tensor, Batch], "tuple[torch.Tensor, Batch]"]


def check_image_size(value: Any, minimum: int) -> tuple[int, int]:
    """``image_size`` (an int or an ``(h, w)`` pair) as a pair, each side ``>= minimum``."""
    pair = (value, value) if not isinstance(value, (list, tuple)) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum
                             for v in pair):
        raise ConfigError(f"image_size must be an integer or an (h, w) pair of integers "
                          f">= {minimum}, got {value!r}")
    return pair


def norm_layers(model: nn.Module | None) -> list[nn.Module]:
    """The layers of ``model`` that keep running statistics (BatchNorm, SyncBatchNorm,
    InstanceNorm with ``track_running_stats``).

    Example:
        >>> len(norm_layers(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())))
        1
    """
    if model is None:
        return []
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]


class GlobalAvgPool(nn.Module):
    """The ``features`` block: global average pooling to a ``(B, C)`` vector."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class LTModel(nn.Module):
    """Base class of every registered model: named blocks, whose outputs are the model's points,
    plus a swappable head.

    Subclasses build their layers and call :meth:`_set_blocks` with the ordered blocks (the
    points after ``input``; the last one must be ``features``, producing the pooled vector).

    Attributes:
        point_names: ``("input", <blocks>..., "features")``.
        feature_dim: Size of the pooled feature vector.
        num_classes: Number of logits.
        in_channels: Channels the model expects at its input.
        head: The classifier head module (see :mod:`lttoolbox.models.heads`).
        head_cfg: The head's config, as given to :func:`build_head`.
    """

    def __init__(self, num_classes: int, in_channels: int, head: str | dict = "linear"):
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, 2)
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.head_cfg = head_config(head)
        self._frozen: set[str] = set()
        self._fixed_stats: set[str] = set()  # frozen blocks kept in eval mode

    def _set_blocks(self, blocks: list[tuple[str, nn.Module]], feature_dim: int) -> None:
        names = tuple(name for name, _ in blocks)
        if not names or names[-1] != "features" or "input" in names or "head" in names:
            raise AssertionError(f"bad block list {names}")  # a bug in the subclass
        for name, module in blocks:
            self.add_module(name, module)
        self._body = names
        self.point_names = ("input",) + names
        self.feature_dim = feature_dim
        self.head = build_head(self.head_cfg, feature_dim, self.num_classes)

    # ----------------------------------------------------------------------------------- forward
    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ConfigError(
                f"{type(self).__name__} was built for in_channels={self.in_channels} and expects "
                f"(B, {self.in_channels}, H, W) input, got shape {tuple(x.shape)}; check the data "
                f"set or model.in_channels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for an image batch ``x`` of shape ``(B, in_channels, H, W)``."""
        self._check_input(x)
        for name in self._body:
            x = getattr(self, name)(x)
        return self.head(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled feature vector ``(B, feature_dim)`` (the head's input)."""
        self._check_input(x)
        for name in self._body:
            x = getattr(self, name)(x)
        return x

    def forward_hooked(self, batch: Batch, hooks: dict[str, Hook]) -> tuple[torch.Tensor, Batch]:
        """Run the blocks in order, letting ``hooks[point](h, batch)`` act at named points.

        At ``input`` the hook receives ``batch.x`` before the stem; at any other point it
        receives the output of the block of that name. Inside a hook ``batch.x`` is the same
        tensor as ``h`` (the activations at that point). Each hook returns ``(h, batch)``; ``h``
        continues through the network and the returned batch replaces the current one, so a
        mixing hook can set ``y_a``, ``y_b`` and ``lam``.

        Args:
            batch: The training batch (``lttoolbox.batch.Batch``).
            hooks: Point name -> ``callable(h, batch) -> (h, batch)``; may be empty.

        Returns:
            ``(logits, batch)`` where ``batch`` is the one the hooks last returned (its ``x`` is
            then the activation at the last hooked point), or the input batch if no hook ran.

        Raises:
            ConfigError: a hook names a point the model does not have.
        """
        if not hooks:  # the common path costs exactly one forward
            return self.forward(batch.x), batch
        h, batch = self._enter_hooked(batch, hooks)
        if batch.streams != 1:  # only a model with branches (lttoolbox.api.Branched) routes them
            raise ConfigError(f"{type(self).__name__} has no branches to route a batch of "
                              f"{batch.streams} streams through; use a two-branch model")
        for name in self._body:
            h = getattr(self, name)(h)
            if name in hooks:
                h, batch = self._call_hook(hooks, name, h, batch)
        return self.head(h), batch

    def _enter_hooked(self, batch: Batch, hooks: dict[str, Hook]) -> tuple[torch.Tensor, Batch]:
        """The start of :meth:`forward_hooked`, shared by the models that override it: refuse
        an unknown point, check the input, run the ``input`` hook; returns ``(h, batch)``."""
        unknown = [name for name in hooks if name not in self.point_names]
        if unknown:
            raise ConfigError(f"{type(self).__name__} has no point "
                              f"{', '.join(map(repr, unknown))}; "
                              f"points: {', '.join(self.point_names)}")
        h = batch.x
        self._check_input(h)
        if "input" in hooks:
            h, batch = self._call_hook(hooks, "input", h, batch)
        return h, batch

    @torch.no_grad()
    def point_shapes(self, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
        """The shape of one sample's activations at every point (``input`` included), found by
        one forward of ``x`` in eval mode (no statistics move, no random draw)."""
        shapes: dict[str, tuple[int, ...]] = {}

        def spy(name):
            def hook(h, batch):
                shapes[name] = tuple(h.shape[1:])
                return h, batch
            return hook

        training = self.training
        self.eval()
        try:
            labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            self.forward_hooked(Batch.plain(x, labels), {n: spy(n) for n in self.point_names})
        finally:
            self.train(training)
        return shapes

    @staticmethod
    def _call_hook(hooks: dict[str, Hook], name: str, h: torch.Tensor,
                   batch: Batch) -> tuple[torch.Tensor, Batch]:
        if batch.x is not h:
            batch = batch.replace(x=h)
        out = hooks[name](h, batch)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Batch)):
            raise TypeError(f"hook at point '{name}' must return (h, batch), got {type(out)}")
        return out

    @property
    def feature_maps(self) -> tuple[str, ...]:
        """The points whose output is a spatial map ``(B, C, H, W)`` that ``features`` averages
        over its positions, channel for channel (so a class activation map, Zhou et al., CVPR
        2016, can be read there): here the last block's before ``features``, global average
        pooling. Empty for a model that has none (a vision transformer's points carry
        tokens)."""
        return self.point_names[-2:-1]

    # ----------------------------------------------------------------------------------- freezing
    def _block(self, name: str) -> nn.Module:
        """The module of the block that ends at point ``name`` (or the head): what freezing it
        acts on."""
        return getattr(self, name)

    def _freezable(self) -> tuple[str, ...]:
        return self._body + ("head",)

    def _resolve(self, names: str | Iterable[str]) -> list[str]:
        names = [names] if isinstance(names, str) else list(names)
        resolved: list[str] = []
        for name in names:
            if name == "backbone":
                resolved.extend(self._body)
            elif name in self._freezable():
                resolved.append(name)
            elif name != "input":  # no block ends at the input: nothing to freeze
                raise ConfigError(f"cannot freeze '{name}'; choose from backbone, "
                                  f"{', '.join(self.point_names)}, head")
        return resolved

    @property
    def frozen(self) -> tuple[str, ...]:
        """Names of the frozen blocks, in network order."""
        return tuple(n for n in self._freezable() if n in self._frozen)

    @property
    def fixed_statistics(self) -> tuple[str, ...]:
        """Names of the frozen blocks whose BatchNorm statistics are fixed (``freeze_bn_stats``),
        in network order."""
        return tuple(n for n in self._freezable() if n in self._fixed_stats)

    def freeze(self, names: str | Iterable[str], freeze_bn_stats: bool = False) -> "LTModel":
        """Freeze blocks: no gradients for their parameters.

        By default a frozen block still follows :meth:`train` and :meth:`eval`, so while the model
        trains its BatchNorm layers normalise with the batch's statistics and update their running
        statistics, exactly as in the reference codes of classifier re-training, which only set
        ``requires_grad = False`` and train in ``model.train()``:
        facebookresearch/classifier-balancing ``run_networks.py`` lines 115-120 and 249 (commit
        f162ade), Bag of Tricks (zhangyongshun/BagofTricks-LT) ``lib/net/network.py`` lines
        91-94 and ``lib/core/function.py`` lines 21-24 (commit ce7859a). The running statistics
        are buffers of the state dict, so a checkpoint holds them and a resumed run continues
        exactly.

        With ``freeze_bn_stats`` the block stays in eval mode even while the model trains
        (:meth:`train` is overridden): its BatchNorm normalises with the running statistics of
        the earlier training and they do not move (Bag of Tricks' ``EVAL_MODE: True`` does this
        for the whole network, ``lib/config/default.py`` line 20).

        Args:
            names: Point names, each freezing the block that ends there (``"input"`` is
                accepted and freezes nothing), ``"head"``, or ``"backbone"`` (every block before
                the head).
            freeze_bn_stats: Keep these blocks' BatchNorm statistics fixed (eval mode).

        Returns:
            The model.

        Example:
            >>> import torch
            >>> from lttoolbox.models import DigitsCNN
            >>> model = DigitsCNN(num_classes=10).freeze("backbone").train()
            >>> before = model.stem[1].running_mean.clone()
            >>> _ = model(torch.randn(4, 1, 8, 8))
            >>> bool(torch.equal(before, model.stem[1].running_mean))  # re-estimated
            False
            >>> model = DigitsCNN(num_classes=10).freeze("backbone", freeze_bn_stats=True).train()
            >>> before = model.stem[1].running_mean.clone()
            >>> _ = model(torch.randn(4, 1, 8, 8))
            >>> bool(torch.equal(before, model.stem[1].running_mean))  # fixed
            True
        """
        for name in self._resolve(names):
            module = self._block(name)
            module.requires_grad_(False)
            self._frozen.add(name)
            if freeze_bn_stats:
                module.eval()
                self._fixed_stats.add(name)
            else:
                self._fixed_stats.discard(name)
                module.train(self.training)
        return self

    def unfreeze(self, names: str | Iterable[str] | None = None) -> "LTModel":
        """Undo :meth:`freeze` for ``names`` (all frozen blocks when ``None``)."""
        for name in (list(self._frozen) if names is None else self._resolve(names)):
            module = self._block(name)
            module.requires_grad_(True)
            module.train(self.training)
            self._frozen.discard(name)
            self._fixed_stats.discard(name)
        return self

    def train(self, mode: bool = True) -> "LTModel":
        super().train(mode)
        if mode:
            for name in self._fixed_stats:
                self._block(name).eval()
        return self

    # ------------------------------------------------------------------------------------- head
    def reset_head(self, cfg: str | dict | None = None, key: str = "model.head") -> nn.Module:
        """Replace the head by a freshly initialised one (for classifier re-training), or by one
        that takes the current head over (a head whose ``follows`` names it, such as ``tau_norm``).

        Args:
            cfg: Head config; ``None`` re-creates the current kind of head.
            key: Recipe key used in error messages.

        Returns:
            The new head, on the old head's device and dtype; it stays frozen if the head was.
        """
        cfg = head_config(self.head_cfg if cfg is None else cfg, key)
        new = self._new_head(cfg, key)
        old = next(iter([*self.head.parameters(), *self.head.buffers()]), None)
        if old is not None:
            new = new.to(device=old.device, dtype=old.dtype)
        if new.follows:  # a head that re-balances the trained one (tau_norm, lws)
            new.adopt(self.head)
        self.head, self.head_cfg = new, cfg
        if "head" in self._frozen:
            self.freeze("head", freeze_bn_stats="head" in self._fixed_stats)
        else:
            new.train(self.training)
        return new

    def _new_head(self, cfg: dict, key: str) -> nn.Module:
        """A freshly built head of config ``cfg`` for :meth:`reset_head` (a model whose head is
        not one module on ``feature_dim`` features builds its own)."""
        return build_head(cfg, self.feature_dim, self.num_classes, key=key)
