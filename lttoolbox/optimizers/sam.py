"""Sharpness-aware minimisation (SAM, and ASAM) as an optimizer entry around any base optimizer.

SAM (Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization",
ICLR 2021, arXiv:2010.01412) minimises ``max_{||e||_2 <= rho} L(w + e)``. Its first-order step
(the paper's equation numbers could not be checked here) is, on one batch::

    g   = grad L(w)
    e   = rho * g / ||g||_2                       (adaptive: rho * T^2 g / ||T g||_2, T = |w|)
    w' = base_step(w, grad L(w + e))               (the gradient taken at w + e, applied at w)

``||.||_2`` is one norm over every parameter with a gradient (all parameter groups together);
``rho`` is read per parameter group. ``adaptive: true`` is ASAM (Kwon et al., ICML 2021,
arXiv:2102.11600) with the scaling ``T = |w|`` of the PyTorch code below (``sam.py`` lines 23 and
52; whether the ASAM paper adds a constant to ``|w|`` was not checked here). Weight decay is the
base optimizer's: it is applied at the restored ``w`` and does not enter the ascent direction.

Rangwani et al. ("Escaping Saddle Points for Effective Generalization on Class-Imbalanced Data",
NeurIPS 2022, arXiv:2212.13827) train LDAM-DRW, CE-DRW and VS with SAM on long-tailed data. Their
official code, https://github.com/val-iisc/Saddle-LongTail at
48328fbd46be040f3ab4ac912126c15cec111360, copies the unofficial PyTorch port
https://github.com/davda54/sam (at 3c3afdbd71cff2462ec91c734b3d1170bd0f3707): ``sam.py`` lines
15-35 are the step above (``1e-12`` added to the norm, line 18), ``cifar_train_sam.py`` lines
300-310 the two passes. On CIFAR SAM runs from the first epoch with a constant ``rho``
(``--rho_schedule none`` in every CIFAR command), so no start epoch is needed. Its ImageNet-LT and
iNaturalist scripts raise ``rho`` in steps at and after DRW's switch (``--rho_steps``): not
supported within a phase (a later phase may set another ``optim.rho``, but its new optimizer
restarts the momentum, unlike that script). The paper's body could not be read here, so no
equation or table of it is cited.

What this entry does differently, on purpose:

* **Batch-norm statistics** (``second_pass_bn``). The official code runs both passes in train
  mode, so every BatchNorm layer updates its running statistics twice per step, the second time
  with the activations at the perturbed weights ``w + e`` (momentum 0.1 from 0, batch means 1.0
  then 1.2: 0.1, then 0.21). The default, ``hold``, keeps what the first pass left: the statistics
  describe the weights that are trained, as davda54's README asks ("they should be computed only
  for the first one") and its ``bypass_bn.py`` does (there with momentum 0, which still counts
  the batch in ``num_batches_tracked``; here every buffer of the network's normalisation layers is
  restored, the count included). ``update`` reproduces the official code. Inside each pass the
  layers normalise with that pass's batch statistics either way.
* **The same random draws in both passes.** The second pass replays the state of torch's
  generators (CPU and the parameters' CUDA devices) from before the first, so a mixing
  augmentation mixes the same pairs with the same ``lam`` and dropout drops the same units: both
  gradients are of the same batch loss, as the method defines them. The official recipes draw
  nothing inside the forward (random crops are drawn by the data path), so for them this changes
  nothing.
* **Logged loss.** ``step`` returns the first pass's losses (at ``w``, comparable with a plain
  run); the official script logs the second pass's.
* **Checkpoints.** ``state_dict`` is the base optimizer's (its momentum included), so a run
  resumes exactly; davda54's ``SAM.state_dict`` holds its own state, the ``old_p`` copies, and
  not the base's momentum (``sam.py`` at 3c3afdb inherits ``torch.optim.Optimizer``'s).

As in both codes, ``w`` is copied back after the second pass, not recomputed as ``(w + e) - e``,
which rounding would move.

The step costs two forwards and two backwards per batch (about twice a plain step; measure it
with ``benchmarks/throughput.py``) and one extra copy of the parameters. It needs the closure, so
fp16 loss scaling (``train.amp: fp16``), under which the trainer steps without one, is refused
before training (``sam.needs_closure``). Under DDP both passes all-reduce their gradients: the
perturbation is the one of the global batch, as in one process.

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    >>> opt = sam([{"params": [w]}], rho=0.05, lr=0.1, momentum=0.0, weight_decay=0.0)
    >>> def closure():
    ...     opt.zero_grad()
    ...     loss = 0.5 * (w ** 2).sum()
    ...     loss.backward()
    ...     return loss.detach()
    >>> _ = opt.step(closure)  # e = 0.05 * (0.6, 0.8); w - 0.1 * (w + e)
    >>> [round(v, 4) for v in w.tolist()]
    [2.697, 3.596]
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..checks import check_bool
from ..errors import ConfigError
from ..models.base import norm_layers
from ..registry import OPTIMIZERS, suggest

SECOND_PASS_BN = ("hold", "update")
NORM_EPS = 1e-12  # added to ||g|| before dividing, as sam.py line 18 of both codes


class SAM(torch.optim.Optimizer):
    """SAM around a built base optimizer, sharing its parameter groups and state.

    ``param_groups`` and ``state`` are the base optimizer's, so the trainer's learning-rate
    updates reach it and a checkpoint holds its momentum (davda54's ``SAM`` keeps the momentum in
    ``base_optimizer.state`` alone, outside its own ``state_dict``). ``w`` is kept in buffers
    reused from step to step, outside the state.

    Args:
        params: Parameter groups.
        base: Builds the base optimizer from the groups (``rho`` and ``adaptive`` already in
            them).
        rho: The radius of the perturbation.
        adaptive: ASAM's scaled perturbation.
        hold: The network's normalisation layers whose buffers the second pass must leave as
            the first left them (empty: both passes update them).
    """

    def __init__(self, params, base: Callable[[list], torch.optim.Optimizer], rho: float,
                 adaptive: bool, hold: list[nn.Module]):
        super().__init__(params, {"rho": rho, "adaptive": adaptive})
        self.base_optimizer = base(self.param_groups)
        self._share()
        self.hold = hold
        self._saved_params: list[torch.Tensor] = []
        self._saved_buffers: list[torch.Tensor] = []

    def _share(self) -> None:
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

    def state_dict(self) -> dict:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self._share()  # loading replaces the base's group and state objects

    @torch.no_grad()
    def step(self, closure=None):
        """Two passes of ``closure`` (at ``w`` and at ``w + e``), then the base step at ``w``;
        returns the first pass's losses."""
        if closure is None:
            raise RuntimeError(
                "sam evaluates the loss twice per step and needs the closure; fp16 loss scaling "
                "steps without one: set train.amp to bf16 or off")
        rng = _rng_state(self.param_groups)
        with torch.enable_grad():
            losses = closure()
        # Per parameter group: its parameters with a gradient, their gradients, its settings.
        groups = [([p for p in g["params"] if p.grad is not None], g["rho"], g["adaptive"])
                  for g in self.param_groups]
        groups = [(ps, [p.grad for p in ps], rho, adaptive) for ps, rho, adaptive in groups if ps]
        params = [p for ps, *_ in groups for p in ps]
        if params:
            self._ascend(params, groups)
        buffers = [b for m in self.hold for b in m.buffers(recurse=False)]
        _copy_into(self._saved_buffers, buffers)
        _set_rng_state(rng)
        with torch.enable_grad():
            closure()
        if buffers:  # the second pass leaves the statistics as the first left them
            torch._foreach_copy_(buffers, self._saved_buffers[:len(buffers)])
        if params:
            torch._foreach_copy_(params, self._saved_params[:len(params)])  # back to w, exactly
        self.base_optimizer.step()
        return losses

    def _ascend(self, params: list, groups: list) -> None:
        """Move every parameter with a gradient to ``w + e(w)``, keeping ``w``. Multi-tensor
        kernels, and the scale stays on the device (no host synchronisation)."""
        scaled = [t for ps, grads, _, adaptive in groups
                  for t in (torch._foreach_mul(torch._foreach_abs(ps), grads) if adaptive
                            else grads)]
        device = params[0].device
        norm = torch.linalg.vector_norm(torch.stack(
            [n.to(device) for n in torch._foreach_norm(scaled)]))
        _copy_into(self._saved_params, params)
        for ps, grads, rho, adaptive in groups:
            scale = rho / (norm + NORM_EPS)
            if adaptive:  # |w|^2 g (sam.py line 23: torch.pow(p, 2) * p.grad * scale)
                steps = torch._foreach_mul(torch._foreach_mul(ps, ps), grads)
                torch._foreach_mul_(steps, scale)
            else:
                steps = torch._foreach_mul(grads, scale)
            torch._foreach_add_(ps, steps)


