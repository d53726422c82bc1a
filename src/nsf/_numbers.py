"""The library's one number checker: what every option, schedule parameter and spec value that is a number accepts.

A number is taken as torch's optimizers take it: a Python or numpy scalar or a one-element real tensor, never a
bool (``True`` is an int to Python, never a learning rate to a user) nor a string (``"0.1"`` is a typo, not a
value). Each function raises a one-line ``ValueError`` that names the value's role.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import torch

__all__ = ["positive_int", "real"]


def real(name: str, value: Any, *, nonnegative: bool = False, positive: bool = False) -> float:
    """``value`` as a finite Python float (``>= 0`` if ``nonnegative``, ``> 0`` if ``positive``)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"{name} must be a finite real number, got a tensor of shape {tuple(value.shape)} "
                             f"and dtype {value.dtype} (a one-element real tensor is one)")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond float's range
        value = math.inf
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonnegative and not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def positive_int(name: str, value: Any) -> int:
    """``value`` as a Python int ``>= 1`` (a count: steps, stages); a float such as ``2.5`` or ``2.0`` is refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
