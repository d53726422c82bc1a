"""The fused NSF step: the foreach path's folded arithmetic, compiled by ``torch.compile``. This module compiles,
caches and calls the kernels of ``_fused_kernels.py`` and forms their inputs. Contiguous float32 CPU tensors take
the same arithmetic in the native kernels of ``_native.py`` instead, where they build.

Each (parameter list, ``KernelConfig``: exponent kind and option set) gets its own compiled graph. Every value
that moves during training — ``p`` (for the general kernels), ``lr``, the betas, the weight decay and the
per-tensor bias corrections — is a tensor input computed on the device, so a moving ``p`` or an lr schedule
never recompiles and no step reads a device value on the host. Only the exponent's *kind* is static: ``|p|`` a
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

import dataclasses
import threading
import types
import warnings
import weakref
from typing import Callable

import torch
from torch import Tensor

from . import _native
from ._foreach import _PLAIN_NORM_MARGIN, _group_tensors, _multi_tensor_nsf
from ._fused_kernels import (GraftFactors, GraftNorms, GraftScalars, Hyper, KernelConfig, RawScalars,
                             graft_apply_kernel, graft_norms_kernel, pack, raw_kernel)
from ._single_tensor import _compute_dtype, _graft_ratio
from ._step_options import StepOptions


#: torch.compile backend of the fused kernels: "inductor"; the tests also use "eager" (dynamo traces, no C++
#: compile) and None (the kernels' Python run as it is, no dynamo at all).
BACKEND: str | None = "inductor"

#: devices and dtypes the fused step supports (checked before anything is compiled or written).
DEVICES = ("cpu", "cuda", "xpu")
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: contiguous float32 CPU tensors take the native kernels (``_native.py``) where they build; the tests switch
#: them off to test the compiled kernels' arithmetic, and on to test the native kernels'
NATIVE = True

_lock = threading.Lock()
_kernels: dict[tuple, Callable] = {}
#: compile failures: {id of an optimizer's first parameter: configurations}, dropped with that parameter
_failed: dict[int, set] = {}


def check_support(params: list[Tensor]) -> None:
    """Raise the ``RuntimeError`` torch's fused optimizers raise for a device or dtype the kernels cannot run."""
    for q in params:
        if q.device.type not in DEVICES or (q.dtype not in DTYPES and not q.is_complex()):
            raise RuntimeError(
                f"`fused=True` requires all the params to be floating point Tensors of supported devices: "
                f"{list(DEVICES)}, but got a {q.dtype} parameter on {q.device.type}")


def _fresh_function(fn: Callable, name: str) -> Callable:
    """A copy of ``fn`` with its own code object: dynamo keeps its cache (and recompile limit) per code
    object, so every variant here compiles once and never evicts another."""
    code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def _get_kernel(fn: Callable, key: tuple) -> tuple[tuple, Callable]:
    """The compiled copy of ``fn`` for ``key`` = (its ``KernelConfig``, then what else dynamo specialises on)."""
    key = (BACKEND, fn.__name__, *key)
    with _lock:
        kernel = _kernels.get(key)
        if kernel is None:
            body = _fresh_function(fn, f"{fn.__name__}_{len(_kernels)}")
            body.__kwdefaults__ = {"config": key[2]}  # a constant to dynamo: this copy compiles for it only
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
            _failed[id(owner)].add(key[2:])  # the configuration, whichever stage failed
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


def _scalars(steps, options: StepOptions, p_value: float, device: torch.device, scalar_dtype: torch.dtype):
    """The kernels' inputs as device tensors: the per-tensor scalars (packed ``RawScalars``, or ``GraftScalars``
    for a grafted scale), the packed ``Hyper`` vector, the bias corrections bc1 and the lr. They are formed from
    the step counts by tensor ops: no count is read on the host, wherever the counts live."""
    beta1, beta2 = options.betas
    eps, weight_decay, lr = options.eps, options.weight_decay, options.lr
    t = torch.stack(steps).to(device=device, dtype=torch.float64, non_blocking=True) + 1
    bc1, bc2 = 1 - beta1**t, 1 - beta2**t
    a = abs(p_value)
    lr_t = lr.to(device=device, dtype=torch.float64, non_blocking=True).reshape(()) if isinstance(lr, Tensor) \
        else lr
    if options.scale != "raw":
        scalars = GraftScalars(eps=eps * bc2**a if p_value > 0 else torch.zeros_like(t), inv_sqrt_bc2=bc2.rsqrt(),
                               adam_eps=torch.full_like(t, eps))
    elif p_value > 0:  # m̂/(v̂^p + ε) = (bc2^p/bc1)·m/(v^p + ε·bc2^p)
        scalars = RawScalars(alpha=-lr_t * bc2**a / bc1, eps=eps * bc2**a)
    else:  # m̂·v̂^|p| = m·v^|p|/(bc1·bc2^|p|)
        scalars = RawScalars(alpha=-lr_t / (bc1 * bc2**a) if p_value < 0 else -lr_t / bc1, eps=torch.zeros_like(t))
    host_lr = not isinstance(lr, Tensor)
    hyper = _on_device(Hyper(one_minus_beta1=1 - beta1, beta2=beta2, one_minus_beta2=1 - beta2,
                             weight_decay=weight_decay, decay=1 - lr * weight_decay if host_lr else 1.0, abs_p=a),
                       device)
    if weight_decay != 0 and not host_lr:  # 1 − ηλ of a tensor lr, formed on the device
        i = Hyper._fields.index("decay")
        hyper = torch.cat([hyper[:i], (1 - lr_t * weight_decay).reshape(1), hyper[i + 1:]])
    return pack(scalars).to(scalar_dtype), hyper.to(scalar_dtype), bc1, lr_t


