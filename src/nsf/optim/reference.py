"""NSF's update written as the method: the reference that every runtime path (single-tensor, foreach, fused) is
tested equal to. One tensor at a time, in float64, in the method's own terms; the runtime paths fold the bias
corrections, guard against overflow and keep a non-finite gradient coordinate out of the grafted norms, and
must still take this step."""

from __future__ import annotations

import torch
from torch import Tensor

from ._step_options import StepOptions, initial_state

__all__ = ["reference_step"]


@torch.no_grad()
def reference_step(param: Tensor, grad: Tensor, state: dict[str, Tensor], options: StepOptions) -> None:
    """One NSF step of ``param``, in place, with its ``state`` (the keys of ``NSF.state[param]``; an empty
    dict starts from zero moments). The moments are stored in their own dtype and used as stored."""
    o = options
    if not state:
        state.update(initial_state(param, o))
    beta1, beta2 = o.betas
    p, lr, wd = float(o.p), float(o.lr), o.weight_decay
    theta, g = _f64(param), _f64(grad)
    if o.maximize:
        g = -g
    if wd and not o.decoupled_weight_decay:
        g = g + wd * theta  # L2 weight decay, coupled to the gradient
    state["step"] += 1
    t = float(state["step"])

    m = _store(state["exp_avg"], beta1 * _f64(state["exp_avg"]) + (1 - beta1) * g)
    v = _store(state["exp_avg_sq"], beta2 * _f64(state["exp_avg_sq"]) + (1 - beta2) * g * g)
    if o.amsgrad:  # the running max of v stands for v
        v = _store(state["max_exp_avg_sq"], torch.maximum(_f64(state["max_exp_avg_sq"]), v))
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)

    if p > 0:  # the direction: p = 1/2 is Adam's
        d = m_hat / (v_hat**p + o.eps)
    elif p == 0:  # momentum's
        d = m_hat
    else:  # v̂^|p| multiplies; v̂^p is never formed (0^p = inf)
        d = m_hat * v_hat**-p
    if o.scale == "sgd":  # graft: per tensor, the length of momentum's step, p's direction
        d = d * _ratio(m_hat.norm(), d.norm())
    elif o.scale == "adam":  # per tensor, the length of Adam's step
        d = d * _ratio((m_hat / (v_hat.sqrt() + o.eps)).norm(), d.norm())

    if wd and o.decoupled_weight_decay:
        theta = theta * (1 - lr * wd)  # AdamW's decoupled weight decay
    _store(param, theta - lr * d)


def _ratio(length: Tensor, norm: Tensor) -> Tensor:
    """length/norm, or 0 when the direction is zero: a zero direction takes no step (no 0/0)."""
    return length / norm if norm > 0 else torch.zeros_like(length)


def _f64(t: Tensor) -> Tensor:
    """``t`` in float64; a complex tensor as its real view (real and imaginary parts are coordinates)."""
    return (torch.view_as_real(t) if t.is_complex() else t).detach().double()


def _store(target: Tensor, value: Tensor) -> Tensor:
    """Write ``value`` into ``target`` (rounded to its dtype) and return what was stored, in float64."""
    (torch.view_as_real(target) if target.is_complex() else target).copy_(value)
    return _f64(target)
