"""The fused NSF step: the foreach path's folded arithmetic, compiled by ``torch.compile``.

Each (parameter list, exponent kind, option set) gets its own compiled graph. Every value that moves during
training — ``p`` (for the general kernels), ``lr``, the betas, the weight decay and the per-tensor bias
corrections — is a tensor input computed on the device, so a moving ``p`` or an lr schedule never
recompiles and no step reads a device value on the host. Only the exponent's *kind* is static: ``|p|`` a
multiple of ⅛ up to 1 gets a square-root chain (exact, no log/exp per element), ``p = 0`` no power at all, and
every other ``p`` one general kernel per sign with ``|p|`` as a runtime input: per parameter list and option
set, at most nineteen kernels for the raw scale and thirty-eight (nineteen kinds × two stages) for a grafted
one, whatever the p schedule does.

The raw scale is one pass over θ, g, m, v. The grafted scales take two: the per-tensor norms of the new moments'
direction, reduced inside the kernel (over the finite entries, in float64) without writing anything, then one
pass as the raw scale's that writes m, v and the rescaled step, whose factors are formed on the device from
those norms.

If compiling fails (no C++ compiler, an unsupported platform), that optimizer and configuration warn once
and take the foreach path; other optimizers and configurations still compile.
"""

from __future__ import annotations

import threading
import types
import warnings
import weakref
from typing import Any, Callable

import torch
from torch import Tensor

from ._foreach import FAST_EXPONENTS, _group_tensors, _multi_tensor_nsf
from ._reference import _compute_dtype, _graft_ratio


#: torch.compile backend of the fused kernels: "inductor"; the tests also use "eager" (dynamo traces, no C++
#: compile) and None (the kernels' Python run as it is, no dynamo at all).
BACKEND: str | None = "inductor"

#: devices and dtypes the fused step supports (checked before anything is compiled or written).
DEVICES = ("cpu", "cuda", "xpu")
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_lock = threading.Lock()
_kernels: dict[tuple, Callable] = {}
#: compile failures: {id of an optimizer's first parameter: configurations}, dropped with that parameter
_failed: dict[int, set] = {}


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


def available() -> bool:
    """Whether the fused path can be tried here (torch.compile exists)."""
    return hasattr(torch, "compile")


def check_support(params: list[Tensor]) -> None:
    """Raise the ``RuntimeError`` torch's fused optimizers raise for a device or dtype the kernels cannot run."""
    for q in params:
        if q.device.type not in DEVICES or (q.dtype not in DTYPES and not q.is_complex()):
            raise RuntimeError(
                f"`fused=True` requires all the params to be floating point Tensors of supported devices: "
                f"{list(DEVICES)}, but got a {q.dtype} parameter on {q.device.type}")


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


def _x_pow(x: Tensor, hyper: Tensor, kind: str, cdtype) -> Tensor:
    """x^|p|: a square-root chain for the fast kinds, exp(|p|·log x) for the general one (0 at x = 0)."""
    if kind.endswith("pow"):
        return torch.exp(torch.log(x) * hyper[5].to(cdtype))
    return _power(x, float(kind[1:]))


def _moments(param, grad, m, v, vmax, hyper, *, amsgrad, maximize, wd_mode, cdtype):
    """The new moments as stored (state dtype), not written: (m, v, running max of v or None).

    hyper = (1 − β1, β2, 1 − β2, λ, 1 − ηλ, |p|).
    """
    g = grad.to(cdtype)
    if maximize:
        g = -g
    if wd_mode == "coupled":
        g = g + hyper[3] * param.to(cdtype)
    m_new = m.to(cdtype).lerp(g, hyper[0].to(cdtype))
    v_new = v.to(cdtype) * hyper[1] + (hyper[2] * g) * g  # addcmul's order: (1 − β2)·g first, no early overflow
    m_new, v_new = m_new.to(m.dtype), v_new.to(v.dtype)  # the values as stored (state_dtype rounding)
    vmax_new = torch.maximum(vmax, v_new).to(vmax.dtype) if amsgrad else None
    return m_new, v_new, vmax_new


