"""The ``torch._foreach_*`` NSF path: the reference's arithmetic with the bias corrections folded into
per-tensor scalars (as torch's Adam does)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, _get_value, _view_as_real

from ._single_tensor import _compute_dtype, _graft_ratio, _graft_ratio_host
from ._step_options import StepOptions

#: |p| values with an exact square-root chain (and p = 0, which needs no power at all): multiples of ⅛ up to 1.
FAST_EXPONENTS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)

_ONE = torch.tensor(1.0)  # the step-count increment, made once (torch's Adam makes it every step)

def _is_dtensor(t: Tensor) -> bool:
    """FSDP2's sharded parameters: left to the foreach path, whose DTensor ops reduce norms across shards."""
    return any(c.__name__ == "DTensor" for c in type(t).__mro__)


def _group_tensors(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps):
    """{(device, param dtype, state dtype): [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps]}."""
    if all(m.dtype == q.dtype for m, q in zip(exp_avgs, params)):
        grouped = Optimizer._group_tensors_by_device_and_dtype(
            [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps])  # type: ignore[list-item]
        return {(device, dtype, dtype): [list(x) for x in lists] for (device, dtype), (lists, _) in grouped.items()}
    out: dict[tuple, list[list[Tensor]]] = {}
    for i, q in enumerate(params):
        key = (q.device, q.dtype, exp_avgs[i].dtype)
        lists = out.setdefault(key, [[], [], [], [], [], []])
        for j, source in enumerate((params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps)):
            if j != 4 or max_exp_avg_sqs:
                lists[j].append(source[i])
    return out


def _foreach_power(xs: list[Tensor], exponent: float, root: list[Tensor] | None = None) -> list[Tensor]:
    """xs ** exponent, as new tensors, with square-root chains for |p| a multiple of ⅛ up to 1 (exact and much
    cheaper than pow, which costs a log and an exp per element): the product of the roots x^½, x^¼, x^⅛ that
    the binary digits of the exponent select. ``root``: xs^½ already taken by the caller (read, not changed)."""
    if exponent == 1.0:
        return [x.clone() for x in xs]
    if exponent in FAST_EXPONENTS:
        shared = root is not None
        root = root if shared else torch._foreach_sqrt(xs)  # x^bit; ours to change unless shared
        out, a, bit = None, exponent, 0.5
        while True:
            if a >= bit:
                a -= bit
                if out is None:
                    out = [r.clone() for r in root] if a or shared else root
                else:
                    torch._foreach_mul_(out, root)
                if a == 0:
                    return out
            bit /= 2
            root = torch._foreach_sqrt(root) if shared else (torch._foreach_sqrt_(root) or root)
            shared = False
    # exp(a·log x) for a > 0 (0 at x = 0, inf at inf): measured ~3× faster than _foreach_pow on cache-sized
    # tensors and no slower on large ones, within a few float ulps of pow
    out = torch._foreach_log(xs)
    torch._foreach_mul_(out, exponent)
    torch._foreach_exp_(out)
    return out


