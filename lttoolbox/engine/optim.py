"""Optimizers and the learning-rate schedule of the CIFAR-LT protocol.

The rate follows the LDAM-DRW reference training script (Cao et al., NeurIPS 2019,
``adjust_learning_rate`` in ``cifar_train.py``): a linear warm-up ``lr * (epoch + 1) /
warmup_epochs`` over the first epochs, then a multi-step decay (``lr * gamma^k`` from the k-th
milestone on, milestones counting 0-based epochs) or a cosine decay. The 200-epoch protocol gives
exactly the script's sequence: 0.02, 0.04, ..., 0.1 for epochs 0-4, 0.1 until epoch 159, 0.001
from 160 and 1e-5 from 180.

The cosine decay is the one of the decoupling code (Kang et al., ICLR 2020;
facebookresearch/classifier-balancing at f162ade, ``run_networks.py``): ``CosineAnnealingLR``
with ``T_max`` the phase's epochs (lines 159-160), stepped at the *start* of every epoch, before
its batches (lines 247-255). Epoch ``e`` (0-based) thus trains at the cosine of ``(e + 1) / T``:
the first epoch already below ``lr`` and the last one at ``min_lr`` (with ``min_lr: 0``, as every
shipped cosine recipe, its weights do not move; batch-norm statistics still update). Stepping at
the end of each epoch, as torch's documentation now shows, would train epoch ``e`` at ``e / T``,
one epoch later in the decay. After a warm-up of ``W`` epochs the decay spans the remaining
``T - W``: epoch ``e`` trains at ``(e + 1 - W) / (T - W)``, the warm-up's rule (counted at the end
of the epoch, ``(e + 1) / W``) carried on.

``warmup_unit: step`` warms up per optimizer step instead, linearly over ``warmup_epochs``
(which may then be fractional) worth of steps. A schedule that was shortened keeps its warm-up
this way: 5 of 200 epochs is 0.75 of 30, which a per-epoch warm-up could only round to one epoch
at the full rate from the first step (see :func:`lttoolbox.recipe.scale_epochs`). Either way the
warm-up factor multiplies the decayed rate (:func:`lr_at`), so a milestone that a shortened
schedule moved inside the warm-up still applies.

Example:
    >>> lr_at(0, base_lr=0.1, name="multistep", warmup_epochs=5, milestones=[160, 180], gamma=0.01,
    ...       total_epochs=200)
    0.02
    >>> round(lr_at(0, 0.1, warmup_epochs=0.75, warmup_unit="step", step=9, steps=100), 6)
    0.013333
"""
from __future__ import annotations

import bisect
import math
from typing import Iterable

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import OPTIMIZERS, SCHEDULES, accepted_parameters


NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


@OPTIMIZERS.register("sgd")
def sgd(params, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 2e-4,
        nesterov: bool = False, fused: bool | None = None) -> torch.optim.Optimizer:
    """SGD with momentum; the defaults are the CIFAR-LT protocol of the LDAM-DRW and Bag of
    Tricks code.

    Example:
        >>> import torch
        >>> from lttoolbox.engine.optim import sgd
        >>> w = torch.tensor([1.0], requires_grad=True)
        >>> opt = sgd([w], lr=0.1)
        >>> (w ** 2).sum().backward()  # gradient 2 w = 2, plus weight decay 2e-4 w
        >>> opt.step()
        >>> round(w.item(), 6)  # 1 - 0.1 * (2 + 2e-4)
        0.79998
    """
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov, fused=fused)


@OPTIMIZERS.register("adam")
def adam(params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0, fused: bool | None = None) -> torch.optim.Optimizer:
    """Adam (Kingma and Ba, ICLR 2015) with torch's own defaults.

    Example:
        >>> import torch
        >>> from lttoolbox.engine.optim import adam
        >>> w = torch.tensor([1.0], requires_grad=True)
        >>> opt = adam([w], lr=0.1)
        >>> (w ** 2).sum().backward()
        >>> opt.step()
        >>> round(w.item(), 6)  # the bias-corrected first step is lr times the gradient's sign
        0.9
    """
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps,
                            weight_decay=weight_decay, fused=fused)


@OPTIMIZERS.register("adamw")
def adamw(params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 1e-2, fused: bool | None = None) -> torch.optim.Optimizer:
    """AdamW (Loshchilov and Hutter, ICLR 2019): decoupled weight decay; torch's defaults.

    Example:
        >>> import torch
        >>> from lttoolbox.engine.optim import adamw
        >>> w = torch.tensor([1.0], requires_grad=True)
        >>> opt = adamw([w], lr=0.1)
        >>> (w ** 2).sum().backward()
        >>> opt.step()
        >>> round(w.item(), 6)  # w (1 - lr * 0.01), then Adam's step of lr: 0.999 - 0.1
        0.899
    """
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps,
                             weight_decay=weight_decay, fused=fused)