def _update(param, grad, m, v, vmax, hyper, *, amsgrad, maximize, wd_mode, cdtype):
    """The moment updates, in place; returns (m, x) in the compute dtype, x = v or its running max. The new
    values are used, not re-read from the mutated inputs: inductor then fuses it all in one loop."""
    m_new, v_new, vmax_new = _moments(param, grad, m, v, vmax, hyper, amsgrad=amsgrad, maximize=maximize,
                                      wd_mode=wd_mode, cdtype=cdtype)
    m.copy_(m_new)
    v.copy_(v_new)
    if amsgrad:
        vmax.copy_(vmax_new)
    return m_new.to(cdtype), (vmax_new if amsgrad else v_new).to(cdtype)


def _kernel_body(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, scalars, hyper, *, kind, amsgrad,
                 maximize, wd_mode, cdtype):
    """One raw-scale NSF step, the bias corrections folded into the per-tensor scalars (as the foreach path):
    scalars[i] = (α_i, ε_i)."""
    for i in range(len(params)):
        param = params[i]
        m_c, x = _update(param, grads[i], exp_avgs[i], exp_avg_sqs[i], max_exp_avg_sqs[i] if amsgrad else None,
                         hyper, amsgrad=amsgrad, maximize=maximize, wd_mode=wd_mode, cdtype=cdtype)
        eps_i = scalars[i, 1].to(cdtype)
        if kind == "zero":
            d = m_c
        elif kind[0] == "+":
            d = m_c / (_x_pow(x, hyper, kind, cdtype) + eps_i)
        else:
            d = m_c * _x_pow(x, hyper, kind, cdtype)
        new = param.to(cdtype)
        if wd_mode == "decoupled":
            new = new * hyper[4]
        param.copy_((new + scalars[i, 0].to(cdtype) * d).to(param.dtype))


def _graft_q(x: Tensor, eps_i: Tensor, hyper: Tensor, kind: str, cdtype) -> tuple[Tensor, Tensor]:
    """(x clamped, q) with the direction ∝ m·q (``_reference._graft_terms``): q = 1/(x^p + ε_i) for p > 0,
    x^|p| for p < 0 (scaled by the stage-1 max in stage 2), 1 for p = 0. An overflowed v counts as the largest
    float; a NaN v (where m is NaN too) stays NaN and is masked out of the norms."""
    fmax = torch.finfo(cdtype).max
    x = x.clamp(max=fmax)  # (nan_to_num is not vectorised by inductor on the CPU: 2× slower)
    if kind == "zero":
        return x, torch.ones_like(x)
    x_pow = _x_pow(x, hyper, kind, cdtype).clamp(max=fmax)
    return x, (1 / (x_pow + eps_i) if kind[0] == "+" else x_pow)


def _finite(m: Tensor, x: Tensor) -> Tensor:
    """isfinite(m) & isfinite(x) for x ≥ 0 clamped to the largest float (so never inf), as one add and one
    compare per element instead of two isfinite (measured 10–20 % of the grafted stage 1 on the CPU)."""
    return (m.abs() * 0.5 + x * 0.5) < float("inf")


def _sq_sum(t: Tensor) -> Tensor:
    """Σ t² in float64 (no overflow for float32 inputs); t already masked. Masking in the compute dtype before
    the cast keeps inductor's CPU code vectorised (isfinite on float64 was measured 4× slower)."""
    t = t.to(torch.float64)
    return (t * t).sum()


