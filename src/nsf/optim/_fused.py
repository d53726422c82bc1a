"""The fused NSF step: the foreach path's folded arithmetic, compiled by ``torch.compile`` into one pass.

Each (parameter list, exponent kind, option set) gets its own compiled graph. Every value that moves during
training — ``p`` (for the general kernel), ``lr``, the betas, the weight decay and the per-tensor bias
corrections — is a tensor input, so a moving ``p`` or an lr schedule never recompiles. Only the exponent's
*kind* is static: ``|p| ∈ {¼, ½, ¾, 1}`` get square-root chains (exact, no log/exp per element), ``p = 0`` no
power at all, and every other ``p`` one general kernel with ``p`` as a runtime input. So a training run
compiles at most ten variants per parameter list, whatever its p schedule does.

If compiling fails (no C++ compiler, an unsupported platform), the optimizer warns once and takes the foreach
path from then on.
"""

from __future__ import annotations

import math
import threading
import types
import warnings
from typing import Any, Callable

import torch
from torch import Tensor

from ._foreach import _group_tensors, _multi_tensor_nsf
from ._reference import _compute_dtype, _reference_step

#: |p| values with an exact square-root chain (and p = 0, which needs no power at all).
FAST_EXPONENTS = (0.25, 0.5, 0.75, 1.0)

#: torch.compile backend of the fused kernels: "inductor"; the tests also use "eager" (dynamo traces, no C++
#: compile) and None (the kernels' Python run as it is, no dynamo at all).
BACKEND: str | None = "inductor"

_lock = threading.Lock()
_kernels: dict[tuple, Callable] = {}
_broken: list[str] = []  # the first compile error, once compiling has failed
_compile_counts: dict[str, int] = {"graphs": 0}


def exponent_kind(p: float) -> str:
    """``"zero"``, ``"+0.5"``-style fast kinds, or ``"pow"`` for a general exponent."""
    if p == 0:
        return "zero"
    if abs(p) in FAST_EXPONENTS:
        return f"{'+' if p > 0 else '-'}{abs(p)}"
    return "pow"


def is_fast(p: float) -> bool:
    """True when ``p`` needs no log/exp per element (p = 0 or |p| ∈ {¼, ½, ¾, 1})."""
    return exponent_kind(p) != "pow"


def available() -> bool:
    """Whether the fused path can be tried here (torch.compile exists and has not failed in this process)."""
    return hasattr(torch, "compile") and not _broken


def compile_count() -> int:
    """How many fused graphs this process has compiled (for tests and logs)."""
    return _compile_counts["graphs"]


def _power(x: Tensor, a: float) -> Tensor:
    """x ** a for the fast exponents, by square roots."""
    if a == 0.25:
        return x.sqrt().sqrt()
    if a == 0.5:
        return x.sqrt()
    if a == 0.75:
        r = x.sqrt()
        return r * r.sqrt()
    return x  # a == 1


def _update_and_direction(param, grad, m, v, vmax, row, hyper, *, kind, amsgrad, maximize, wd_mode, cdtype):
    """Moment updates in place, then (m, x, d): x = v (or its running max), d a per-tensor multiple of the step.

    hyper = (1 − β1, β2, 1 − β2, λ, 1 − ηλ, |p|, sign p); row = scalars[i] = (α_i, ε_i, 1/√bc2_i, ε).
    """
    g = grad.to(cdtype)
    if maximize:
        g = -g
    if wd_mode == "coupled":
        g = g + hyper[3] * param.to(cdtype)
    m_new = m.to(cdtype).lerp(g, hyper[0].to(cdtype))
    v_new = v.to(cdtype) * hyper[1] + (hyper[2] * g) * g  # addcmul's order: (1 − β2)·g first, no early overflow
    m.copy_(m_new.to(m.dtype))
    v.copy_(v_new.to(v.dtype))
    m_c, x = m.to(cdtype), v.to(cdtype)
    if amsgrad:
        vmax.copy_(torch.maximum(vmax, v).to(vmax.dtype))
        x = vmax.to(cdtype)
    eps_i = row[1].to(cdtype)
    if kind == "zero":
        d = m_c
    elif kind == "pow":  # any sign: v^|p| once, then divide (p > 0) or multiply (p < 0)
        x_pow = torch.exp(torch.log(x) * hyper[5].to(cdtype))  # x^a for a > 0: cheaper than pow, 0 at x = 0
        d = torch.where(hyper[6] > 0, m_c / (x_pow + eps_i), m_c * x_pow)
    elif kind[0] == "+":
        d = m_c / (_power(x, float(kind[1:])) + eps_i)
    else:
        d = m_c * _power(x, float(kind[1:]))
    return m_c, x, d


