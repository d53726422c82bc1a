"""The library's one number checker: what every option, schedule parameter and spec value that is a number accepts.

A number is taken as torch's optimizers take it: a Python or numpy scalar or a one-element real tensor, never a
bool (``True`` is an int to Python, never a learning rate to a user) nor a string (``"0.1"`` is a typo, not a
value). Each function raises a one-line ``ValueError`` that starts as torch's optimizers word theirs ("Invalid
learning rate: -1.0") and then says what is expected.
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
            raise ValueError(f"Invalid {name}: {value!r}; a tensor {name} must be a real one-element tensor")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Invalid {name}: {value!r}; it must be a real number")
    try:
        value = float(value)
    except OverflowError:  # an int beyond float's range
        value = math.inf
    bound = "> 0" if positive else ">= 0" if nonnegative else ""
    if not math.isfinite(value) or (positive and not value > 0) or (nonnegative and not value >= 0):
        raise ValueError(f"Invalid {name}: {value}; it must be a finite number{' ' + bound if bound else ''}")
    return value


def positive_int(name: str, value: Any) -> int:
    """``value`` as a Python int ``>= 1`` (a count: steps, stages); a float such as ``2.5`` or ``2.0`` is refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r}; it must be a positive integer")
    return int(value)