def _graft_body(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, scalars, hyper, *, kind, amsgrad,
                maximize, wd_mode, cdtype, scale):
    """Grafted scales, stage 1, reading only: per tensor, (‖d‖², ‖r‖², k) of the *new* moments over the finite
    entries in float64, with d = m·q and r the reference step up to 1/bc1; k the largest q when p < 0 (else 1).
    scalars[i] = (ε_i, 1/√bc2_i, ε). Nothing is written: inductor's CPU code never stores into an input inside
    a reduction loop (it writes a temporary and copies it, or recomputes the store in a third loop), so the
    moments are written by stage 2, which recomputes them."""
    out = []
    for i in range(len(params)):
        m_new, v_new, vmax_new = _moments(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i],
                                          max_exp_avg_sqs[i] if amsgrad else None, hyper, amsgrad=amsgrad,
                                          maximize=maximize, wd_mode=wd_mode, cdtype=cdtype)
        m_c = m_new.to(cdtype)
        x, q = _graft_q((vmax_new if amsgrad else v_new).to(cdtype), scalars[i, 0].to(cdtype), hyper, kind, cdtype)
        good = _finite(m_c, x)  # the reference's good coordinates: m and v finite
        m_good, q_good = torch.where(good, m_c, 0), torch.where(good, q, 0)
        if scale == "sgd":
            r = m_good
        else:  # m̂/(√v̂ + ε) · bc1 = m/(√v/√bc2 + ε); √x unmasked, so it is the square-root chain's first root
            r = torch.where(good, m_c / (x.sqrt() * scalars[i, 1].to(cdtype) + scalars[i, 2].to(cdtype)), 0)
        if kind == "zero" or kind[0] == "+" or q.numel() == 0:
            k = torch.ones((), dtype=torch.float64, device=q.device)
        else:
            k = q_good.amax().to(torch.float64)  # as the reference's k
        d = m_good.to(torch.float64) * q_good.to(torch.float64)  # float64: m·x^|p| may overflow float32
        out.append(torch.stack([(d * d).sum(), _sq_sum(r), k]))
    return torch.stack(out)


def _apply_body(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, scalars, factors, hyper, *, kind, amsgrad,
                maximize, wd_mode, cdtype):
    """Grafted scales, stage 2, one pass as the raw kernel: the moment updates (as in stage 1) and
    θ ← θ·(1 − ηλ if decoupled) + α_i·m·(q/k_i), with factors[i] = (α_i, 1/k_i) formed on the device from
    stage 1's norms. A non-finite m (a NaN/inf gradient) spoils only its own coordinate."""
    for i in range(len(params)):
        param = params[i]
        m_c, x = _update(param, grads[i], exp_avgs[i], exp_avg_sqs[i], max_exp_avg_sqs[i] if amsgrad else None,
                         hyper, amsgrad=amsgrad, maximize=maximize, wd_mode=wd_mode, cdtype=cdtype)
        _, q = _graft_q(x, scalars[i, 0].to(cdtype), hyper, kind, cdtype)
        new = param.to(cdtype)
        if wd_mode == "decoupled":
            new = new * hyper[4]
        d = m_c * (q * factors[i, 1].to(cdtype))
        param.copy_((new + factors[i, 0].to(cdtype) * d).to(param.dtype))


def _fresh_function(fn: Callable, name: str) -> Callable:
    """A copy of ``fn`` with its own code object: dynamo keeps its cache (and recompile limit) per code
    object, so every variant here compiles once and never evicts another."""
    code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def _get_kernel(key: tuple, fn: Callable, static: dict[str, Any]) -> tuple[tuple, Callable]:
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
        return key, kernel


_FAILED = object()


def _call(owner: Tensor, key_kernel: tuple[tuple, Callable], *args):
    """Run a compiled kernel; ``_FAILED`` when it failed to compile: then this optimizer (``owner``, its first
    parameter) takes the foreach path for this configuration, with one warning; nothing else is affected."""
    key, kernel = key_kernel
    try:
        with torch.no_grad():
            return kernel(*args)
    except Exception as e:  # compile failures surface on the first call, before any tensor is written
        if not _is_compile_failure(e):
            raise
        with _lock:
            _kernels.pop(key, None)  # the next optimizer with this configuration tries afresh
            if id(owner) not in _failed:
                _failed[id(owner)] = set()
                weakref.finalize(owner, _failed.pop, id(owner), None)
            _failed[id(owner)].add(key[2:])
        message = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        warnings.warn(f"NSF: the fused (torch.compile) step failed to compile ({message}); this optimizer takes "
                      "the foreach path for this configuration", RuntimeWarning, stacklevel=5)
        return _FAILED


