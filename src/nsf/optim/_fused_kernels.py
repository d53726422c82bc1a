"""The fused step's kernels: the Python that ``torch.compile`` traces (``_fused.py`` compiles and runs them).

A kernel is specialised on a ``KernelConfig`` (constants to dynamo) and takes every moving value as a tensor:
the hyper-parameters as one ``Hyper`` vector and the per-tensor scalars as one ``[n, fields]`` matrix, each
packed on the host by field name and unpacked by name here (one input tensor each, however many fields).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._foreach import FAST_EXPONENTS
from ._step_options import StepOptions


def exponent_kind(p: float) -> str:
    """``"zero"``, ``"+0.5"``-style fast kinds, or ``"+pow"``/``"-pow"`` for a general exponent (the sign is
    static: a runtime sign would make every element pay for both the division and the product)."""
    if p == 0:
        return "zero"
    sign = "+" if p > 0 else "-"
    return f"{sign}{abs(p)}" if abs(p) in FAST_EXPONENTS else f"{sign}pow"


def is_fast(p: float) -> bool:
    """True when ``p`` needs no log/exp per element (p = 0 or |p| a multiple of ⅛ up to 1)."""
    return not exponent_kind(p).endswith("pow")


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """What a kernel is compiled for: each distinct value gets its own graph."""

    kind: str  # exponent_kind(p)
    amsgrad: bool
    maximize: bool
    weight_decay: str  # "none", "coupled" or "decoupled"
    cdtype: torch.dtype  # the compute dtype
    scale: str
    #: the grafted norms' accumulation dtype: float64 (safe from overflow and underflow), or the compute dtype
    #: float32 where the caller checks the sums on the host and redoes them in float64 when they may be wrong
    accumulate: torch.dtype = torch.float64

    @classmethod
    def of(cls, options: StepOptions, p_value: float, cdtype: torch.dtype,
           accumulate: torch.dtype = torch.float64) -> KernelConfig:
        decay = "none" if options.weight_decay == 0 else ("decoupled" if options.decoupled_weight_decay
                                                         else "coupled")
        return cls(exponent_kind(p_value), options.amsgrad, options.maximize, decay, cdtype, options.scale,
                   accumulate)


class Hyper(NamedTuple):
    """The step's hyper-parameters (one device vector)."""

    one_minus_beta1: Any
    beta2: Any
    one_minus_beta2: Any
    weight_decay: Any
    decay: Any  # 1 − ηλ, decoupled weight decay's factor
    abs_p: Any  # |p|, read by the general-power kernels


class RawScalars(NamedTuple):
    """Per tensor, the raw step θ ← θ + alpha·m·f(v) with the bias corrections folded in:
    f(v) = 1/(v^p + eps) for p > 0, v^|p| for p < 0, 1 for p = 0."""

    alpha: Any
    eps: Any  # ε·bc2^p for p > 0, else 0


class GraftScalars(NamedTuple):
    """Per tensor, the grafted direction d = m·q and Adam's reference step (both up to 1/bc1)."""

    eps: Any  # q = 1/(v^p + eps) for p > 0: ε·bc2^p, else 0
    inv_sqrt_bc2: Any  # Adam's step: m/(√v/√bc2 + adam_eps)
    adam_eps: Any


class GraftNorms(NamedTuple):
    """Per tensor, stage 1's output: over the finite coordinates, accumulated in ``KernelConfig.accumulate``
    and returned in float64."""

    d_sq: Any  # ‖m·q‖²
    r_sq: Any  # ‖reference step‖² (up to 1/bc1)
    k: Any  # the largest q (p < 0), else 1: the direction is m·q/k
    m_max: Any  # the largest |m| (float32 accumulation only, else 1): 0 when both norms are exactly 0


class GraftFactors(NamedTuple):
    """Per tensor, stage 2's factors: θ ← θ + alpha·m·q·inv_k."""

    alpha: Any  # −η · the graft ratio
    inv_k: Any


def pack(fields: NamedTuple) -> Tensor:
    """Per-tensor fields (vectors of equal length) as one ``[n, fields]`` matrix, columns in field order."""
    return torch.stack(tuple(fields), 1)


