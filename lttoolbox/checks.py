"""The checks of a component's parameters, in one place: each returns the value in its type or
raises :class:`~lttoolbox.errors.ConfigError` with one line naming the parameter (the registry
then prefixes the recipe key, ``loss.gamma: must lie in [0, inf], got -1.0``).

Example:
    >>> from lttoolbox.checks import check_int, check_number
    >>> check_number("gamma", 2), check_int("every", 20.0, 1, whole_floats=True)
    (2.0, 20)
    >>> check_int("crop_padding", -1, 0)
    Traceback (most recent call last):
    lttoolbox.errors.ConfigError: crop_padding must be an integer >= 0, got -1
"""
from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import ConfigError

__all__ = ["check_int", "check_number", "check_real", "check_epoch"]


def check_int(name: str, value: Any, minimum: int | None = None, *, optional: bool = False,
              whole_floats: bool = False) -> int | None:
    """``value`` as an ``int`` (``>= minimum`` when given).

    Args:
        name: The parameter, as the message names it.
        value: Booleans are refused; floats too, unless ``whole_floats`` and integral (an epoch
            a protocol rescaled, ``160.0``).
        minimum: The smallest value allowed, ``None`` for none.
        optional: ``None`` is allowed (and returned).
    """
    if optional and value is None:
        return None
    if whole_floats and isinstance(value, float) and value.is_integer():
        value = int(value)
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or (minimum is not None and value < minimum)):
        kind = "null or an integer" if optional else "an integer"
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(f"{name} must be {kind}{bound}, got {value!r}")
    return int(value)


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """Validate a real-valued parameter and return it as a float.

    Args:
        name: Parameter name used in the message (``"gamma"``, ``"weights.beta"``).
        value: The value to check; booleans and non-numbers are rejected.
        low, high: Bounds, ``None`` for unbounded.
        low_open, high_open: Whether the bound itself is excluded.

    Raises:
        ConfigError: naming ``name`` and the allowed range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    value = float(value)
    lo_ok = low is None or (value > low if low_open else value >= low)
    hi_ok = high is None or (value < high if high_open else value <= high)
    if not (math.isfinite(value) and lo_ok and hi_ok):
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ConfigError(f"{name} must lie in {left}{lo}, {hi}{right}, got {value!r}")
    return value


def check_real(name: str, value: Any) -> float:
    """``value`` as a finite float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is ``true`` or ``false`` (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def check_epoch(name: str, value: Any) -> int:
    """A non-negative integer epoch (an integral float such as a scaled ``160.0`` is accepted)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer epoch, got {value!r}")
    return int(value)