def _copy_into(saved: list[torch.Tensor], tensors: list[torch.Tensor]) -> None:
    """Copy ``tensors`` into the (re)used buffers ``saved``."""
    if not tensors:
        return
    if len(saved) < len(tensors) or any(s.shape != t.shape or s.dtype != t.dtype
                                        or s.device != t.device
                                        for s, t in zip(saved, tensors)):
        saved[:] = [torch.empty_like(t) for t in tensors]
    torch._foreach_copy_(saved[:len(tensors)], tensors)


def _rng_state(groups: list[dict]) -> tuple:
    """torch's CPU generator and the generators of the parameters' CUDA devices."""
    cuda = {p.device for g in groups for p in g["params"] if p.is_cuda}
    return torch.get_rng_state(), [(d, torch.cuda.get_rng_state(d)) for d in cuda]


def _set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    for device, s in cuda:
        torch.cuda.set_rng_state(s, device)


@OPTIMIZERS.register("sam")
def sam(params, model: nn.Module | None = None, fused: bool | None = None, rho: float = 0.05,
        adaptive: bool = False, base: str = "sgd", second_pass_bn: str = "hold",
        lr: float = 0.1, weight_decay: float = 2e-4, momentum: float | None = None,
        nesterov: bool | None = None) -> torch.optim.Optimizer:
    """Sharpness-aware minimisation (Foret et al., ICLR 2021) around a base optimizer; ASAM with
    ``adaptive``; the optimizer of Rangwani et al. (NeurIPS 2022) for long-tailed data.

    Args:
        params: Parameter groups (given by the trainer).
        model: The network (given by the trainer): its normalisation layers are held in the
            second pass. ``None``: no layer is held.
        fused: Whether the base optimizer uses a fused kernel (given by the trainer).
        rho: The perturbation radius, > 0 (Rangwani et al.'s CIFAR commands: 0.5 to 0.8 with
            DRW; 0.05 is davda54's and the script's default).
        adaptive: ASAM: the perturbation scaled by ``|w|`` (Kwon et al., ICML 2021).
        base: The base optimizer, an entry of the optimizers but one that needs the closure
            itself (``sgd`` in every official recipe).
        second_pass_bn: ``hold`` (default): the second pass leaves the running statistics of
            the network's normalisation layers as the first left them; ``update``: both passes
            update them, as the official code does (see the module docstring).
        lr: The base optimizer's learning rate (the schedule sets it every epoch).
        weight_decay: The base optimizer's weight decay, applied at ``w``.
        momentum: The base optimizer's momentum (``null``: the base's default; SGD's is 0.9).
        nesterov: The base optimizer's Nesterov flag (``null``: the base's default).

    Example:
        >>> import torch
        >>> opt = sam([{"params": [torch.nn.Parameter(torch.ones(2))]}], rho=0.5, momentum=0.9)
        >>> type(opt.base_optimizer).__name__, opt.param_groups[0]["rho"]
        ('SGD', 0.5)
    """
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) \
            or rho <= 0:
        raise ConfigError(f"must be a positive number, got {rho!r} (rho 0 is the base optimizer "
                          f"at twice the cost: name it instead)", key="rho")
    check_bool("adaptive", adaptive)
    if second_pass_bn not in SECOND_PASS_BN:
        raise ConfigError(f"must be one of {', '.join(SECOND_PASS_BN)}, got {second_pass_bn!r}",
                          key="second_pass_bn")
    if not isinstance(base, str):
        raise ConfigError(f"must be the name of an optimizer, got {base!r}", key="base")
    if base not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {base!r}{suggest(base, OPTIMIZERS.names())} "
                          f"Registered: {', '.join(OPTIMIZERS.names())}.", key="base")
    factory = OPTIMIZERS.get(base)
    if getattr(factory, "needs_closure", False):
        plain = [n for n in OPTIMIZERS.names()
                 if not getattr(OPTIMIZERS.get(n), "needs_closure", False)]
        raise ConfigError(f"'{base}' evaluates the closure itself and cannot be sam's base; "
                          f"use {', '.join(plain)}", key="base")
    given = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov}
    cfg = {"name": base, **{k: v for k, v in given.items() if v is not None}}
    hold = norm_layers(model) if second_pass_bn == "hold" else []
    return SAM(params, lambda groups: OPTIMIZERS.build(cfg, key="", params=groups, fused=fused),
               rho=float(rho), adaptive=adaptive, hold=hold)


# Its step evaluates the closure itself: fp16 loss scaling, which steps without one, is refused
# before training (lttoolbox.recipe_checks).
sam.needs_closure = True
