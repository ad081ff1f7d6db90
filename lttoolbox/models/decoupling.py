"""Classifier heads of decoupled training (Kang et al., "Decoupling Representation and Classifier
for Long-Tailed Recognition", ICLR 2020, Sec. 4): they take over the trained linear classifier of
the previous phase and re-balance it.

* ``tau_norm``: ``logits_c = <w_c / ||w_c||^tau, f>`` (Sec. 4, "tau-normalized classifier"),
  nothing trained; tau 0 is the classifier unchanged (without its bias), tau 1 gives every class
  a unit-norm row. ``tau: auto`` picks tau on the validation split (never on the test set).
* ``lws``: learnable weight scaling, ``logits_c = s_c (<w_c, f> + b_c)``, with ``w`` and ``b``
  frozen and only the per-class scales ``s`` (initialised to 1) trained, with class-balanced
  sampling (Sec. 4, "LWS").

cRT (classifier re-training) needs no head of its own: a phase with ``train: {freeze: [backbone],
reset_head: true}`` and class-balanced sampling (docs/phases.md).

A phase whose head has ``adopt`` takes over the previous phase's head instead of starting from a
fresh initialisation; ``follows`` names the heads it can take over (a cosine head normalises its
rows already, so tau-normalising it would change nothing, and its logits are not ``W f + b``).

Example:
    >>> import torch
    >>> from lttoolbox.models.heads import LinearHead
    >>> old = LinearHead(4, 3)
    >>> head = TauNormHead(4, 3, tau=1.0)
    >>> head.adopt(old)
    >>> [round(float(n), 4) for n in head.normalised_weight().norm(dim=1)]
    [1.0, 1.0, 1.0]
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..api import Head
from ..checks import check_bool
from ..errors import ConfigError
from ..losses.weights import check_number
from .heads import HEADS

TAU_GRID = tuple(round(0.1 * i, 1) for i in range(21))  # 0.0, 0.1, ..., 2.0


def _take_over(head: nn.Module, previous: nn.Module, name: str) -> None:
    weight = getattr(previous, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.shape != head.weight.shape:
        raise ConfigError(f"{name} takes over a linear classifier of shape "
                          f"{tuple(head.weight.shape)}; the previous head is "
                          f"{type(previous).__name__}")
    with torch.no_grad():
        head.weight.copy_(weight.detach())
        bias = getattr(previous, "bias", None)
        head.bias.copy_(bias.detach() if isinstance(bias, torch.Tensor) else 0.0)


@HEADS.register("tau_norm")
class TauNormHead(nn.Module, Head):
    """tau-normalised classifier (Kang et al., ICLR 2020, Sec. 4).

    Args:
        in_features, num_classes: From the model.
        tau: The normalisation power, ``>= 0``, or ``"auto"``: chosen from ``grid`` by the
            validation split's top-1 (the data set's ``val_per_class``).
        grid: The values ``auto`` tries (default 0.0, 0.1, ..., 2.0); only with ``tau: auto``.
        keep_bias: Keep the previous classifier's bias. The paper drops it; Bag of Tricks' code
            keeps it (it normalises ``classifier.weight`` only).

    Recipe (a phase after any first phase with a linear head)::

        phases:
          - name: joint
          - name: tau_norm
            model: {head: {name: tau_norm, tau: auto}}
            train: {epochs: 0}

    Example:
        >>> import torch
        >>> from lttoolbox.models.heads import LinearHead
        >>> from lttoolbox.models.decoupling import TauNormHead
        >>> old = LinearHead(2, 2)  # the first phase's classifier: rows of norm 5 and 1
        >>> with torch.no_grad():
        ...     _ = old.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        ...     _ = old.bias.copy_(torch.tensor([0.5, 0.5]))
        >>> f = torch.ones(1, 2)
        >>> old(f).tolist()
        [[7.5, 1.5]]
        >>> head = TauNormHead(2, 2, tau=1.0)
        >>> head.adopt(old)  # the rows are taken over; the bias is dropped
        >>> [round(v, 4) for v in head(f)[0].tolist()], tuple(head(f).shape)  # 7 / 5, 1 / 1
        ([1.4, 1.0], (1, 2))
        >>> head = TauNormHead(2, 2, tau=0.0)
        >>> head.adopt(old)
        >>> head(f).tolist(), list(head.parameters())  # tau 0: the rows unchanged; nothing trains
        ([[7.0, 1.0]], [])
    """

    follows = ("linear", "tau_norm", "lws")

    def __init__(self, in_features: int, num_classes: int, tau: float | str = 1.0,
                 grid: list[float] | None = None, keep_bias: bool = False):
        super().__init__()
        if tau == "auto":
            self.auto = True
            tau = 1.0
        else:
            self.auto = False
            tau = check_number("tau", tau, 0.0)
            if grid is not None:  # it would be silently unused
                raise ConfigError(f"is what tau: auto chooses from; with tau {tau:g} it is "
                                  f"unused: remove it, or set tau: auto", key="grid")
        if grid is not None and (not isinstance(grid, (list, tuple)) or not grid):
            raise ConfigError(f"must be a non-empty list of tau values >= 0 (tau: auto tries "
                              f"each), got {grid!r}", key="grid")
        self.grid = tuple(float(check_number("grid", g, 0.0))
                          for g in (TAU_GRID if grid is None else grid))
        check_bool("keep_bias", keep_bias)
        self.keep_bias = keep_bias
        self.register_buffer("weight", torch.zeros(num_classes, in_features))
        self.register_buffer("bias", torch.zeros(num_classes))
        self.register_buffer("tau", torch.tensor(float(tau)))

    @property
    def needs_validation(self) -> bool:
        """``tau: auto`` chooses on the validation split, which the data set must provide."""
        return self.auto

    def adopt(self, previous: nn.Module) -> None:
        """Take over the previous phase's linear classifier."""
        _take_over(self, previous, "tau_norm")

    def normalised_weight(self) -> torch.Tensor:
        norms = self.weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return self.weight / norms.pow(self.tau)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.normalised_weight(), self.bias if self.keep_bias else None)

    def after_phase(self, events) -> None:
        """With ``tau: auto``: choose tau on the validation split (:meth:`select`) and record
        the choice in results.json's ``selection``."""
        for key, value in self.select(lambda: events.evaluate("val")["top1"]).items():
            events.record(key, value)

    def select(self, score: Callable[[], float]) -> dict:
        """With ``tau: auto``: try every tau of the grid, keep the one with the best validation
        score (the first on ties); returns the record for ``results.json``."""
        if not self.auto:
            return {}
        tried = []
        for tau in self.grid:
            self.tau.fill_(tau)
            tried.append((tau, float(score())))
        best = max(tried, key=lambda t: t[1])[0]
        self.tau.fill_(best)
        return {"tau_norm": {"tau": best, "chosen_on": "validation split (top-1)",
                             "grid": [{"tau": t, "val_top1": s} for t, s in tried]}}

    def extra_repr(self) -> str:
        tau = "auto" if self.auto else f"{float(self.tau):g}"
        return f"tau={tau}, keep_bias={self.keep_bias}"


