"""NSF for JAX: the update of ``nsf.NSF`` (docs/method.md) as an optax ``GradientTransformation``.

The update is the torch reference step (``nsf.optim.reference_step`` as the runtime paths form it, ``nsf/optim/_single_tensor.py``: the same formulas, the same guards and the
same non-finite masking, written in jnp); tests/test_optax.py checks that the two give equal updates step for
step, to 1e-12 relative in float64 and to float32 rounding otherwise. Needs the optional extra:
``pip install "nsf[jax]"``.

    import optax, nsf.optax
    tx = nsf.optax.nsf(1e-2, p=optax.linear_schedule(0.5, -0.25, 1000), scale="adam", weight_decay=1e-4)
    tx = optax.inject_hyperparams(nsf.optax.scale_by_nsf)(p=0.25)     # p read and set through the state

p is a float, an optax schedule (a jax-traceable ``f(count)``), or an ``nsf.schedules`` schedule or its dict.
The built-in schedules (``Constant``, ``Cyclic`` with every shape, phase, ``quantize`` and per-run cycles,
``Anneal``, ``Sequence``) are evaluated in closed form in jnp from the step count, inside the jitted update: no
host callback, so no device-to-host round trip per step. Only a plain Python ``f(step)`` wrapped as a
``CallableSchedule`` has no closed form; it runs on the host through ``jax.pure_callback``. Wrap an nsf schedule
with :func:`schedule` before handing it to ``optax.inject_hyperparams``. As in torch, the p used by the t-th
update is ``schedule(t - 1)``.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Callable, NamedTuple

try:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
except ImportError as e:  # an optional extra: say how to get it
    raise ImportError("nsf.optax needs JAX and optax; install them with: pip install 'nsf[jax]'") from e

from . import schedules as _schedules
from .optim import SCALES
from .optim.defaults import DEFAULT_LR, DEFAULT_P, DEFAULT_SCALE

__all__ = ["ScaleByNSFState", "scale_by_nsf", "nsf", "schedule"]

ScheduleFn = Callable[[jax.Array], jax.Array]


class ScaleByNSFState(NamedTuple):
    """State of :func:`scale_by_nsf`: the step count (int32) and the two moments (trees like the params)."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def _float_dtype():
    return jax.dtypes.canonicalize_dtype(jnp.float64)  # float64 where x64 is on, else float32


def _cyclic_phase(s: _schedules.Cyclic, step: jax.Array) -> jax.Array:
    """(step / length + phase) mod 1. Where the cycles per step are a fraction a/N of small integers (a whole
    period, or per-run cycles such as 2.5 in T steps), the step is taken modulo N in integers first, so the
    phase stays exact in float32 however long the run."""
    dtype = _float_dtype()
    rate = (Fraction(1, s.period) if s.period is not None
            else Fraction(s.cycles).limit_denominator(1000) / s.total_steps)
    if s.period is not None or float(rate * s.total_steps) == s.cycles:
        a, n = rate.numerator, rate.denominator
        if a * n < 2**31:  # int32 arithmetic cannot overflow
            within = jnp.remainder(jnp.remainder(step, n) * a, n).astype(dtype) / n
            return jnp.remainder(within + s.phase, 1.0)
    within = jnp.remainder(step.astype(dtype), s._length) / s._length
    return jnp.remainder(within + s.phase, 1.0)


def _cyclic(s: _schedules.Cyclic) -> ScheduleFn:
    def fn(step):
        u = _cyclic_phase(s, step)
        if s.shape == "triangle":
            frac = 1.0 - jnp.abs(2.0 * u - 1.0)
        elif s.shape == "cosine":
            frac = 0.5 * (1.0 - jnp.cos(2.0 * math.pi * u))
        elif s.shape == "square":
            frac = jnp.where(u < 0.5, 0.0, 1.0).astype(u.dtype)
        else:  # sine
            frac = 0.5 * (1.0 + jnp.sin(2.0 * math.pi * u))
        value = s.low + (s.high - s.low) * frac
        if s.quantize is not None:  # jnp.round, like Python's round, takes halves to even
            value = jnp.round(value / s.quantize) * s.quantize + 0.0
        return value

    return fn