def _power(x: Tensor, a: float) -> Tensor:
    """x ** a for the fast exponents (multiples of ⅛ up to 1): the product of the roots x^½, x^¼, x^⅛ that
    the binary digits of ``a`` select, each root taken from the previous one."""
    if a == 1.0:
        return x
    out, root = None, x
    for bit in (0.5, 0.25, 0.125):
        root = root.sqrt()
        if a >= bit:
            a -= bit
            out = root if out is None else out * root
        if a == 0:
            break
    return out


def _x_pow(x: Tensor, h: Hyper, config: KernelConfig) -> Tensor:
    """x^|p|: a square-root chain for the fast kinds, exp(|p|·log x) for the general one (0 at x = 0)."""
    if config.kind.endswith("pow"):
        return torch.exp(torch.log(x) * h.abs_p.to(config.cdtype))
    return _power(x, float(config.kind[1:]))


def _moments(param, grad, m, v, vmax, h: Hyper, config: KernelConfig):
    """The new moments as stored (state dtype), not written: (m, v, running max of v or None)."""
    g = grad.to(config.cdtype)
    if config.maximize:
        g = -g
    if config.weight_decay == "coupled":
        g = g + h.weight_decay * param.to(config.cdtype)
    m_new = m.to(config.cdtype).lerp(g, h.one_minus_beta1.to(config.cdtype))
    v_new = v.to(config.cdtype) * h.beta2 + (h.one_minus_beta2 * g) * g  # addcmul's order: no early overflow
    m_new, v_new = m_new.to(m.dtype), v_new.to(v.dtype)  # the values as stored (state_dtype rounding)
    vmax_new = torch.maximum(vmax, v_new).to(vmax.dtype) if config.amsgrad else None
    return m_new, v_new, vmax_new


def _update(param, grad, m, v, vmax, h: Hyper, config: KernelConfig):
    """The moment updates, in place; returns (m, x) in the compute dtype, x = v or its running max. The new
    values are used, not re-read from the mutated inputs: inductor then fuses it all in one loop."""
    m_new, v_new, vmax_new = _moments(param, grad, m, v, vmax, h, config)
    m.copy_(m_new)
    v.copy_(v_new)
    if config.amsgrad:
        vmax.copy_(vmax_new)
    return m_new.to(config.cdtype), (vmax_new if config.amsgrad else v_new).to(config.cdtype)


def _decayed(param: Tensor, h: Hyper, config: KernelConfig) -> Tensor:
    """θ in the compute dtype, times 1 − ηλ under decoupled weight decay."""
    new = param.to(config.cdtype)
    return new * h.decay if config.weight_decay == "decoupled" else new


def raw_kernel(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, scalars, hyper, *, config):
    """One raw-scale NSF step, one pass per tensor; ``scalars``: packed ``RawScalars``."""
    h, s = Hyper(*hyper.unbind(-1)), RawScalars(*scalars.unbind(-1))
    for i in range(len(params)):
        param = params[i]
        m_c, x = _update(param, grads[i], exp_avgs[i], exp_avg_sqs[i],
                         max_exp_avg_sqs[i] if config.amsgrad else None, h, config)
        if config.kind == "zero":
            d = m_c
        elif config.kind[0] == "+":
            d = m_c / (_x_pow(x, h, config) + s.eps[i].to(config.cdtype))
        else:
            d = m_c * _x_pow(x, h, config)
        param.copy_((_decayed(param, h, config) + s.alpha[i].to(config.cdtype) * d).to(param.dtype))


def _graft_q(x: Tensor, eps_i: Tensor, h: Hyper, config: KernelConfig) -> tuple[Tensor, Tensor]:
    """(x clamped, q) with the direction ∝ m·q (``_single_tensor._graft_terms``): q = 1/(x^p + ε_i) for p > 0,
    x^|p| for p < 0 (scaled by the stage-1 max in stage 2), 1 for p = 0. An overflowed v counts as the largest
    float; a NaN v (where m is NaN too) stays NaN and is masked out of the norms."""
    fmax = torch.finfo(config.cdtype).max
    x = x.clamp(max=fmax)  # (nan_to_num is not vectorised by inductor on the CPU: 2× slower)
    if config.kind == "zero":
        return x, torch.ones_like(x)
    x_pow = _x_pow(x, h, config).clamp(max=fmax)
    return x, (1 / (x_pow + eps_i) if config.kind[0] == "+" else x_pow)


