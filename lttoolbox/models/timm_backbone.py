"""Any timm architecture (Wightman, ``pytorch-image-models``) as a registered model, with the
named-point contract and the recipe's heads.

``model: {name: timm, arch: <any timm name>}`` builds ``timm.create_model(arch,
pretrained=False, num_classes=0, in_chans=<data>, img_size=<data>)``: timm's own network and
forward, without its classifier (``num_classes=0``); the head is the recipe's (``linear``,
``cosine``, ``tau_norm``, ...). timm is an optional extra (``pip install -e ".[timm]"``),
imported only when such a model is built.

Points. timm lists the stages of a network in ``feature_info`` (the module that ends each
stage); a point is a stage's output, caught by a forward hook on that module, so the network
runs timm's own ``forward_features`` and ``forward_head`` and the toolbox acts between stages
without re-implementing any architecture:

* convolutional networks: ``input, stage1, ..., stageN, features`` with one point per
  ``feature_info`` entry (``resnet10t``: the stem's activation at stride 2, then ``layer1`` to
  ``layer4``), each a ``(B, C, H, W)`` map;
* token models (vision transformers): ``input, patch_embed, stage1, ..., stageG, features``
  where ``patch_embed`` is the patch embedding's ``(B, N, D)`` tokens and each stage a group of
  blocks (``stages`` groups, 4 by default; ``(B, prefix + N, D)`` tokens);
* ``features``: timm's pooled pre-logits, ``forward_head(forward_features(x),
  pre_logits=True)``: the vector timm's own classifier reads.

Manifold mixup and the feature generators act at any point whose shape they take (a generator
at ``features`` everywhere); freezing a point freezes the network's modules from the previous
point to it (``backbone`` freezes all of timm's network), so the decoupling phases (cRT, LWS,
tau-norm) run as on the toolbox's own models.

Class activation maps (CAM-based re-sampling) need a spatial map that ``features`` is the
average of, channel for channel (Zhou et al., CVPR 2016, Sec. 2). It is measured when the model
is built: the last stage is the model's feature map (:attr:`TimmModel.feature_maps`) only if
timm's pooled features equal its spatial mean (a ResNet's). A vision transformer's points carry
tokens, and some CNNs normalise or project after pooling (ConvNeXt, EfficientNet's head
convolution): they have none, and ``cam_resample`` is refused before training starts.

Weights come from a local file only (:func:`load_timm_weights`); nothing is downloaded.

Example:
    >>> import torch
    >>> from lttoolbox.models import TimmModel
    >>> model = TimmModel("resnet10t", num_classes=5, in_channels=1, image_size=32)
    >>> model.point_names
    ('input', 'stage1', 'stage2', 'stage3', 'stage4', 'stage5', 'features')
    >>> model(torch.randn(2, 1, 32, 32)).shape, model.feature_maps
    (torch.Size([2, 5]), ('stage5',))
"""
from __future__ import annotations

import difflib
import os
import sys
from typing import Any

import torch
from torch import nn

from ..batch import Batch
from ..errors import ConfigError
from ..registry import MODELS
from .base import Hook, LTModel, check_image_size
from .heads import build_head
from .resnet_imagenet import WEIGHTS_KEY, check_weights_fit, first_line, weights_file

EXTRA = 'pip install -e ".[timm]"'
DOCTEST_REQUIRES = ("timm",)  # the examples below build timm networks
# timm.create_model's arguments that the toolbox sets itself, and where each comes from.
_SET_BY_TOOLBOX = {
    "pretrained": "nothing is downloaded: give a local file as model.weights",
    "checkpoint_path": "give the file as model.weights",
    "pretrained_cfg": "nothing is downloaded: give a local file as model.weights",
    "pretrained_cfg_overlay": "nothing is downloaded: give a local file as model.weights",
    "num_classes": "the head is the recipe's model.head, sized by the data set",
    "in_chans": "it is model.in_channels (the data set's channels)",
    "img_size": "it is the data set's image size",
    "features_only": "the model's points are the network's stages already",
}


def import_timm():
    """timm, or one line naming the extra to install."""
    try:
        import timm
    except ImportError:
        raise ConfigError(f"the timm backbone needs the [timm] extra: {EXTRA}",
                          key="model.name") from None
    return timm