def fused_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, options: StepOptions,
               cdtype: torch.dtype) -> bool:
    """One NSF step over tensors that share a device and dtypes. Returns False (having changed nothing) when
    the fused path failed to compile for this optimizer and configuration, so the caller takes the foreach
    path."""
    p_value = float(options.p)  # p lives on the host (group["p"]): reading it syncs no device
    # on the CPU without capturable, a value read on the host synchronises nothing: the norms are accumulated in
    # float32 there and redone in float64 only when a sum may have overflowed or lost precision
    host_check = cdtype == torch.float32 and params[0].is_cpu and not options.capturable
    config = KernelConfig.of(options, p_value, cdtype, torch.float32 if host_check else torch.float64)
    shapes = (params[0].device, params[0].dtype, grads[0].dtype, exp_avgs[0].dtype, tuple(q.shape for q in params))
    key = (config, *shapes)
    if key in _failed.get(id(params[0]), ()):
        return False
    scalar_dtype = torch.float64 if cdtype == torch.float64 else torch.float32
    scalars, hyper, bc1, lr_t = _scalars(steps, options, p_value, params[0].device, scalar_dtype)
    tensors = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if config.amsgrad else [])
    if config.scale == "raw":
        if _call(params[0], _get_kernel(raw_kernel, key), *tensors, scalars, hyper) is _FAILED:
            return False
    else:
        sums = _call(params[0], _get_kernel(graft_norms_kernel, key), *tensors, scalars, hyper)
        if sums is not _FAILED and host_check and not plain_sums_ok(sums):
            exact = dataclasses.replace(config, accumulate=torch.float64)
            sums = _call(params[0], _get_kernel(graft_norms_kernel, (exact, *shapes)), *tensors, scalars, hyper)
        if sums is _FAILED:
            return False
        norms = GraftNorms(*sums.unbind(1))
        ratio = _graft_ratio(norms.d_sq.sqrt() / norms.k, norms.r_sq.sqrt(), bc1)  # ‖m·q/k‖ against ‖r‖/bc1
        inv_k = torch.where(norms.k > 0, 1 / torch.where(norms.k > 0, norms.k, 1.0), 0.0)  # k = 0: no step
        factors = pack(GraftFactors(alpha=-lr_t * ratio, inv_k=inv_k)).to(scalar_dtype)
        if _call(params[0], _get_kernel(graft_apply_kernel, key), *tensors, scalars, factors, hyper) is _FAILED:
            return False  # stage 1 wrote nothing: the foreach path takes this step
    torch._foreach_add_(steps, 1.0)
    return True


#: float32 sums of squares are trusted when every norm is finite and at least √(smallest normal) · 10⁷ (as
#: ``_foreach._host_norms``): below, squares may have underflowed; a zero m (all norms exactly 0) is trusted too
_PLAIN_NORM_LOW = torch.finfo(torch.float32).tiny ** 0.5 * _PLAIN_NORM_MARGIN


def plain_sums_ok(sums: Tensor) -> bool:
    """Whether stage 1's float32 sums (packed ``GraftNorms``, CPU) are as good as float64's: one host read."""
    norms = GraftNorms(*sums.unbind(1))
    low = _PLAIN_NORM_LOW**2
    zero = norms.m_max == 0
    good = torch.isfinite(norms.d_sq) & torch.isfinite(norms.r_sq) & (
        zero | ((norms.d_sq >= low) & (norms.r_sq >= low)))
    return bool(good.all())


def native_takes(params: list[Tensor], options: StepOptions) -> bool:
    """Whether these parameters' steps will take the native CPU kernels (where they build): float32, contiguous,
    on the CPU, options they cover."""
    return NATIVE and _native.covers(options) and _native.supports(params) and _native.library(warn=False) is not None


def _is_compile_failure(e: Exception) -> bool:
    names = {c.__name__ for c in type(e).__mro__}
    module = type(e).__module__ or ""
    return bool(names & {"BackendCompilerFailed", "InductorError", "CppCompileError", "TorchRuntimeError",
                         "Unsupported", "InternalTorchDynamoError"}) or module.startswith(("torch._dynamo",
                                                                                          "torch._inductor"))


def _fused_nsf(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, options: StepOptions, *,
               has_complex: bool = False) -> None:
    """The fused step: the foreach path's arithmetic in one pass per tensor (two for the grafted scales), by the
    native kernels where they take every tensor, else compiled per device/dtype group; a group whose compile
    fails takes the foreach path."""
    tensors = [*params, *grads, *exp_avgs, *exp_avg_sqs]
    if NATIVE and _native.covers(options) and _native.supports(tensors, state_steps) and (
            lib := _native.library()) is not None:
        _native.step(lib, params, grads, exp_avgs, exp_avg_sqs, state_steps, options, float(options.p),
                     _PLAIN_NORM_LOW**2)
        return
    grouped = _group_tensors(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps)
    for (_, dtype, sdtype), lists in grouped.items():
        if not fused_step(*lists, options, _compute_dtype(torch.promote_types(dtype, sdtype))):
            _multi_tensor_nsf(*lists, options, has_complex=has_complex)