def _multi_tensor_nsf(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, options: StepOptions, *,
                      has_complex: bool = False) -> None:
    """The reference's arithmetic with the bias corrections folded into per-tensor scalars (as
    torch's Adam does): one power and one fused multiply-add per element for the raw step."""
    if not params:
        return
    o = options
    beta1, beta2 = o.betas
    lr, weight_decay, amsgrad = o.lr, o.weight_decay, o.amsgrad
    p_value = float(o.p)  # p lives on the CPU: reading it syncs no device
    grouped = _group_tensors(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps)
    for (device, dtype, sdtype), (d_params, d_grads, d_exp_avgs, d_exp_avg_sqs, d_max_exp_avg_sqs, d_steps) in (
        grouped.items()
    ):
        d_max_exp_avg_sqs = d_max_exp_avg_sqs if amsgrad else []
        if has_complex:
            if amsgrad:
                _view_as_real(d_params, d_grads, d_exp_avgs, d_exp_avg_sqs, d_max_exp_avg_sqs)
            else:
                _view_as_real(d_params, d_grads, d_exp_avgs, d_exp_avg_sqs)
        if o.maximize:
            d_grads = torch._foreach_neg(d_grads)
        if sdtype != dtype:  # state_dtype: the moments are kept in another dtype than the parameters
            d_grads = [g.to(sdtype) for g in d_grads]

        if d_steps[0].is_cpu:
            torch._foreach_add_(d_steps, _ONE, alpha=1.0)
        else:
            torch._foreach_add_(d_steps, 1)

        if weight_decay != 0:
            if o.decoupled_weight_decay:
                torch._foreach_mul_(d_params, 1 - lr * weight_decay)
            else:
                wd_params = d_params if sdtype == dtype else [q.to(sdtype) for q in d_params]
                d_grads = torch._foreach_add(d_grads, wd_params, alpha=weight_decay)

        torch._foreach_lerp_(d_exp_avgs, d_grads, 1 - beta1)
        torch._foreach_mul_(d_exp_avg_sqs, beta2)
        torch._foreach_addcmul_(d_exp_avg_sqs, d_grads, d_grads, 1 - beta2)
        v = d_max_exp_avg_sqs if amsgrad else d_exp_avg_sqs
        if amsgrad:
            torch._foreach_maximum_(d_max_exp_avg_sqs, d_exp_avg_sqs)

        if o.capturable:  # keep bias corrections on the device as 0-dim float64 tensors
            counts = torch.stack(d_steps).to(torch.float64)
            bc1, bc2 = (1 - beta1**counts).unbind(), (1 - beta2**counts).unbind()
        else:
            counts = [s.item() for s in d_steps] if not torch.compiler.is_compiling() else [
                _get_value(s) for s in d_steps]
            bc1 = [1 - beta1**c for c in counts]
            bc2 = [1 - beta2**c for c in counts]

        cdtype = _compute_dtype(torch.promote_types(dtype, sdtype))
        m = [t.to(cdtype) for t in d_exp_avgs] if cdtype != sdtype else d_exp_avgs
        v = [t.to(cdtype) for t in v] if cdtype != sdtype else v
        if o.scale != "raw":
            host_check = not o.capturable and d_params[0].is_cpu and not _is_dtensor(d_params[0])
            d = _foreach_grafted(m, v, bc1, bc2, p_value, o.eps, o.scale, host_check)
        else:
            d = _foreach_raw(d_params, m, v, bc1, bc2, p_value, lr, o.eps, fold_lr=not (
                isinstance(lr, Tensor) or o.capturable))
            if d is None:
                continue
        if cdtype != dtype:
            d = [t.to(dtype) for t in d]
        if isinstance(lr, Tensor):
            torch._foreach_sub_(d_params, torch._foreach_mul(d, lr))
        else:
            torch._foreach_add_(d_params, d, alpha=-lr)


def _foreach_raw(params, m, v, bc1, bc2, p_value, lr, eps, fold_lr: bool) -> list[Tensor] | None:
    """The raw step per unit lr, d_true = m̂·f(v̂) = factor_i · (m·f(v)) with per-tensor scalars from the bias
    corrections; with ``fold_lr`` (host lr and counts) it is applied to ``params`` directly (returns None)."""
    if p_value > 0:  # m̂/(v̂^p + ε) = (bc2^p/bc1) · m/(v^p + ε·bc2^p)
        denom = _foreach_power(v, p_value)
        torch._foreach_add_(denom, [eps * b**p_value for b in bc2])
        factors = [b**p_value / a for a, b in zip(bc1, bc2)]
    elif p_value < 0:  # m̂·v̂^|p| = m·v^|p| / (bc1·bc2^|p|)
        v_pow = v if p_value == -1.0 else _foreach_power(v, -p_value)  # only read below
        factors = [1 / (a * b**-p_value) for a, b in zip(bc1, bc2)]
    else:
        factors = [1 / a for a in bc1]
    if fold_lr:
        alphas = [-lr * f for f in factors]
        if p_value > 0:
            torch._foreach_addcdiv_(params, m, denom, alphas)
        elif p_value < 0:
            torch._foreach_addcmul_(params, m, v_pow, alphas)
        else:
            torch._foreach_add_(params, torch._foreach_mul(m, alphas))
        return None
    if p_value > 0:
        d = torch._foreach_div(m, denom)
    elif p_value < 0 and v_pow is v:  # p = −1 reads the state itself
        d = torch._foreach_mul(m, v_pow)
    elif p_value < 0:
        torch._foreach_mul_(v_pow, m)  # in place: fresh allocations of large tensors cost page faults
        d = v_pow
    else:
        return torch._foreach_mul(m, factors)  # m may be the optimizer state itself: not in place
    torch._foreach_mul_(d, factors)
    return d