class _Block(nn.Module):
    """A view of the network's modules (and loose parameters) that end at one point, to freeze
    and to switch between train and eval together. Made on demand and never registered in the
    model, so the state dict holds each tensor once, under ``net.``."""

    def __init__(self, modules: list[nn.Module], params: list[nn.Parameter]):
        super().__init__()
        self.units = nn.ModuleList(modules)
        self.loose = nn.ParameterList(params)


@MODELS.register("timm")
class TimmModel(LTModel):
    """A timm network (any ``timm.list_models()`` name) with named points and a recipe head.

    Recipe::

        model:
          name: timm
          arch: resnet18                      # any timm name
          weights: /data/weights/resnet18.safetensors   # optional, local file
          kwargs: {drop_path_rate: 0.1}       # more timm.create_model arguments

    ``in_channels`` and the image size come from the data set (timm's ``in_chans`` and, for the
    models that take one, ``img_size``): a ViT is built for the data's images (e.g.
    ``vit_tiny_patch16_224`` on 32-pixel CIFAR with ``kwargs: {patch_size: 4}``).

    Args:
        arch: timm architecture name.
        num_classes: Number of classes (context).
        in_channels: Image channels (context).
        image_size: Image side or ``(h, w)`` (context).
        head: Head config, ``"linear"`` (default), ``"cosine"`` or a dict.
        weights: Local weights file for the network, or ``None`` (timm's random init); see
            :func:`load_timm_weights`.
        stages: How many ``stageK`` points a token model's blocks are grouped into (evenly; 4
            by default), or for a CNN how many of its ``feature_info`` stages become points (the
            last ones; all by default).
        kwargs: More ``timm.create_model`` arguments (``drop_path_rate``, ``patch_size``,
            ``depth``, ...); those the toolbox sets (``pretrained``, ``num_classes``,
            ``in_chans``, ``img_size``, ...) are refused.

    Attributes:
        arch: The architecture's name.
        net: timm's network, without its classifier.
        weights_path: The ``weights`` file the network was loaded from, or ``None``.
        feature_maps: The points whose map ``features`` averages (CAM's input); empty for
            token models and CNNs that transform after pooling.

    Example:
        >>> import torch
        >>> vit = TimmModel("vit_tiny_patch16_224", num_classes=3, in_channels=1,
        ...                 image_size=8, kwargs={"patch_size": 4, "depth": 2})
        >>> vit.point_names
        ('input', 'patch_embed', 'stage1', 'stage2', 'features')
        >>> shapes = vit.point_shapes(torch.randn(2, 1, 8, 8))
        >>> shapes["patch_embed"], shapes["stage2"], shapes["features"], vit.feature_maps
        ((4, 192), (5, 192), (192,), ())
    """

    def __init__(self, arch: str, num_classes: int = 1000, in_channels: int = 3,
                 image_size: int = 224, head: str | dict = "linear",
                 weights: str | os.PathLike | None = None, stages: int | None = None,
                 kwargs: dict | None = None):
        super().__init__(num_classes, in_channels, head)
        size = check_image_size(image_size, 1)
        timm = import_timm()
        self.arch = check_arch(timm, arch)
        self.net = _create(timm, self.arch, self.in_channels, size, kwargs)
        shapes, pooled_is_mean = _measure(self.net, self.arch, self.in_channels, size)
        self._stage_paths = _choose_points(self.net, self.arch, shapes, stages)
        self._units = _partition(self.net, self._stage_paths)
        names = tuple(self._stage_paths) + ("features",)
        self._body = names
        self.point_names = ("input",) + names
        last = names[-2] if len(names) > 1 else None
        maps = last is not None and last.startswith("stage") and pooled_is_mean
        self._maps: tuple[str, ...] = (last,) if maps else ()
        self.feature_dim = shapes["features"][0]
        self.head = build_head(self.head_cfg, self.feature_dim, self.num_classes)
        self.weights_path: str | None = None
        if weights is not None:
            load_timm_weights(self, weights)
            self.weights_path = os.fspath(weights)

    # ------------------------------------------------------------------------------- forward
    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.head(self._pooled(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self._pooled(x)

    def forward_hooked(self, batch: Batch, hooks: dict[str, Hook]) -> tuple[torch.Tensor, Batch]:
        """As :meth:`LTModel.forward_hooked`; a stage point's hook runs as a forward hook of the
        module that ends the stage (registered for this call only), so its output replaces the
        stage's output inside timm's own forward."""
        if not hooks:
            return self.forward(batch.x), batch
        h, batch = self._enter_hooked(batch, hooks)
        current = {"batch": batch}

        def at(point):
            def hook(module, args, out):
                new, current["batch"] = self._call_hook(hooks, point, out, current["batch"])
                return new
            return hook

        handles = [self.net.get_submodule(path).register_forward_hook(at(point))
                   for point, path in self._stage_paths.items() if point in hooks]
        try:
            h = self._pooled(h)
        finally:
            for handle in handles:
                handle.remove()
        batch = current["batch"]
        if "features" in hooks:
            h, batch = self._call_hook(hooks, "features", h, batch)
        return self.head(h), batch

    @property
    def feature_maps(self) -> tuple[str, ...]:
        """The last stage if timm's pooled features are its spatial mean (measured when the
        model is built), else none."""
        return self._maps

    def _block(self, name: str) -> nn.Module:
        if name == "head":
            return self.head
        paths, loose = self._units[name]
        return _Block([self.net.get_submodule(p) for p in paths],
                      [getattr(self.net, p) for p in loose])

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, points={self.point_names[1:-1]}"


def check_arch(timm, arch: Any) -> str:
    """``arch`` if timm knows it, else one line with the closest names."""
    if not isinstance(arch, str) or not arch:
        raise ConfigError(f"must be a timm architecture name (timm.list_models()), got {arch!r}",
                          key="model.arch")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"timm {timm.__version__} has no architecture {arch!r} "
                          f"(timm.list_models('*{arch}*') lists names){hint}", key="model.arch")
    return arch


def _create(timm, arch: str, in_channels: int, size: tuple[int, int],
            kwargs: dict | None) -> nn.Module:
    """timm's network for the data, without its classifier, randomly initialised."""
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(f"must be a mapping of timm.create_model arguments, got {kwargs!r}",
                          key="model.kwargs")
    for name, why in _SET_BY_TOOLBOX.items():
        if name in kwargs:
            raise ConfigError(f"is set by the toolbox: {why}", key=f"model.kwargs.{name}")
    args = dict(kwargs, pretrained=False, num_classes=0, in_chans=in_channels)
    image = size[0] if size[0] == size[1] else size
    try:
        try:
            return timm.create_model(arch, img_size=image, **args)
        except TypeError as err:  # a model with no image size (most CNNs): built without one
            if "img_size" not in str(err):
                raise
            return timm.create_model(arch, **args)
    except Exception as err:  # noqa: BLE001 - timm's errors have many types; all are the recipe's
        more = f" and kwargs {kwargs}" if kwargs else ""
        raise ConfigError(f"timm cannot build {arch} for {in_channels}-channel "
                          f"{size[0]}x{size[1]} images{more} ({first_line(err)})",
                          key="model.arch") from None


def _feature_info(net: nn.Module) -> list[dict]:
    info = getattr(net, "feature_info", None) or []
    return [dict(entry) for entry in info]


@torch.no_grad()
def _measure(net: nn.Module, arch: str, in_channels: int,
             size: tuple[int, int]) -> tuple[dict[str, tuple[int, ...]], bool]:
    """One eval-mode forward of a random image (a private generator: the global one does not
    move) through every ``feature_info`` module: each stage's output shape, the pooled
    features' shape, and whether those are the spatial mean of the last stage's map."""
    paths = [entry["module"] for entry in _feature_info(net)]
    if "patch_embed" not in paths and isinstance(getattr(net, "patch_embed", None), nn.Module):
        paths.insert(0, "patch_embed")
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for path in paths:
        module = net.get_submodule(path)
        handles.append(module.register_forward_hook(
            lambda m, a, out, path=path: seen.__setitem__(path, out)))
    x = torch.randn(2, in_channels, *size, generator=torch.Generator().manual_seed(0))
    training = net.training
    net.eval()
    try:
        pooled = net.forward_head(net.forward_features(x), pre_logits=True)
    except Exception as err:  # noqa: BLE001 - as in _create: the recipe's, said in one line
        raise ConfigError(f"timm's {arch} cannot run on {in_channels}-channel "
                          f"{size[0]}x{size[1]} images ({first_line(err)})",
                          key="model.arch") from None
    finally:
        net.train(training)
        for handle in handles:
            handle.remove()
    if pooled.dim() != 2:
        raise ConfigError(f"timm's pre-logits of {arch} have shape "
                          f"{tuple(pooled.shape)}, not (B, D); this architecture cannot take a "
                          f"toolbox head", key="model.arch")
    shapes = {p: tuple(t.shape[1:]) for p, t in seen.items() if isinstance(t, torch.Tensor)}
    shapes["features"] = tuple(pooled.shape[1:])
    stages = [p for p in paths if p != "patch_embed" and p in shapes]
    last = seen.get(stages[-1]) if stages else None
    is_mean = (isinstance(last, torch.Tensor) and last.dim() == 4
               and last.shape[1] == pooled.shape[1]
               and torch.allclose(last.mean(dim=(2, 3)), pooled, rtol=1e-4, atol=1e-5))
    return shapes, bool(is_mean)


def _choose_points(net: nn.Module, arch: str, shapes: dict,
                   stages: int | None) -> dict[str, str]:
    """Point name -> the path of the module whose output it is, in network order."""
    paths = [e["module"] for e in _feature_info(net) if e["module"] in shapes]
    tokens = any(len(shapes[p]) != 3 for p in paths)  # anything but (C, H, W) maps
    if stages is not None and (isinstance(stages, bool) or not isinstance(stages, int)
                               or not 1 <= stages <= len(paths)):
        raise ConfigError(f"must be an integer from 1 to {len(paths)} (the stages timm lists "
                          f"for {arch}), got {stages!r}", key="model.stages")
    if tokens:  # blocks of equal shape: grouped evenly, each group's point at its last block
        count = min(4, len(paths)) if stages is None else stages
        chosen = [paths[(k + 1) * len(paths) // count - 1] for k in range(count)]
    else:  # a CNN's stages: the last `stages` of them (all by default)
        chosen = paths[len(paths) - (stages or len(paths)):]
    points = {}
    if tokens and "patch_embed" in shapes:
        points["patch_embed"] = "patch_embed"
    points.update({f"stage{k + 1}": path for k, path in enumerate(chosen)})
    return points


def _partition(net: nn.Module, stage_paths: dict[str, str]) -> dict[str, tuple[list, list]]:
    """For each point (and ``features``), the network's modules that run from the previous
    point to it, in registration order (the order timm's ``FeatureListNet`` also relies on),
    descending into a container only where a stage ends inside it. The network's own
    parameters (a ViT's class token and position embedding) go with the first point, as timm's
    ``group_matcher`` puts them in its stem group."""
    targets = {path: point for point, path in stage_paths.items()}
    units: list[str] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = prefix + name
            if path not in targets and any(t.startswith(path + ".") for t in targets):
                walk(child, path + ".")
            else:
                units.append(path)

    walk(net, "")
    blocks: dict[str, tuple[list, list]] = {}
    pending: list[str] = []
    for path in units:
        pending.append(path)
        if path in targets:
            blocks[targets[path]] = (pending, [])
            pending = []
    missing = [p for p in stage_paths if p not in blocks]
    if missing:  # timm's feature_info names a module the walk did not reach: a bug to report
        raise AssertionError(f"no module for points {missing} in {type(net).__name__}")
    blocks["features"] = (pending, [])
    first = next(iter(blocks))
    blocks[first][1].extend(name for name, _ in net.named_parameters(recurse=False))
    return blocks


def _classifier_prefixes(net: nn.Module) -> tuple[str, ...]:
    names = (getattr(net, "pretrained_cfg", None) or {}).get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def load_timm_weights(model: TimmModel, path: str | os.PathLike) -> list[str]:
    """Load a local timm-format state dict into ``model``'s network (never a download).

    The file is read by timm's own ``timm.models.load_state_dict`` (``torch.load`` with
    ``weights_only=True``, or safetensors for a ``.safetensors`` file), with timm's rules: a
    training checkpoint's ``state_dict_ema``/``model_ema`` first, then ``state_dict`` or
    ``model``; a ``module.`` prefix (DataParallel/DDP) is dropped. It may hold:

    * timm's names (``timm.create_model(arch).state_dict()``, ``model.safetensors`` of a
      pretrained timm model): timm's classifier (``pretrained_cfg["classifier"]``: ``fc.*``,
      ``head.*``) is not loaded, since the head is the recipe's;
    * this toolbox's names (``net.*`` and ``head.*``: a run's ``model-<phase>.pt`` or
      ``checkpoint.pt``): ``head.*`` is not loaded.

    As timm does for its pretrained weights, the family's ``checkpoint_filter_fn`` runs first
    where the family has one (a ViT's position embedding is resampled to the model's grid), and
    the first convolution of a 3-channel file is adapted to ``in_channels``
    (``timm.models.adapt_input_conv``: summed over RGB for one channel). Every other tensor of
    the network must be in the file with its shape, and the file may hold nothing else.

    Args:
        model: The model to load into (in place).
        path: Local path of the weights file.

    Returns:
        The file's keys that were not loaded (the classifier's).

    Raises:
        ConfigError: (key ``model.weights``, naming the file) the file is missing, unreadable,
            not a state dict, or does not fit the architecture (the counts and first names of
            the missing and unexpected keys, or the first shape mismatch).

    Example:
        >>> import tempfile, torch
        >>> a = TimmModel("resnet10t", num_classes=3, in_channels=1, image_size=16)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     torch.save(a.net.state_dict(), f"{folder}/resnet10t.pth")
        ...     b = TimmModel("resnet10t", num_classes=3, in_channels=1, image_size=16,
        ...                   weights=f"{folder}/resnet10t.pth")
        >>> x = torch.randn(2, 1, 16, 16)
        >>> bool(torch.equal(a.eval().forward_features(x), b.eval().forward_features(x)))
        True
    """
    timm = import_timm()
    file = weights_file(path, "timm")
    try:
        state = timm.models.load_state_dict(str(file), use_ema=True, device="cpu")
    except Exception as err:  # noqa: BLE001 - any failure here is a bad file, not a toolbox bug
        raise ConfigError(f"cannot read weights file {file} ({first_line(err)})",
                          key=WEIGHTS_KEY) from None
    if not isinstance(state, dict) or not state:
        kind = "an empty dict" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise ConfigError(f"weights file {file} holds {kind}, not a state dict (a mapping of "
                          f"parameter names to tensors)", key=WEIGHTS_KEY)
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise ConfigError(f"weights file {file} is not a state dict: entry {name!r} is a "
                              f"{type(value).__name__}, not a tensor", key=WEIGHTS_KEY)
    net, arch = model.net, model.arch
    if all(k.startswith(("net.", "head.")) for k in state):  # this toolbox's own file
        skip: tuple[str, ...] = ("head",)
    else:
        skip = _classifier_prefixes(net)
    skipped = [k for k in state if k.split(".", 1)[0] in skip or
               any(k.startswith(p + ".") for p in skip)]
    state = {(k[4:] if k.startswith("net.") else k): v for k, v in state.items()
             if k not in skipped}
    family_filter = getattr(sys.modules.get(type(net).__module__), "checkpoint_filter_fn", None)
    if callable(family_filter):
        try:
            state = family_filter(state, net)
        except Exception as err:  # noqa: BLE001
            raise ConfigError(f"weights file {file} does not fit {arch}: timm's "
                              f"checkpoint_filter_fn failed ({first_line(err)})",
                              key=WEIGHTS_KEY) from None
    ours = net.state_dict()
    _adapt_first_conv(net, state, ours, model.in_channels)
    missing = [k for k in ours if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in ours]
    check_weights_fit(file, f"timm {arch}", model.in_channels, state, ours, missing, unexpected)
    # strict=False only for num_batches_tracked (absent from old files); all else was checked.
    net.load_state_dict(state, strict=False)
    return skipped


def _adapt_first_conv(net: nn.Module, state: dict, ours: dict, in_channels: int) -> None:
    """timm's ``adapt_input_conv`` on the first convolution(s) where only the input channels
    differ, as timm's ``load_pretrained`` does for ``in_chans != 3``."""
    from timm.models import adapt_input_conv

    names = (getattr(net, "pretrained_cfg", None) or {}).get("first_conv") or ()
    for name in (names,) if isinstance(names, str) else names:
        key = f"{name}.weight"
        theirs, mine = state.get(key), ours.get(key)
        # timm adapts RGB weights only (its pretrained files are RGB); anything else is named
        # by the shape check
        if (isinstance(theirs, torch.Tensor) and mine is not None and theirs.dim() == 4
                and mine.dim() == 4 and theirs.shape[1] == 3 and mine.shape[1] != 3
                and theirs.shape[0] == mine.shape[0] and theirs.shape[2:] == mine.shape[2:]):
            state[key] = adapt_input_conv(in_channels, theirs)
