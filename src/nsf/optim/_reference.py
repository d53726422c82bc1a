"""The specification of the NSF step (SPEC.md §2): the overflow-safe reference step, the graft, the compute
dtype, and ``_single_tensor_nsf``, the readable reference path. A leaf module: every other path imports it
and is proven equal to it by the tests (tests/test_optim_reference.py, tests/test_optim_fast.py).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.optimizer import _get_value


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The power is taken in float32 or wider, whatever the parameter dtype."""
    return torch.promote_types(dtype, torch.float32)


def _unit_v(v_hat: Tensor) -> Tensor:
    """v̂ divided by its (finite) max: the p ≤ 0 direction is unchanged, and v̂^|p| ≤ 1 cannot overflow."""
    finite = v_hat.clamp(max=torch.finfo(v_hat.dtype).max)
    top = finite.amax()
    return finite / torch.where(top > 0, top, torch.ones_like(top))


def _graft(direction: Tensor, reference: Tensor) -> Tensor:
    """``direction`` rescaled to the norm of ``reference`` (per tensor).

    Both are divided by their max-abs before the norms are taken, so neither the norms nor their ratio
    overflow, and a zero direction gives a zero step instead of 0/0.
    """
    def unit(x: Tensor) -> tuple[Tensor, Tensor]:
        top = x.abs().amax()
        top = torch.where(top > 0, top, torch.ones_like(top))
        return x / top, top

    d_unit, _ = unit(direction)
    r_unit, r_top = unit(reference)
    d_norm = torch.linalg.vector_norm(d_unit)
    d_norm = torch.where(d_norm > 0, d_norm, torch.ones_like(d_norm))
    return d_unit * (r_top * (torch.linalg.vector_norm(r_unit) / d_norm))


def _reference_step(m_hat: Tensor, v_hat: Tensor, p: Tensor, eps: float, scale: str) -> Tensor:
    """The step per unit learning rate, from bias-corrected moments (SPEC §2), overflow-safe."""
    if scale != "raw" and m_hat.numel() > 0:  # only the direction matters: keep v̂^|p| bounded
        base = torch.where(p > 0, v_hat, _unit_v(v_hat))
    else:
        base = v_hat
    v_pow = base.pow(p.abs())  # v̂^|p|: finite, and 0 where v̂ = 0 (p ≠ 0) — never v̂^p with p < 0
    d = torch.where(p > 0, m_hat / (v_pow + eps), m_hat * v_pow)
    if m_hat.numel() == 0 or scale == "raw":
        return d
    if scale == "sgd":
        return _graft(d, m_hat)
    return _graft(d, m_hat / (v_hat.sqrt() + eps))


def _single_tensor_nsf(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, p, lr, beta1, beta2, eps,
    weight_decay, scale, amsgrad, decoupled_weight_decay, maximize, capturable, has_complex,
) -> None:
    for i, param in enumerate(params):
        grad = -grads[i] if maximize else grads[i]
        exp_avg, exp_avg_sq, step_t = exp_avgs[i], exp_avg_sqs[i], state_steps[i]
        max_exp_avg_sq = max_exp_avg_sqs[i] if amsgrad else None
        if torch.is_complex(param):  # real and imaginary parts are independent coordinates, as in Adam
            param, grad, exp_avg, exp_avg_sq = (torch.view_as_real(t) for t in (param, grad, exp_avg, exp_avg_sq))
            if amsgrad:
                max_exp_avg_sq = torch.view_as_real(max_exp_avg_sq)

        step_t += 1
        if grad.dtype != exp_avg.dtype:  # state_dtype: moments kept in another dtype than the parameter
            grad = grad.to(exp_avg.dtype)
        if weight_decay != 0:
            if decoupled_weight_decay:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param.to(grad.dtype), alpha=weight_decay)

        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        v = exp_avg_sq
        if amsgrad:
            max_exp_avg_sq.copy_(torch.maximum(max_exp_avg_sq, exp_avg_sq))
            v = max_exp_avg_sq

        step = step_t if capturable else _get_value(step_t)
        cdtype = _compute_dtype(torch.promote_types(param.dtype, exp_avg.dtype))
        m_hat = exp_avg.to(cdtype) / (1 - beta1**step)
        v_hat = v.to(cdtype) / (1 - beta2**step)
        d = _reference_step(m_hat, v_hat, p.to(param.device), eps, scale)
        if isinstance(lr, Tensor):
            param.sub_((d * lr).to(param.dtype))
        else:
            param.add_(d.to(param.dtype), alpha=-lr)