@HEADS.register("lws")
class LWSHead(nn.Module, Head):
    """Learnable weight scaling (Kang et al., ICLR 2020, Sec. 4): ``s_c (<w_c, f> + b_c)``.

    The previous classifier's weight and bias are taken over and stay fixed (buffers, never in
    the optimizer); only the scales ``s`` (one per class, from 1) are trained, as in the authors'
    code and Bag of Tricks' ``LWS`` classifier.

    Recipe::

        phases:
          - name: joint
          - name: lws
            model: {head: lws}
            sampler: {name: class_balanced}
            train: {epochs: 30, freeze: [backbone]}

    Example:
        >>> import torch
        >>> from lttoolbox.models.heads import LinearHead
        >>> from lttoolbox.models.decoupling import LWSHead
        >>> old = LinearHead(2, 2)
        >>> with torch.no_grad():
        ...     _ = old.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        ...     _ = old.bias.copy_(torch.tensor([0.5, 0.5]))
        >>> head = LWSHead(2, 2)
        >>> head.adopt(old)  # weight and bias kept, fixed; the scales start at 1
        >>> f = torch.ones(1, 2)
        >>> head(f).tolist(), [name for name, _ in head.named_parameters()]
        ([[7.5, 1.5]], ['scales'])
        >>> with torch.no_grad():
        ...     _ = head.scales.copy_(torch.tensor([0.5, 2.0]))
        >>> head(f).tolist()  # s_c (<w_c, f> + b_c)
        [[3.75, 3.0]]
    """

    follows = ("linear", "lws")

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_classes, in_features))
        self.register_buffer("bias", torch.zeros(num_classes))
        self.scales = nn.Parameter(torch.ones(num_classes))

    def adopt(self, previous: nn.Module) -> None:
        """Take over the previous phase's linear classifier (an LWS head: its scaled form)."""
        if isinstance(previous, LWSHead):
            with torch.no_grad():
                self.weight.copy_(previous.weight * previous.scales[:, None])
                self.bias.copy_(previous.bias * previous.scales)
            return
        _take_over(self, previous, "lws")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.weight, self.bias) * self.scales