def build_optimizer(model: nn.Module, cfg: dict,
                    extra: Iterable[tuple[str, nn.Module]] = ()) -> torch.optim.Optimizer:
    """Build the optimizer named in the recipe's ``optim`` section.

    Args:
        model: The network; its trainable parameters are optimised.
        cfg: The ``optim`` section: ``name``, the optimizer's own keys and ``no_decay``.
        extra: ``(name, module)`` pairs of components with trainable parameters of their own
            (a learned loss or generator), optimised alongside the model.

    ``no_decay`` lists parameters that get no weight decay: ``bias`` (every bias), ``norm``
    (the weights and biases of normalisation layers) or a model parameter or module name such as
    ``head.bias``. The class-balanced loss code (Cui et al., CVPR 2019) decays every variable
    but the last layer's bias for its sigmoid losses, whose initial value encodes the class prior;
    the sigmoid-focal and CB-focal recipes set ``no_decay: [head.bias]`` for that reason.
    """
    cfg = dict(cfg)
    no_decay = cfg.pop("no_decay", None) or []
    OPTIMIZERS.get(cfg["name"], key="optim")  # an unknown name first, with the known ones
    modules = [("", model), *[(f"{prefix}.", m) for prefix, m in extra]]
    exempt = no_decay_names(modules, no_decay)
    decay, plain = [], []
    for prefix, module in modules:
        for pname, param in module.named_parameters():
            if param.requires_grad:
                (plain if prefix + pname in exempt else decay).append(param)
    if not decay and not plain:
        raise ConfigError("no trainable parameters (is everything frozen?)", key="train.freeze")
    groups = [{"params": decay}] if decay else []
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0})
    # One fused kernel for the whole update instead of foreach launches per tensor group (the
    # CUDA fast path; elsewhere torch's default, foreach where supported).
    fused = True if all(p.is_cuda for p in decay + plain) else None
    return OPTIMIZERS.build(cfg, key="optim", params=groups, fused=fused, model=model)


def no_decay_names(modules: list[tuple[str, nn.Module]], spec: list[str],
                   key: str = "optim.no_decay") -> set[str]:
    """The full names of the parameters that ``optim.no_decay`` exempts from weight decay."""
    if not isinstance(spec, list) or not all(isinstance(s, str) for s in spec):
        raise ConfigError(f"must be a list of 'bias', 'norm' or parameter names, got {spec!r}",
                          key=key)
    names: set[str] = set()
    for entry in spec:
        matched = set()
        for prefix, root in modules:
            for mname, module in root.named_modules():
                for pname, _ in module.named_parameters(recurse=False):
                    full = f"{prefix}{mname + '.' if mname else ''}{pname}"
                    if (entry == "bias" and pname == "bias"
                            or entry == "norm" and isinstance(module, NORM_LAYERS)
                            or full == entry or full.startswith(entry + ".")):
                        matched.add(full)
        if not matched:
            raise ConfigError(f"'{entry}' matches no parameter; use 'bias', 'norm' or a "
                              f"parameter name such as 'head.bias'", key=key)
        names |= matched
    return names


WARMUP_UNITS = ("epoch", "step")


@SCHEDULES.register("multistep")
def multistep(epoch: int, base_lr: float, total_epochs: int, warmup_epochs: float,
              milestones: Iterable[int] = (), gamma: float = 0.1) -> float:
    """``base_lr * gamma ** k`` from the k-th milestone on (0-based epochs): the LDAM-DRW
    script's step decay.

    Example:
        >>> from lttoolbox.engine.optim import multistep
        >>> [multistep(e, 0.1, 200, 5, milestones=[160, 180], gamma=0.01)
        ...  for e in (0, 159, 160, 180)]
        [0.1, 0.1, 0.001, 1e-05]
    """
    return base_lr * gamma ** bisect.bisect_right(sorted(milestones), epoch)


@SCHEDULES.register("cosine")
def cosine(epoch: int, base_lr: float, total_epochs: int, warmup_epochs: float,
           min_lr: float = 0.0) -> float:
    """Cosine decay to ``min_lr`` over the epochs after the warm-up, counted at the end of the
    epoch (the decoupling code's ``CosineAnnealingLR`` stepped before each epoch).

    Example:
        >>> from lttoolbox.engine.optim import cosine
        >>> [round(cosine(e, 0.1, 10, 0), 6) for e in (0, 4, 9)]  # the cosine of (e + 1) / 10
        [0.097553, 0.05, 0.0]
        >>> [round(cosine(e, 0.1, 10, 2, min_lr=0.01), 6) for e in (1, 5, 9)]  # 2 warm-up epochs
        [0.1, 0.055, 0.01]
    """
    span = max(1, total_epochs - warmup_epochs)
    progress = min(1.0, max(0.0, (epoch + 1 - warmup_epochs) / span))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


