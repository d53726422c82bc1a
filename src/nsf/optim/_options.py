"""NSF's option checks: what each option accepts, and the one-line ValueError naming it when it is not.

Numbers are taken as torch's optimizers take them (Python, numpy and one-element tensor scalars) and stored as
Python floats, except ``lr``, which may stay a tensor (squeezed to 0-dim at each step, as torch's Adam does).
Flags must be booleans, so a string such as ``"false"`` cannot silently turn an option on.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

from .. import schedules as _schedules
from .defaults import DEFAULT_P, default_cycle

SCALES = ("raw", "sgd", "adam")

_FLAGS = ("amsgrad", "decoupled_weight_decay", "maximize", "capturable", "differentiable")
_OPTIONAL_FLAGS = ("foreach", "fused")  # None: chosen automatically

_STATE_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
                 "float16": torch.float16}


def _real(name: str, value: Any, *, positive: bool = False) -> float:
    """A finite real number ``>= 0`` (``> 0`` if ``positive``) as a Python float."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"Invalid {name}: {value!r}; a tensor {name} must be a real one-element tensor")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Invalid {name}: {value!r}; it must be a real number")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"Invalid {name}: {value}; it must be a finite number {'> 0' if positive else '>= 0'}")
    return value


# Messages start with torch.optim.Adam's wording for the same input ("Tensor lr must be 1-element", "Invalid
# learning rate: -1", "Invalid epsilon value", "Invalid beta parameter at index 0", "Invalid weight_decay value"),
# so code written against torch's messages reads ours; NSF's detail follows (tests/test_optim_torch_errors.py).


def _lr(lr: Any) -> float | Tensor:
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Tensor lr must be 1-element; got shape {tuple(lr.shape)}")
        _real("learning rate", lr)  # checks the value; the tensor itself is kept (it may be driven in place)
        return lr
    return _real("learning rate", lr)


def _betas(betas: Any) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r}; expected a pair (beta1, beta2)")
    out = []
    for i, b in enumerate(betas):
        if isinstance(b, Tensor):
            raise ValueError(f"Invalid betas[{i}]: tensor betas are not supported; give floats (to move them "
                             "during training, use nsf.HyperparamScheduler(opt, 'beta1' or 'beta2', schedule))")
        b = _real(f"beta parameter at index {i}", b)
        if not b < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {b}; betas[{i}] must lie in [0, 1)")
        out.append(b)
    return out[0], out[1]


def _total_steps(value: Any) -> int | None:
    if value is None or (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0):
        return None if value is None else int(value)
    raise ValueError(f"Invalid total_steps: {value!r}; expected the run's number of optimizer steps (an int > 0) "
                     "or None")


def p_schedule(p: Any, total_steps: int | None) -> _schedules.Schedule:
    """A group's ``p`` as a schedule. ``None`` is the library default: two cycles per run of ``total_steps``
    (the searched form), or ``DEFAULT_P``'s 1000-step period when the run's length is not given. A cycle stated
    per run takes ``total_steps``; an explicit period ignores it."""
    if p is None:
        return DEFAULT_P if total_steps is None else default_cycle(total_steps=total_steps)
    try:
        schedule = _schedules.as_schedule(p).for_run(total_steps)
        schedule(0)
    except ValueError as e:
        raise ValueError(f"Invalid p: {e}") from None
    return schedule


def checked_options(o: dict[str, Any]) -> dict[str, Any]:
    """``o`` with every option checked and its numbers normalised; raises a ValueError naming the option."""
    o = dict(o)
    o["lr"] = _lr(o["lr"])
    o["betas"] = _betas(o["betas"])
    o["eps"] = _real("epsilon value", o["eps"], positive=True)
    o["weight_decay"] = _real("weight_decay value", o["weight_decay"])
    o["total_steps"] = _total_steps(o.get("total_steps"))
    for key in _FLAGS:
        if not isinstance(o[key], bool):
            raise ValueError(f"Invalid {key}: {o[key]!r}; expected True or False")
    for key in _OPTIONAL_FLAGS:
        if o[key] is not None and not isinstance(o[key], bool):
            raise ValueError(f"Invalid {key}: {o[key]!r}; expected True, False or None")
    if not isinstance(o["scale"], str) or o["scale"] not in SCALES:
        raise ValueError(f"Invalid scale: {o['scale']!r}; expected one of {', '.join(SCALES)}")
    if o["foreach"] and o["differentiable"]:
        raise ValueError("foreach=True does not support differentiable=True; use foreach=False")
    if o["fused"]:
        if o["foreach"]:
            raise ValueError("fused=True and foreach=True are exclusive; choose one")
        if o["differentiable"]:
            raise ValueError("fused=True does not support differentiable=True; use fused=False")
    o["state_dtype"] = as_state_dtype(o.get("state_dtype"))
    p_schedule(o["p"], o["total_steps"])
    return o


def as_state_dtype(value: Any) -> torch.dtype | None:
    """None (the parameter's dtype) or a floating torch dtype; strings such as ``"float32"`` are accepted."""
    if value is None:
        return None
    if isinstance(value, str):
        key = value.removeprefix("torch.")
        if key not in _STATE_DTYPES:
            raise ValueError(f"Invalid state_dtype: {value!r}; expected one of {', '.join(_STATE_DTYPES)} or None")
        return _STATE_DTYPES[key]
    if isinstance(value, torch.dtype) and value in _STATE_DTYPES.values():
        return value
    raise ValueError(f"Invalid state_dtype: {value!r}; expected a floating torch dtype, its name, or None")


def state_dtype_for(param: Tensor, state_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype of m and v: ``state_dtype`` for real floating parameters, else the parameter's own."""
    if state_dtype is None or not param.is_floating_point():
        return param.dtype
    return state_dtype


#: per-parameter state keys an NSF (or torch Adam/AdamW) state dict may hold
STATE_KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def check_loadable(state_dict: dict[str, Any]) -> None:
    """Refuse, before anything is loaded, a state dict that another kind of optimizer wrote."""
    groups, state = state_dict.get("param_groups"), state_dict.get("state")
    if not isinstance(groups, list) or not isinstance(state, dict):
        raise ValueError("NSF.load_state_dict: expected a state dict with 'state' and 'param_groups' "
                         "(from NSF.state_dict())")
    for i, group in enumerate(groups):
        missing = [k for k in ("lr", "betas", "eps", "weight_decay") if k not in group]
        if missing:
            raise ValueError(f"NSF.load_state_dict: param group {i} has no {', '.join(missing)}: this state dict "
                             "was not written by NSF (nor by torch's Adam/AdamW, which NSF extends)")
    for pid, param_state in state.items():
        foreign = sorted(k for k in param_state if k not in STATE_KEYS)
        if foreign or (param_state and not {"exp_avg", "exp_avg_sq"} <= set(param_state)):
            raise ValueError(f"NSF.load_state_dict: the state of parameter {pid} has keys {sorted(param_state)}, "
                             f"not NSF's ({', '.join(STATE_KEYS)}): this state dict was written by another "
                             "optimizer")