def _anneal(s: _schedules.Anneal) -> ScheduleFn:
    def fn(step):
        frac = jnp.clip(step.astype(_float_dtype()) / s.steps, 0.0, 1.0)
        if s.shape == "cosine":
            frac = 0.5 * (1.0 - jnp.cos(math.pi * frac))
        return s.start + (s.end - s.start) * frac

    return fn


def _sequence(s: _schedules.Sequence) -> ScheduleFn:
    parts = [(steps, _closed_form(sub)) for steps, sub in s.segments]

    def fn(step):
        value, start = None, 0
        for steps, sub in parts:  # each segment sees its own count from 0; the last one runs on forever
            here = sub(step - start)
            value = here if value is None else jnp.where(step >= start, here, value)
            start += steps
        return value

    return fn


def _host_callback(s: _schedules.Schedule) -> ScheduleFn:
    def fn(step):
        dtype = _float_dtype()
        return jax.pure_callback(lambda c: np.asarray(s(int(c)), dtype=dtype), jax.ShapeDtypeStruct((), dtype),
                                 step, vmap_method="sequential")

    return fn


def _closed_form(s: _schedules.Schedule) -> ScheduleFn:
    """The jnp function of the step count that gives what ``s(step)`` gives."""
    if isinstance(s, _schedules.Constant):
        return lambda step: jnp.asarray(s.value, _float_dtype())
    if isinstance(s, _schedules.Cyclic):
        return _cyclic(s)
    if isinstance(s, _schedules.Anneal):
        return _anneal(s)
    if isinstance(s, _schedules.Sequence):
        return _sequence(s)
    return _host_callback(s)  # a plain f(step): no closed form


def schedule(s: Any, total_steps: int | None = None) -> ScheduleFn:
    """An ``nsf.schedules`` schedule (or its dict) as an optax schedule ``f(count) -> scalar``; ``total_steps``
    is the run's length for a cycle stated per run (without it, such a cycle raises here, not inside ``jit``).

    Built-in schedules become closed-form jnp (no host callback under ``jit``); a ``CallableSchedule`` (a plain
    Python function) is called on the host through ``jax.pure_callback``. The value is float64 where
    ``jax_enable_x64`` is on, else float32.
    """
    closed = _closed_form(_schedules.as_schedule(s).for_run(total_steps))

    def fn(count: jax.Array) -> jax.Array:
        return jnp.asarray(closed(jnp.asarray(count)), _float_dtype())

    return fn


_DEFAULT_P = schedule(DEFAULT_P)


def _p_fn(p: Any) -> ScheduleFn:
    if isinstance(p, (_schedules.Schedule, dict)):
        return schedule(p)
    if callable(p):  # an optax schedule
        return p
    return lambda count: jnp.asarray(p)


def _direction(m_hat: jax.Array, v_hat: jax.Array, p: jax.Array, eps: Any) -> jax.Array:
    """The raw step per unit learning rate: m̂/(v̂^p + ε) for p > 0, m̂·v̂^|p| for p ≤ 0 (never v̂^p for p < 0)."""
    v_pow = v_hat ** jnp.abs(p)
    return jnp.where(p > 0, m_hat / (v_pow + eps), m_hat * v_pow)


def _finite_norm(x: jax.Array, good: jax.Array) -> jax.Array:
    """‖x‖ over the ``good`` coordinates, divided by the max-abs first so that it cannot overflow."""
    x = jnp.where(good, x, 0)
    top = jnp.abs(x).max()
    top = jnp.where(top > 0, top, 1)
    return top * jnp.linalg.norm((x / top).ravel())


def _graft_ratio(d_norm: jax.Array, r_norm: jax.Array, bc1: jax.Array) -> jax.Array:
    """‖r‖/(‖d‖·bc1), or 0 where either norm is zero or not finite (a zero direction takes no step)."""
    ok = jnp.isfinite(d_norm) & jnp.isfinite(r_norm) & (d_norm > 0) & (r_norm > 0)
    return jnp.where(ok, r_norm / jnp.where(ok, d_norm, 1) / bc1, 0)