def _finite(m: Tensor, x: Tensor) -> Tensor:
    """isfinite(m) & isfinite(x) for x ≥ 0 clamped to the largest float (so never inf), as one add and one
    compare per element instead of two isfinite (measured 10–20 % of the grafted stage 1 on the CPU)."""
    return (m.abs() * 0.5 + x * 0.5) < float("inf")


def _sq_sum(t: Tensor, dtype: torch.dtype) -> Tensor:
    """Σ t² accumulated in ``dtype``, as float64; t already masked. In float64 it cannot overflow for float32
    inputs; masking in the compute dtype before the cast keeps inductor's CPU code vectorised (isfinite on
    float64 was measured 4× slower). In float32 the caller checks the sum (``_fused.plain_sums_ok``)."""
    t = t.to(dtype)
    return (t * t).sum().to(torch.float64)


def graft_norms_kernel(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, scalars, hyper, *, config):
    """Grafted scales, stage 1, reading only: packed ``GraftNorms`` of the *new* moments (``scalars``: packed
    ``GraftScalars``). Nothing is written: inductor's CPU code never stores into an input inside a reduction
    loop (it writes a temporary and copies it, or recomputes the store in a third loop), so the moments are
    written by stage 2, which recomputes them."""
    h, s = Hyper(*hyper.unbind(-1)), GraftScalars(*scalars.unbind(-1))
    cdtype = config.cdtype
    out = []
    for i in range(len(params)):
        m_new, v_new, vmax_new = _moments(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i],
                                          max_exp_avg_sqs[i] if config.amsgrad else None, h, config)
        m_c = m_new.to(cdtype)
        x, q = _graft_q((vmax_new if config.amsgrad else v_new).to(cdtype), s.eps[i].to(cdtype), h, config)
        good = _finite(m_c, x)  # the reference's good coordinates: m and v finite
        m_good, q_good = torch.where(good, m_c, 0), torch.where(good, q, 0)
        if config.scale == "sgd":
            r = m_good
        else:  # m̂/(√v̂ + ε) · bc1 = m/(√v/√bc2 + ε); √x unmasked, so it is the square-root chain's first root
            r = torch.where(good, m_c / (x.sqrt() * s.inv_sqrt_bc2[i].to(cdtype) + s.adam_eps[i].to(cdtype)), 0)
        one = torch.ones((), dtype=torch.float64, device=q.device)
        if config.kind == "zero" or config.kind[0] == "+" or q.numel() == 0:
            k = one
        else:
            k = q_good.amax().to(torch.float64)  # as the single-tensor path's k
        acc = config.accumulate  # float64: m·x^|p| may overflow float32
        if acc == torch.float64:
            m_max = one
        else:  # an empty tensor counts as a zero m: its sums (0) are exact
            m_max = m_good.abs().amax().to(torch.float64) if q.numel() else 0 * one
        out.append(torch.stack(GraftNorms(d_sq=_sq_sum(m_good.to(acc) * q_good.to(acc), acc),
                                          r_sq=_sq_sum(r, acc), k=k, m_max=m_max)))
    return torch.stack(out)


def graft_apply_kernel(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, scalars, factors, hyper, *, config):
    """Grafted scales, stage 2, one pass as the raw kernel: the moment updates (as in stage 1) and
    θ ← θ·(1 − ηλ if decoupled) + alpha·m·q·inv_k (``factors``: packed ``GraftFactors``, formed on the device
    from stage 1's norms). A non-finite m (a NaN/inf gradient) spoils only its own coordinate."""
    h, s, f = Hyper(*hyper.unbind(-1)), GraftScalars(*scalars.unbind(-1)), GraftFactors(*factors.unbind(-1))
    for i in range(len(params)):
        param = params[i]
        m_c, x = _update(param, grads[i], exp_avgs[i], exp_avg_sqs[i],
                         max_exp_avg_sqs[i] if config.amsgrad else None, h, config)
        _, q = _graft_q(x, s.eps[i].to(config.cdtype), h, config)
        d = m_c * (q * f.inv_k[i].to(config.cdtype))
        param.copy_((_decayed(param, h, config) + f.alpha[i].to(config.cdtype) * d).to(param.dtype))