def _kernel_body(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, scalars, hyper, *, kind, amsgrad,
                 maximize, wd_mode, cdtype):
    """One raw-scale NSF step, the bias corrections folded into the per-tensor scalars (as the foreach path)."""
    for i in range(len(params)):
        param = params[i]
        _, _, d = _update_and_direction(
            param, grads[i], exp_avgs[i], exp_avg_sqs[i], max_exp_avg_sqs[i] if amsgrad else None, scalars[i],
            hyper, kind=kind, amsgrad=amsgrad, maximize=maximize, wd_mode=wd_mode, cdtype=cdtype)
        new = param.to(cdtype)
        if wd_mode == "decoupled":
            new = new * hyper[4]
        param.copy_((new + scalars[i, 0].to(cdtype) * d).to(param.dtype))


def _graft_body(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, scalars, hyper, *, kind, amsgrad,
                maximize, wd_mode, cdtype, scale):
    """Grafted scales, stage 1: moment updates, the directions d_i, and per tensor ‖d_i‖², ‖r_i‖² (r: the
    reference step, up to the per-tensor factor 1/bc1)."""
    directions, sums = [], []
    for i in range(len(params)):
        m_c, x, d = _update_and_direction(
            params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], max_exp_avg_sqs[i] if amsgrad else None,
            scalars[i], hyper, kind=kind, amsgrad=amsgrad, maximize=maximize, wd_mode=wd_mode, cdtype=cdtype)
        if scale == "sgd":
            r = m_c
        else:  # m̂/(√v̂ + ε) · bc1 = m/(√v/√bc2 + ε)
            r = m_c / (x.sqrt() * scalars[i, 2].to(cdtype) + scalars[i, 3].to(cdtype))
        directions.append(d)
        sums.append(torch.stack([(d * d).sum(), (r * r).sum()]))
    return directions, torch.stack(sums)


def _apply_body(params, directions, alphas, hyper, *, wd_mode, cdtype):
    """Grafted scales, stage 2: θ ← θ·(1 − ηλ if decoupled) + α_i·d_i."""
    for i in range(len(params)):
        param = params[i]
        new = param.to(cdtype)
        if wd_mode == "decoupled":
            new = new * hyper[4]
        alpha = alphas[i].to(cdtype)
        step = torch.where(alpha != 0, alpha * directions[i], 0.0)  # α = 0: no step, even where d overflowed
        param.copy_((new + step).to(param.dtype))


def _fresh_function(fn: Callable, name: str) -> Callable:
    """A copy of ``fn`` with its own code object: dynamo keeps its cache (and recompile limit) per code
    object, so every variant here compiles once and never evicts another."""
    code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def _get_kernel(key: tuple, fn: Callable, static: dict[str, Any]) -> Callable:
    key = (BACKEND, fn.__name__, *key)
    with _lock:
        kernel = _kernels.get(key)
        if kernel is None:
            body = _fresh_function(fn, f"_nsf_fused_{len(_kernels)}")
            body.__kwdefaults__ = dict(static)  # constants to dynamo: this copy compiles for these options only
            if BACKEND is None:
                kernel = body
            else:
                kernel = torch.compile(body, backend=BACKEND, fullgraph=True, dynamic=False)
            _kernels[key] = kernel
            _compile_counts["graphs"] += 1
        return kernel


_FAILED = object()


def _call(kernel: Callable, *args):
    """Run a compiled kernel; ``_FAILED`` when compiling failed (then the fused path is off for this process)."""
    try:
        with torch.no_grad():
            return kernel(*args)
    except Exception as e:  # compile failures surface on the first call, before any tensor is written
        if not _is_compile_failure(e):
            raise
        _broken.append(f"{type(e).__name__}: {e}".splitlines()[0][:300])
        warnings.warn(f"NSF: the fused (torch.compile) step is unavailable here ({_broken[0]}); using the foreach "
                      "path instead", RuntimeWarning, stacklevel=5)
        return _FAILED