def _step(m: jax.Array, v: jax.Array, bc1: jax.Array, bc2: jax.Array, p: jax.Array, eps: Any,
          scale: str) -> jax.Array:
    """The step per unit learning rate from the moments and the bias corrections bc = 1 − β^t, as the torch
    reference forms it (``nsf.optim.reference_step``; the overflow-safe form of ``_single_tensor._step_per_unit_lr``).

    The grafted scales form the direction from the raw moments up to a positive factor (m·(v/k)^|p| with k the
    largest finite v for p ≤ 0, so it cannot overflow; m/(v^p + ε·bc2^p) for p > 0), count an overflowed v as
    the largest float, and take both norms over the coordinates whose m and v are finite: a NaN or inf
    gradient entry spoils only its own coordinate, as in torch.
    """
    if scale == "raw":
        return _direction(m / bc1, v / bc2, p, eps)
    if m.size == 0:
        return m
    x = jnp.minimum(v, jnp.finfo(v.dtype).max)
    good = jnp.isfinite(m) & jnp.isfinite(x)
    a = jnp.abs(p)
    top = jnp.where(good, x, 0).max()
    top = jnp.where(top > 0, top, 1)
    q = jnp.where(p > 0, 1 / (x ** a + eps * bc2 ** a), (x / top) ** a)
    r = m if scale == "sgd" else m / (jnp.sqrt(x) / jnp.sqrt(bc2) + eps)  # m̂/(√v̂ + ε) = r/bc1
    d = m * q
    return d * _graft_ratio(_finite_norm(d, good), _finite_norm(r, good), bc1)


def scale_by_nsf(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, p: Any = _DEFAULT_P, scale: str = DEFAULT_SCALE,
) -> optax.GradientTransformation:
    """Rescale updates by NSF's direction: ``m̂/(v̂^p+ε)`` (p > 0), ``m̂`` (p = 0), ``m̂·v̂^|p|`` (p < 0).

    ``scale="sgd"`` / ``"adam"`` graft, per leaf, the length of the p = 0 / Adam step onto that direction;
    ``"raw"`` is the paper's form. Returns the step per unit learning rate (positive: chain it with
    ``optax.scale_by_learning_rate``, or use :func:`nsf`). Defaults as ``nsf.NSF``'s.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    p_at = _p_fn(p)

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)  # immutable arrays: both moments may start as one tree
        return ScaleByNSFState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros)

    def update_fn(updates, state, params=None):
        del params
        p_now = p_at(state.count)
        count = optax.safe_int32_increment(state.count)

        def first(g, m):
            return m + (1 - b1) * (g.astype(m.dtype) - m)  # torch's lerp_

        def second(g, v):
            g = g.astype(v.dtype)
            return v * b2 + (1 - b2) * g * g

        def step(g, m, v):
            cdtype = jnp.promote_types(m.dtype, jnp.float32)  # the power in float32 or wider
            bc1 = 1 - jnp.asarray(b1, cdtype) ** count.astype(cdtype)
            bc2 = 1 - jnp.asarray(b2, cdtype) ** count.astype(cdtype)
            d = _step(m.astype(cdtype), v.astype(cdtype), bc1, bc2, jnp.asarray(p_now, cdtype), eps, scale)
            return d.astype(g.dtype)

        mu = jax.tree.map(first, updates, state.mu)
        nu = jax.tree.map(second, updates, state.nu)
        d = jax.tree.map(step, updates, mu, nu)
        return d, ScaleByNSFState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def nsf(
    learning_rate: optax.ScalarOrSchedule = DEFAULT_LR, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
    p: Any = _DEFAULT_P, scale: str = DEFAULT_SCALE, weight_decay: float = 0.0, *,
    decoupled_weight_decay: bool = False, mask: Any = None,
) -> optax.GradientTransformation:
    """The optimizer ``nsf.NSF`` is, as an optax chain: weight decay, :func:`scale_by_nsf`, learning rate.

    Weight decay is coupled (added to the gradient, as ``nsf.NSF`` does by default) unless
    ``decoupled_weight_decay`` (``θ ← θ(1 − ηλ)``, as AdamW); ``mask`` selects the leaves it applies to.
    """
    decay = optax.add_decayed_weights(weight_decay, mask)
    core = scale_by_nsf(b1=b1, b2=b2, eps=eps, p=p, scale=scale)
    parts = (core, decay) if decoupled_weight_decay else (decay, core)
    return optax.chain(*parts, optax.scale_by_learning_rate(learning_rate))
