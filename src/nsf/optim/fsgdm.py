"""FSGDM (Li et al., ICLR 2025, arXiv 2411.19671): SGD whose momentum coefficient rises in stages over the run.

The closest peer of NSF: another optimizer designed from a frequency-domain view of the gradient stream. It is
here as a tuned baseline, implemented from the paper's description and checked against its published code.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.optim.optimizer import Optimizer, ParamsT

from .._numbers import positive_int, real

__all__ = ["FSGDM", "fsgdm_momentum"]


def fsgdm_momentum(step: int, total_steps: int, n_stages: int = 300, c: float = 0.033) -> float:
    """The momentum coefficient ``u`` FSGDM uses at its ``step``-th update (counted from 1, as torch does).

    ``L = max(1, total_steps // n_stages)`` steps per stage; ``s = L * (step // L)`` is the step at which the
    current stage began; ``u = s / (s + c * total_steps)``. So steps ``1 .. L-1`` have ``s = 0, u = 0``
    (plain SGD) and stage ``k >= 1`` covers steps ``kL .. (k+1)L - 1``. This is the published code's
    arithmetic (github.com/yinleung/FSGDM, v1.0), which counts steps from 1; ``max(1, ...)`` only keeps runs
    shorter than ``n_stages`` steps defined (each step is then its own stage).
    """
    stage_len = max(1, total_steps // n_stages)
    s = stage_len * (step // stage_len)
    return s / (s + c * total_steps)


def _check(options: dict[str, Any]) -> None:
    try:
        real("lr", options["lr"], nonnegative=True)
        real("weight_decay", options["weight_decay"], nonnegative=True)
        real("c", options["c"], positive=True)
        real("v", options["v"], positive=True)
        positive_int("n_stages", options["n_stages"])
        positive_int("total_steps", options["total_steps"])
    except ValueError as e:
        raise ValueError(f"FSGDM: {e}") from None
    if not isinstance(options["maximize"], bool):
        raise ValueError(f"FSGDM: maximize must be True or False, got {options['maximize']!r}")


class FSGDM(Optimizer):
    r"""Frequency SGD with Momentum: :math:`b \leftarrow u_t b + v g`, :math:`\theta \leftarrow \theta - \eta b`.

    ``g`` is the gradient plus ``weight_decay * θ`` (coupled L2, as the paper uses). ``u_t`` is constant within
    each of ``n_stages`` equal stages of the run and rises from 0 (plain SGD: the paper's "keep the raw gradient
    early") towards :math:`1/(1+c)` (more low-pass filtering late); see :func:`fsgdm_momentum` for the exact
    stage arithmetic, which follows the published code. ``total_steps`` (the run's number of optimizer steps)
    is required because the schedule is stated relative to the run: ``μ = c · total_steps``. Steps past
    ``total_steps`` continue the same formula (u keeps rising towards 1). The buffer starts at zero, so the
    first update is ``v g`` (the published code starts it at ``g``: the same for the default ``v = 1``).

    **Learning-rate scale.** With the buffer summing (not averaging) gradients, a steady gradient ``g`` gives a
    step of :math:`\eta v g/(1-u) = \eta v g (1 + s/(cT))`: ``η v`` at the start, about ``η v (1 + 1/c)``
    (≈ 31 ``η`` at the defaults) at the end, ≈ 16 ``η v`` on average over the run. SGD with momentum 0.9
    (torch's form, gain 10) at the same ``η`` therefore steps 10x further early and about 3x less late; the
    paper uses SGD-M's learning rate (0.1 on CIFAR). Tune ``lr`` over the same grid as SGD-M.

    Args:
        params: iterable of parameters or param groups (a group may override any option below).
        lr: learning rate η.
        total_steps: the run's total number of optimizer steps T (required).
        c: scaling factor of μ = c·T (published 0.033).
        v: gradient coefficient (published 1).
        n_stages: number of stages the run is split into (published 300).
        weight_decay: coupled L2 coefficient (default 0; the paper uses 5e-4 on CIFAR).
        maximize: maximize the objective.

    State: per parameter ``momentum_buffer`` (created at its first update); per group ``step``, the number of
    ``step()`` calls so far. Like the published code, the stage clock counts calls, not updates of one
    parameter: the schedule is a function of training time.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.1,
        *,
        total_steps: int,
        c: float = 0.033,
        v: float = 1.0,
        n_stages: int = 300,
        weight_decay: float = 0.0,
        maximize: bool = False,
    ) -> None:
        defaults = dict(lr=lr, total_steps=total_steps, c=c, v=v, n_stages=n_stages,
                        weight_decay=weight_decay, maximize=maximize)
        _check(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _check({**self.defaults, **param_group})  # before the group is in: a bad group leaves no trace
        super().add_param_group(param_group)
        self.param_groups[-1].setdefault("step", 0)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter with a gradient; ``closure`` re-evaluates the loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            group["step"] += 1
            u = fsgdm_momentum(group["step"], group["total_steps"], group["n_stages"], group["c"])
            v, lr, wd = float(group["v"]), float(group["lr"]), float(group["weight_decay"])
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("FSGDM does not support sparse gradients")
                grad = -param.grad if group["maximize"] else param.grad
                if wd != 0:
                    grad = grad.add(param, alpha=wd)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.mul_(u).add_(grad, alpha=v)
                param.add_(buf, alpha=-lr)
        return loss
