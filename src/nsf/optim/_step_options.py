"""One parameter group's options for one NSF step, bundled: ``NSF.step`` builds a ``StepOptions`` from the
group and hands it to the reference and to every runtime path (single-tensor, foreach, fused), so an option
is named once here instead of in every signature."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from ._options import state_dtype_for
from .defaults import DEFAULT_LR, DEFAULT_SCALE


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """Everything a path needs to step one group, named as ``NSF``'s options, with its defaults (see ``NSF``).

    ``p``: the exponent for this step, a number or a 0-dim tensor (``group["p"]``, filled in place as the
    schedule moves); ``lr``: a number or a 0-dim tensor.
    """

    p: float | Tensor
    lr: float | Tensor = DEFAULT_LR
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    scale: str = DEFAULT_SCALE
    amsgrad: bool = False
    decoupled_weight_decay: bool = False
    maximize: bool = False
    foreach: bool | None = None
    capturable: bool = False
    differentiable: bool = False
    fused: bool | None = None
    state_dtype: torch.dtype | None = None

    @classmethod
    def from_group(cls, group: dict[str, Any]) -> StepOptions:
        """The options of a param group; a one-element tensor lr of any shape is squeezed (as torch's Adam)."""
        lr = group["lr"]
        if isinstance(lr, Tensor) and lr.dim() != 0:
            lr = lr.squeeze()
        return cls(**{name: group[name] for name in _GROUP_KEYS}, lr=lr)


_GROUP_KEYS = tuple(f.name for f in dataclasses.fields(StepOptions) if f.name != "lr")


def initial_state(param: Tensor, options: StepOptions) -> dict[str, Tensor]:
    """A parameter's state before its first step: the step count (on the parameter's device when capturable)
    and zero moments in the state dtype."""
    step = torch.zeros((), dtype=torch.float32, device=param.device if options.capturable else "cpu")
    keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if options.amsgrad else ("exp_avg", "exp_avg_sq")
    dtype = state_dtype_for(param, options.state_dtype)
    return {"step": step, **{key: torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
                             for key in keys}}
