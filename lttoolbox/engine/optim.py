"""Optimizers and the per-epoch learning-rate schedule of the CIFAR-LT protocol.

The learning rate is set at the start of each epoch, as in the LDAM-DRW reference training script
(Cao et al., NeurIPS 2019): a linear warm-up ``lr * (epoch + 1) / warmup_epochs`` over the first
epochs, then a multi-step decay (``lr * gamma^k`` after the k-th milestone) or a cosine decay.
One deliberate difference: milestones count 0-based epochs with ``>=``, so ``milestones: [160]``
lowers the rate from the 161st epoch on; the reference script's ``epoch > 160`` does so one epoch
later.

Example:
    >>> lr_at(0, base_lr=0.1, name="multistep", warmup_epochs=5, milestones=[160, 180], gamma=0.01,
    ...       total_epochs=200)
    0.02
"""
from __future__ import annotations

import bisect
import math
from typing import Iterable

import torch

from ..errors import ConfigError


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: dict) -> torch.optim.Optimizer:
    """Build the optimizer named in the recipe's ``optim`` section."""
    cfg = dict(cfg)
    name = cfg.pop("name")
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters (is every stage frozen?)", key="train.freeze")
    if name == "sgd":
        allowed = {"lr", "momentum", "weight_decay", "nesterov"}
        factory = torch.optim.SGD
    elif name in ("adam", "adamw"):
        allowed = {"lr", "weight_decay", "betas", "eps"}
        factory = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    else:
        raise ConfigError(f"unknown optimizer '{name}'", key="optim.name")
    extra = set(cfg) - allowed
    if extra:
        raise ConfigError(f"optimizer '{name}' has no parameter '{sorted(extra)[0]}'. "
                          f"Accepted: {', '.join(sorted(allowed))}.",
                          key=f"optim.{sorted(extra)[0]}")
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])
    return factory(params, **cfg)


def lr_at(epoch: int, base_lr: float, name: str = "multistep", warmup_epochs: int = 0,
          milestones: Iterable[int] = (), gamma: float = 0.1, total_epochs: int = 1,
          min_lr: float = 0.0) -> float:
    """Learning rate for a 0-based ``epoch``."""
    if epoch < warmup_epochs:
        return base_lr * (epoch + 1) / warmup_epochs
    if name == "multistep":
        return base_lr * gamma ** bisect.bisect_right(sorted(milestones), epoch)
    if name == "cosine":
        span = max(1, total_epochs - warmup_epochs)
        progress = min(1.0, (epoch - warmup_epochs) / span)
        return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    if name == "constant":
        return base_lr
    raise ConfigError(f"unknown schedule '{name}'", key="schedule.name")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
