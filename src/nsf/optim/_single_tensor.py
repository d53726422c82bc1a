"""The single-tensor NSF path (``foreach=False``, ``differentiable``, inside an outer ``torch.compile``): the
reference's step (``reference.py``) in an overflow-safe form with p as a tensor and no data-dependent branch,
so that ``torch.compile`` traces it with p as an input. Also the graft's shared pieces (the compute dtype, the
0/0-guarded ratio) that the foreach and fused paths import, so that every path decides alike.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.optim.optimizer import _get_value

from ._step_options import StepOptions


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The power is taken in float32 or wider, whatever the parameter dtype."""
    return torch.promote_types(dtype, torch.float32)


def _direction(m_hat: Tensor, v_hat: Tensor, p: Tensor, eps: float) -> Tensor:
    """The raw step per unit learning rate: m̂/(v̂^p + ε) for p > 0, m̂·v̂^|p| for p ≤ 0 (v̂^p with p < 0 is
    never formed, so zero gradients stay a no-op)."""
    v_pow = v_hat.pow(p.abs())
    return torch.where(p > 0, m_hat / (v_pow + eps), m_hat * v_pow)


def _graft_terms(m: Tensor, v: Tensor, bc2, p: Tensor, eps: float, scale: str):
    """The grafted step's ingredients from the raw moments m, v (bc2 = 1 − β2^t): ``(q, r, good)`` such that
    the direction is a positive per-tensor multiple of ``m·q`` and ``r/bc1`` is the reference step.

    * An overflowed v (from a finite gradient) counts as the largest float, as if v̂ were clamped.
    * ``good``: coordinates whose m and v are finite. A NaN or inf gradient coordinate is left out of the norms,
      so it damages only its own coordinate (as in Adam), whatever the scale.
    * p > 0: m̂/(v̂^p + ε) = (bc2^p/bc1)·m/(v^p + ε·bc2^p), so q = 1/(v^p + ε·bc2^p);
      p ≤ 0: m̂·v̂^|p| ∝ m·(v/k)^|p| with k the largest good v, so q ≤ 1 and m·q never overflows.
    """
    x = v.clamp(max=torch.finfo(v.dtype).max)
    good = torch.isfinite(m) & torch.isfinite(x)
    a = p.abs()
    top = torch.where(good, x, 0).amax() if x.numel() else x.new_ones(())
    top = torch.where(top > 0, top, torch.ones_like(top))
    q = torch.where(p > 0, 1 / (x.pow(a) + eps * bc2**a), (x / top).pow(a))
    r = m if scale == "sgd" else m / (x.sqrt() / bc2**0.5 + eps)  # m̂/(√v̂ + ε) = r/bc1
    return q, r, good


def _finite_norm(x: Tensor, good: Tensor) -> Tensor:
    """‖x‖ over the ``good`` coordinates, divided by the max-abs first so that it cannot overflow."""
    x = torch.where(good, x, 0)
    top = x.abs().amax() if x.numel() else x.new_zeros(())
    top = torch.where(top > 0, top, torch.ones_like(top))
    return top * torch.linalg.vector_norm(x / top)


def _graft_ratio(d_norm: Tensor, r_norm: Tensor, bc1) -> Tensor:
    """‖r‖/(‖d‖·bc1), or 0 where either norm is zero or not finite: a zero direction (or reference) takes no
    step, instead of 0/0. Shared by every path so that they decide alike."""
    ok = torch.isfinite(d_norm) & torch.isfinite(r_norm) & (d_norm > 0) & (r_norm > 0)
    one = torch.ones_like(d_norm)
    return torch.where(ok, r_norm / torch.where(ok, d_norm, one) / bc1, 0 * one)


def _graft_ratio_host(d_norm: float, r_norm: float, bc1: float) -> float:
    """``_graft_ratio`` of host numbers, the same float64 arithmetic (for paths that read the norms anyway)."""
    ok = math.isfinite(d_norm) and math.isfinite(r_norm) and d_norm > 0 and r_norm > 0
    return r_norm / d_norm / bc1 if ok else 0.0


def _step_per_unit_lr(m: Tensor, v: Tensor, bc1, bc2, p: Tensor, eps: float, scale: str) -> Tensor:
    """``reference_step``'s d from the moments m, v and the bias corrections bc1 = 1 − β1^t, bc2 = 1 − β2^t.
    The grafted scales keep, per tensor, the length of the reference step (m̂ for ``"sgd"``, m̂/(√v̂ + ε) for
    ``"adam"``), both lengths taken over the finite coordinates and formed so that they cannot overflow."""
    if scale == "raw":
        return _direction(m / bc1, v / bc2, p, eps)
    q, r, good = _graft_terms(m, v, bc2, p, eps, scale)
    d = m * q
    return d * _graft_ratio(_finite_norm(d, good), _finite_norm(r, good), bc1)


def _single_tensor_nsf(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, options: StepOptions, *,
                       has_complex: bool = False) -> None:
    """One step, tensor by tensor (``has_complex`` is not needed: each tensor is checked)."""
    o = options
    beta1, beta2 = o.betas
    lr, weight_decay = o.lr, o.weight_decay
    for i, param in enumerate(params):
        grad = -grads[i] if o.maximize else grads[i]
        exp_avg, exp_avg_sq, step_t = exp_avgs[i], exp_avg_sqs[i], state_steps[i]
        max_exp_avg_sq = max_exp_avg_sqs[i] if o.amsgrad else None
        if torch.is_complex(param):  # real and imaginary parts are independent coordinates, as in Adam
            param, grad, exp_avg, exp_avg_sq = (torch.view_as_real(t) for t in (param, grad, exp_avg, exp_avg_sq))
            if o.amsgrad:
                max_exp_avg_sq = torch.view_as_real(max_exp_avg_sq)

        step_t += 1
        if grad.dtype != exp_avg.dtype:  # state_dtype: moments kept in another dtype than the parameter
            grad = grad.to(exp_avg.dtype)
        if weight_decay != 0:
            if o.decoupled_weight_decay:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param.to(grad.dtype), alpha=weight_decay)

        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        v = exp_avg_sq
        if o.amsgrad:
            max_exp_avg_sq.copy_(torch.maximum(max_exp_avg_sq, exp_avg_sq))
            v = max_exp_avg_sq

        step = step_t.to(torch.float64) if o.capturable else _get_value(step_t)  # bias corrections in float64
        cdtype = _compute_dtype(torch.promote_types(param.dtype, exp_avg.dtype))
        copy = torch.is_grad_enabled()  # differentiable: autograd must not see the state change in place later
        p = torch.as_tensor(o.p, dtype=torch.float64, device=param.device)
        d = _step_per_unit_lr(exp_avg.to(cdtype, copy=copy), v.to(cdtype, copy=copy), 1 - beta1**step,
                              1 - beta2**step, p, o.eps, o.scale)
        if isinstance(lr, Tensor):
            param.sub_((d * lr).to(param.dtype))
        else:
            param.add_(d.to(param.dtype), alpha=-lr)