def _foreach_grafted(m, v, bc1, bc2, p_value, eps, scale, host_check=False) -> list[Tensor]:
    """The grafted step per unit lr: ``_single_tensor._graft_terms`` and its ratio in foreach form. Norms are taken
    over the finite entries, so one NaN/inf gradient coordinate damages only its own coordinate and no norm
    overflows. On the device no norm is read on the host; with ``host_check`` (CPU tensors, not capturable:
    reading a value there synchronises nothing) the norms are read once and the per-tensor factors formed in
    Python (``_host_norms``), which spares a small model some twenty tiny tensor operations per step."""
    fmax = torch.finfo(m[0].dtype).max
    x = torch._foreach_clamp_max(v, fmax)  # an overflowed v counts as the largest float; NaN stays (masked)
    a = abs(p_value)
    root = torch._foreach_sqrt(x) if scale == "adam" else None  # √x: Adam's denominator and the chains' first root
    if p_value > 0:  # d = m/(v^p + ε·bc2^p)
        d = _foreach_power(x, a, root)
        torch._foreach_add_(d, [eps * b**a for b in bc2])
        d = torch._foreach_div(m, d)
    elif p_value < 0:  # d = m·(v/k)^|p|, k the largest v where m is finite: |d| ≤ |m|
        # over the good coordinates, as the reference: x + 0·m is x where m is finite and NaN where it is not
        # (x ≤ the largest float, never inf); isfinite and where were measured 10× slower than this on the CPU
        masked = torch._foreach_mul(m, 0.0)
        torch._foreach_add_(masked, x)
        tops = _finite_norms(masked, float("inf"), None)  # x ≥ 0: the largest good x
        torch._foreach_div_(x, torch.where(tops > 0, tops, 1).unbind())
        d = _foreach_power(x, a)  # of x/k: √x itself is not shared
        torch._foreach_mul_(d, m)
    else:
        d = m  # may be the optimizer state itself: scaled out of place below
    if scale == "adam":  # m̂/(√v̂ + ε) = r/bc1 with r = √bc2 · m/(√v + ε√bc2); root is free once d is formed
        torch._foreach_add_(root, [eps * b**0.5 for b in bc2])
        r = torch._foreach_div(m, root)
        r_scale = [b**0.5 for b in bc2]  # applied to ‖·‖: one operation per tensor fewer
    else:
        r, r_scale = m, None
    if host_check:
        norms = _host_norms(d if r is d else [*d, *r])  # one read: ‖d_i‖, then ‖r_i‖ unless r is d
        d_norms, r_norms = norms[:len(d)], (norms if r is d else norms[len(d):])
        if r_scale is not None:
            r_norms = [n * c for n, c in zip(r_norms, r_scale)]
        ratios = [_graft_ratio_host(dn, rn, b) for dn, rn, b in zip(d_norms, r_norms, bc1)]
    else:
        d_norms = _finite_norms(d)
        r_norms = d_norms if r is d else _finite_norms(r)
        if r_scale is not None:
            r_norms = r_norms * _stacked(r_scale, r_norms.device)
        ratios = _graft_ratio(d_norms, r_norms, _stacked(bc1, d_norms.device)).to(m[0].dtype).unbind()
    if d is m:
        return list(torch._foreach_mul(m, ratios))
    torch._foreach_mul_(d, ratios)
    return d


def _stacked(values: list, device) -> Tensor:
    """Per-tensor scalars (host numbers, or 0-dim tensors where the counts live on the device) as one float64
    vector on ``device``."""
    t = torch.stack(values) if isinstance(values[0], Tensor) else torch.tensor(values, dtype=torch.float64)
    return t.to(device=device, dtype=torch.float64, non_blocking=True)


#: ``_host_norms`` takes a tensor's plain norm, in its own dtype, when the norm is finite and at least this many
#: times √(smallest normal): squares below the smallest normal lose precision, and above this bound all of them
#: together (n · tiny) weigh less than 1e-7 of the norm² for n ≤ 10⁷
_PLAIN_NORM_MARGIN = 1e7


def _norms(xs: list[Tensor], ord: float = 2, dtype: torch.dtype | None = torch.float64) -> Tensor:
    """Per-tensor norms stacked; 0 for an empty tensor (whose max-norm torch refuses)."""
    return torch.stack(torch._foreach_norm([x if x.numel() else x.new_zeros(1) for x in xs], ord, dtype=dtype))


def _finite_norms(xs: list[Tensor], ord: float = 2, dtype: torch.dtype | None = torch.float64) -> Tensor:
    """Per-tensor norms (float64 by default) over the finite entries, stacked on the device, read nowhere."""
    norms = _norms([torch.nan_to_num(x, 0.0, 0.0, 0.0) for x in xs], ord, dtype)
    return norms.full_tensor() if _is_dtensor(norms) else norms  # FSDP2 shards: the whole tensor's norms


def _host_norms(xs: list[Tensor]) -> list[float]:
    """``_finite_norms`` read on the host (CPU tensors only): the plain norms in the tensors' own dtype, redone
    in float64 over the finite entries only for those that are not finite or so small that their squares may
    have lost precision; the masking and the float64 copies are most of the cost of a small model's norms."""
    norms = _norms(xs, dtype=None).tolist()
    low = torch.finfo(xs[0].dtype).tiny ** 0.5 * _PLAIN_NORM_MARGIN
    redo = [i for i, n in enumerate(norms) if not low <= n < float("inf")]
    if redo:
        for i, n in zip(redo, _finite_norms([xs[i] for i in redo]).tolist()):
            norms[i] = n
    return norms