def _on_device(values: list[float], device: torch.device) -> Tensor:
    """A float64 vector of host values on ``device``: copied from the host normally, filled on the device while
    a CUDA graph is being captured (a host-to-device copy cannot be captured)."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return torch.stack([torch.full((), v, dtype=torch.float64, device=device) for v in values])
    return torch.tensor(values, dtype=torch.float64).to(device, non_blocking=True)


def _scalars(steps, p_value, lr, beta1, beta2, eps, weight_decay, device, scalar_dtype, graft: bool):
    """Per-tensor scalars, the hyper-parameter vector and the bias corrections bc1, as device tensors formed
    from the step counts by tensor ops (no host read of a count, whether the counts live on the host or not)."""
    t = torch.stack(steps).to(device=device, dtype=torch.float64, non_blocking=True) + 1
    bc1, bc2 = 1 - beta1**t, 1 - beta2**t
    a = abs(p_value)
    lr_t = lr.to(device=device, dtype=torch.float64, non_blocking=True).reshape(()) if isinstance(lr, Tensor) \
        else lr
    if graft:  # (ε_i, 1/√bc2_i, ε)
        eps_i = eps * bc2**a if p_value > 0 else torch.zeros_like(t)
        scalars = torch.stack([eps_i, bc2.rsqrt(), torch.full_like(t, eps)], 1)
    elif p_value > 0:  # (α_i, ε_i)
        scalars = torch.stack([-lr_t * bc2**a / bc1, eps * bc2**a], 1)
    else:
        alpha = -lr_t / (bc1 * bc2**a) if p_value < 0 else -lr_t / bc1
        scalars = torch.stack([alpha, torch.zeros_like(t)], 1)
    hyper = _on_device([1 - beta1, beta2, 1 - beta2, weight_decay, 1.0, a], device)
    if weight_decay != 0:
        hyper = torch.cat([hyper[:4], (1 - lr_t * weight_decay) * hyper[4:5], hyper[5:]])
    return scalars.to(scalar_dtype), hyper.to(scalar_dtype), bc1, lr_t


def fused_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, p, lr, beta1, beta2, eps,
               weight_decay, amsgrad, decoupled_weight_decay, maximize, cdtype, scale="raw") -> bool:
    """One NSF step over tensors that share a device and dtypes. Returns False (having changed nothing) when
    the fused path failed to compile for this optimizer and configuration, so the caller takes the foreach
    path."""
    p_value = float(p)  # p lives on the host (group["p"]): reading it syncs no device
    device = params[0].device
    kind = exponent_kind(p_value)
    wd_mode = "none" if weight_decay == 0 else ("decoupled" if decoupled_weight_decay else "coupled")
    key = (kind, amsgrad, maximize, wd_mode, cdtype, scale, device, params[0].dtype, grads[0].dtype,
           exp_avgs[0].dtype, tuple(q.shape for q in params))
    failed = _failed.get(id(params[0]), ())
    if key in failed or ("apply", *key) in failed:
        return False
    scalar_dtype = torch.float64 if cdtype == torch.float64 else torch.float32
    scalars, hyper, bc1, lr_t = _scalars(steps, p_value, lr, beta1, beta2, eps, weight_decay, device,
                                         scalar_dtype, graft=scale != "raw")
    static = dict(kind=kind, amsgrad=amsgrad, maximize=maximize, wd_mode=wd_mode, cdtype=cdtype)
    vmaxes = max_exp_avg_sqs if amsgrad else []
    if scale == "raw":
        if _call(params[0], _get_kernel(key, _kernel_body, static), params, grads, exp_avgs, exp_avg_sqs, vmaxes,
                 scalars, hyper) is _FAILED:
            return False
        torch._foreach_add_(steps, 1.0)
        return True

    sums = _call(params[0], _get_kernel(key, _graft_body, {**static, "scale": scale}), params, grads, exp_avgs,
                 exp_avg_sqs, vmaxes, scalars, hyper)
    if sums is _FAILED:
        return False
    k = sums[:, 2]
    ratio = _graft_ratio(sums[:, 0].sqrt() / k, sums[:, 1].sqrt(), bc1)  # ‖m·q/k‖ against ‖r‖/bc1
    inv_k = torch.where(k > 0, 1 / torch.where(k > 0, k, 1.0), 0.0)  # k = 0: a zero direction, no step
    factors = torch.stack([-lr_t * ratio, inv_k], 1).to(scalar_dtype)
    if _call(params[0], _get_kernel(("apply", *key), _apply_body, static), params, grads, exp_avgs, exp_avg_sqs,
             vmaxes, scalars, factors, hyper) is _FAILED:
        return False  # stage 1 wrote nothing: the foreach path takes this step
    torch._foreach_add_(steps, 1.0)
    return True


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
    """The compiled step: the foreach path's arithmetic in one pass per tensor (two for the grafted scales);
    a device/dtype group whose compile fails takes the foreach path."""
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