def fused_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, p, lr, beta1, beta2, eps,
               weight_decay, amsgrad, decoupled_weight_decay, maximize, cdtype, scale="raw") -> bool:
    """One NSF step over tensors that share a device and dtypes. Returns False (having changed nothing) when
    the fused path is unavailable, so the caller can take the foreach path."""
    if _broken:
        return False
    p_value = float(p)
    device = params[0].device
    lr = float(lr)
    kind = exponent_kind(p_value)
    a = abs(p_value)
    # the bias-correction scalars, in float64 on the host as the foreach path computes them
    counts = torch.stack(steps).tolist() if len(steps) > 1 else [float(steps[0])]
    rows_by_count: dict[float, tuple[float, ...]] = {}
    for count in set(counts):
        t = count + 1.0
        bc1, bc2 = 1.0 - beta1**t, 1.0 - beta2**t
        if p_value > 0:
            alpha, eps_i = -lr * bc2**a / bc1, eps * bc2**a
        elif p_value < 0:
            alpha, eps_i = -lr / (bc1 * bc2**a), 0.0
        else:
            alpha, eps_i = -lr / bc1, 0.0
        rows_by_count[count] = (alpha, eps_i, bc2**-0.5, eps, bc1)
    rows = [rows_by_count[c] for c in counts]
    scalar_dtype = torch.float64 if cdtype == torch.float64 else torch.float32
    scalars = torch.tensor([r[:4] for r in rows], dtype=scalar_dtype)
    hyper = torch.tensor(
        [1 - beta1, beta2, 1 - beta2, weight_decay, 1 - lr * weight_decay, a, math.copysign(1.0, p_value)],
        dtype=scalar_dtype)
    if device.type != "cpu":
        scalars, hyper = scalars.to(device, non_blocking=True), hyper.to(device, non_blocking=True)
    wd_mode = "none" if weight_decay == 0 else ("decoupled" if decoupled_weight_decay else "coupled")
    static = dict(kind=kind, amsgrad=amsgrad, maximize=maximize, wd_mode=wd_mode, cdtype=cdtype)
    key = (kind, amsgrad, maximize, wd_mode, cdtype, scale, device, params[0].dtype, grads[0].dtype,
           exp_avgs[0].dtype, tuple(q.shape for q in params))
    vmaxes = max_exp_avg_sqs if amsgrad else []
    if scale == "raw":
        if _call(_get_kernel(key, _kernel_body, static), params, grads, exp_avgs, exp_avg_sqs, vmaxes, scalars,
                 hyper) is _FAILED:
            return False
        torch._foreach_add_(steps, 1.0)
        return True

    out = _call(_get_kernel(key, _graft_body, {**static, "scale": scale}), params, grads, exp_avgs, exp_avg_sqs,
                vmaxes, scalars, hyper)
    if out is _FAILED:
        return False
    directions, sums = out
    torch._foreach_add_(steps, 1.0)
    alphas = []
    for i, ((d2, r2), row) in enumerate(zip(sums.tolist(), rows)):
        if math.isfinite(d2) and math.isfinite(r2):  # a zero d or reference gives a zero step, as in the spec
            alphas.append(-lr * math.sqrt(r2 / d2) / row[4] if d2 > 0 and r2 > 0 else 0.0)
            continue
        alphas.append(0.0)  # norms overflowed: this tensor takes the overflow-safe reference step instead
        decay = 1 - lr * weight_decay if wd_mode == "decoupled" else 1.0  # stage 2 multiplies θ by it
        _overflow_safe_step(params[i], exp_avgs[i], (max_exp_avg_sqs if amsgrad else exp_avg_sqs)[i], row,
                            p, eps, lr / decay if decay != 0 else lr, scale, cdtype)
    alphas_t = torch.tensor(alphas, dtype=scalar_dtype)
    if device.type != "cpu":
        alphas_t = alphas_t.to(device, non_blocking=True)
    apply_key = ("apply", wd_mode, cdtype, device, params[0].dtype, tuple(q.shape for q in params))
    if _call(_get_kernel(apply_key, _apply_body, dict(wd_mode=wd_mode, cdtype=cdtype)), params, directions,
             alphas_t, hyper) is _FAILED:
        raise RuntimeError("NSF: the fused step's second stage failed to compile after its first stage ran")
    return True


def _overflow_safe_step(param, m, v, row, p, eps, lr, scale, cdtype) -> None:
    """The specification, for the rare tensor whose norms overflow."""
    bc1, inv_sqrt_bc2 = row[4], row[2]
    with torch.no_grad():
        d = _reference_step(m.to(cdtype) / bc1, v.to(cdtype) * inv_sqrt_bc2**2, p.to(param.device), eps, scale)
        param.add_(d.to(param.dtype), alpha=-lr)


def _is_compile_failure(e: Exception) -> bool:
    names = {c.__name__ for c in type(e).__mro__}
    module = type(e).__module__ or ""
    return bool(names & {"BackendCompilerFailed", "InductorError", "CppCompileError", "TorchRuntimeError",
                         "Unsupported", "InternalTorchDynamoError"}) or module.startswith(("torch._dynamo",
                                                                                          "torch._inductor"))


def _fused_nsf(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, p, lr, beta1, beta2, eps,
    weight_decay, scale, amsgrad, decoupled_weight_decay, maximize, capturable, has_complex,
) -> None:
    """The compiled step (``_fused.py``): the foreach path's arithmetic in one pass per tensor (two for the
    grafted scales); a device/dtype group whose compile fails takes the foreach path."""
    grouped = _group_tensors(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps)
    for (device, dtype, sdtype), lists in grouped.items():
        d_params, d_grads, d_exp_avgs, d_exp_avg_sqs, d_max_exp_avg_sqs, d_steps = lists
        done = fused_step(
            d_params, d_grads, d_exp_avgs, d_exp_avg_sqs, d_max_exp_avg_sqs, d_steps, p=p, lr=lr, scale=scale,
            beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
            cdtype=_compute_dtype(torch.promote_types(dtype, sdtype)))
        if not done:
            _multi_tensor_nsf(
                d_params, d_grads, d_exp_avgs, d_exp_avg_sqs, d_max_exp_avg_sqs, d_steps,
                p=p, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, scale=scale,
                amsgrad=amsgrad, decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                capturable=capturable, has_complex=has_complex)