@SCHEDULES.register("constant")
def constant(epoch: int, base_lr: float, total_epochs: int, warmup_epochs: float) -> float:
    """``base_lr`` throughout (after the warm-up).

    Example:
        >>> from lttoolbox.engine.optim import constant, lr_at
        >>> constant(7, 0.1, 10, 0), lr_at(0, 0.1, name="constant", warmup_epochs=4)
        (0.1, 0.025)
    """
    return base_lr


def lr_at(epoch: int, base_lr: float, name: str = "multistep", warmup_epochs: float = 0,
          milestones: Iterable[int] = (), gamma: float = 0.1, total_epochs: int = 1,
          min_lr: float = 0.0, warmup_unit: str = "epoch", step: int = 0,
          steps: int = 1, warmup_start: float = 0.0, **params) -> float:
    """Learning rate for a 0-based ``epoch`` (and, when warming up per step, its ``step``).

    The rate is the decayed rate times the warm-up factor::

        lr(epoch, step) = decayed(epoch) * warm(epoch, step)

    ``decayed`` is ``base_lr * gamma ** k`` for ``multistep`` (``k`` milestones at or before
    ``epoch``), ``min_lr + (base_lr - min_lr) * (1 + cos(pi * p)) / 2`` for ``cosine``, with
    ``p = (epoch + 1 - warmup_epochs) / (total_epochs - warmup_epochs)`` clipped to [0, 1] (the
    decoupling code's schedule, see the module docstring), and ``base_lr`` for ``constant``.
    ``warm`` is 1
    from epoch ``warmup_epochs`` on; before it, ``(epoch + 1) / warmup_epochs`` per epoch, or
    ``min(1, (epoch + (step + 1) / steps) / warmup_epochs)`` per step; with ``warmup_start`` ``s``
    the factor is ``s + (1 - s) * that`` (a warm-up from ``s`` times the rate, as mmcv's linear
    warm-up with ``warmup_ratio = s``, which counts from 0: its first step is at ``s``, here a
    step later in the ramp). The two overlap only in a
    shortened schedule (the LDAM-DRW script's warm-up ends long before its first milestone): a
    later phase squeezed by ``--epochs`` to milestones ``[0, 0]`` then warms up to its decayed
    rate, ``base_lr * gamma ** 2``, instead of to ``base_lr`` as the script's ``if``/``elif``
    would (it never meets that case).

    Args:
        epoch: The 0-based epoch.
        base_lr: The rate after warm-up and before any decay.
        name: ``multistep``, ``cosine`` or ``constant``.
        warmup_epochs: Length of the linear warm-up, in epochs (fractional with ``step``).
        milestones: 0-based epochs from which the rate is multiplied by another ``gamma``.
        gamma: Multi-step decay factor.
        total_epochs: Length of the run (for the cosine decay).
        min_lr: The cosine decay's final rate.
        warmup_start: The warm-up's starting fraction of the rate, in ``[0, 1)``.
        warmup_unit: ``epoch`` (one rate per epoch, as the LDAM-DRW script) or ``step``.
        step: The 0-based step within the epoch (``warmup_unit: step`` only).
        steps: Steps in this epoch (``warmup_unit: step`` only).
        **params: Parameters of another registered schedule (``SCHEDULES``).

    Example:
        >>> # A squeezed phase: a quarter of the way, half of its warm-up to 0.1 * 0.1 ** 2
        >>> round(lr_at(0, 0.1, milestones=[0, 0], gamma=0.1, warmup_epochs=0.5,
        ...             warmup_unit="step", step=24, steps=100), 9)
        0.0005
    """
    if warmup_unit not in WARMUP_UNITS:
        raise ConfigError(f"unknown warm-up unit '{warmup_unit}'; known: "
                          f"{', '.join(WARMUP_UNITS)}", key="schedule.warmup_unit")
    decay = SCHEDULES.get(name, key="schedule")
    accepted, _ = accepted_parameters(decay)
    offered = {"epoch": epoch, "base_lr": base_lr, "total_epochs": total_epochs,
               "warmup_epochs": warmup_epochs, "milestones": milestones, "gamma": gamma,
               "min_lr": min_lr, **params}
    decayed = decay(**{k: v for k, v in offered.items() if k in accepted})
    if epoch >= warmup_epochs:
        return decayed
    if warmup_unit == "step":
        # Counted at the end of the step, as the per-epoch rule counts at the end of the
        # epoch: the last warm-up step reaches the (decayed) rate.
        ramp = min(1.0, (epoch + (step + 1) / max(1, steps)) / warmup_epochs)
    elif not warmup_start:
        return decayed * (epoch + 1) / warmup_epochs  # this order of operations: the goldens'
    else:
        ramp = (epoch + 1) / warmup_epochs
    if warmup_start:
        ramp = warmup_start + (1.0 - warmup_start) * ramp
    return decayed * ramp


def warms_up_per_step(schedule: dict, epoch: int) -> bool:
    """Whether ``epoch`` needs a rate per step (a per-step warm-up that has not ended)."""
    return schedule.get("warmup_unit") == "step" and epoch < schedule.get("warmup_epochs", 0)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
