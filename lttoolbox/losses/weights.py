"""Per-class loss weights: one swappable part shared by every loss.

A recipe names a scheme and its parameters, ``weights: {name: effective_number, beta: 0.9999}``;
:func:`class_weights` turns it into a float32 vector with one weight per class. The loss keeps the
vector as a buffer (so it follows ``.to(device)``) and multiplies each sample's loss by the weight
of its target class.

Schemes (``n_c`` is the number of training samples of class ``c``, ``C`` the number of classes):

* ``inverse``: ``1 / n_c``, normalised to sum to ``C``.
* ``sqrt_inverse``: ``1 / sqrt(n_c)``, normalised to sum to ``C``.
* ``effective_number`` (Cui et al., CVPR 2019, Sec. 3-4): the inverse of the effective number of
  samples ``E_n = (1 - beta^n) / (1 - beta)``, i.e. ``(1 - beta) / (1 - beta^n_c)``, normalised to
  sum to ``C`` as in the paper. ``beta = 0`` gives all ones, ``beta -> 1`` tends to ``inverse``.
* ``cost_sensitive`` (Zhang et al., "Bag of Tricks for Long-Tailed Visual Recognition", AAAI 2021,
  cost-sensitive CE): ``(n_min / n_c)^gamma``, *not* normalised, so the rarest class weighs 1;
  ``gamma = 1`` is the plain form, ``gamma = 0.5`` the square-root form.

A constant factor on every weight does not change a weighted mean (``sum w l / sum w``), so the
normalisation matters only for ``reduction="none"``/``"sum"`` and for losses normalised by the batch
size (the sigmoid class-balanced forms), where the paper's normalisation is what we reproduce.

Example:
    >>> w = class_weights({"name": "inverse"}, [100, 10, 1])
    >>> [round(float(v), 4) for v in w]
    [0.027, 0.2703, 2.7027]
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..checks import check_number  # noqa: F401  (the losses import it from here)
from ..errors import ConfigError
from ..registry import suggest

#: Registered weight schemes: name -> function(counts float64 array, **params) -> weights array.
WEIGHT_SCHEMES: dict[str, Callable[..., np.ndarray]] = {}


def register_scheme(name: str) -> Callable[[Callable], Callable]:
    """Decorator that registers a weight scheme under ``name``."""

    def decorate(fn: Callable) -> Callable:
        if name in WEIGHT_SCHEMES:
            raise ValueError(f"weight scheme '{name}' is registered twice")
        WEIGHT_SCHEMES[name] = fn
        return fn

    return decorate


def _normalise(w: np.ndarray) -> np.ndarray:
    return w / w.sum() * len(w)


@register_scheme("inverse")
def inverse(counts: np.ndarray) -> np.ndarray:
    """``1 / n_c`` normalised to sum to the number of classes."""
    return _normalise(1.0 / counts)


@register_scheme("sqrt_inverse")
def sqrt_inverse(counts: np.ndarray) -> np.ndarray:
    """``1 / sqrt(n_c)`` normalised to sum to the number of classes."""
    return _normalise(1.0 / np.sqrt(counts))


@register_scheme("effective_number")
def effective_number(counts: np.ndarray, beta: float = 0.9999) -> np.ndarray:
    """Cui et al. 2019: ``(1 - beta) / (1 - beta^n_c)`` normalised to sum to the number of classes.

    ``1 - beta^n`` is computed as ``-expm1(n log beta)``, which stays accurate when ``beta`` is
    within rounding of 1 and ``n`` is small (plain ``1 - beta**n`` cancels catastrophically).
    """
    beta = check_number("weights.beta", beta, 0.0, 1.0, high_open=True)
    if beta == 0.0:
        return np.ones_like(counts)
    volume = -np.expm1(counts * math.log(beta))
    return _normalise((1.0 - beta) / volume)


@register_scheme("cost_sensitive")
def cost_sensitive(counts: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """Bag of Tricks' cost-sensitive weights ``(n_min / n_c)^gamma`` (not normalised)."""
    gamma = check_number("weights.gamma", gamma, 0.0)
    return (counts.min() / counts) ** gamma


def weight_spec(spec: Any) -> dict | None:
    """Normalise a ``weights`` recipe value: ``None``, a scheme name, or
    ``{name: ..., **params}``."""
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"weights must be a mapping like "
                          f"{{name: effective_number, beta: 0.9999}} or a scheme name, "
                          f"got {spec!r}")
    name = spec["name"]
    if name not in WEIGHT_SCHEMES:
        raise ConfigError(f"weights.name: unknown weight scheme {name!r}"
                          f"{suggest(name, WEIGHT_SCHEMES)} "
                          f"Known: {', '.join(sorted(WEIGHT_SCHEMES))}.")
    params = {k: v for k, v in spec.items() if k != "name"}
    accepted = [p for p in inspect.signature(WEIGHT_SCHEMES[name]).parameters if p != "counts"]
    for key in params:
        if key not in accepted:
            raise ConfigError(f"weights.{key}: weight scheme '{name}' has no parameter '{key}'"
                              f"{suggest(key, accepted)} "
                              f"Accepted: {', '.join(accepted) or '(none)'}.")
    return dict(spec)


def class_weights(spec: Any, class_counts: Sequence[float] | np.ndarray) -> torch.Tensor:
    """Per-class weights of a scheme for the given class counts.

    Args:
        spec: ``{"name": scheme, **params}`` or a scheme name (see the module docstring).
        class_counts: Number of training samples per class, all positive.

    Returns:
        A float32 tensor of shape ``(C,)`` (on the CPU; the loss moves it with itself).

    Raises:
        ConfigError: unknown scheme or parameter, or a parameter out of range.
    """
    spec = weight_spec(spec)
    if spec is None:
        raise ConfigError("weights: no weight scheme given")
    counts = np.asarray(class_counts, dtype=np.float64)
    params = {k: v for k, v in spec.items() if k != "name"}
    w = WEIGHT_SCHEMES[spec["name"]](counts, **params)
    return torch.as_tensor(w, dtype=torch.float32)
