"""NSF for JAX: the update of SPEC.md §2 as an optax ``GradientTransformation``.

The arithmetic follows the torch reference (``nsf/optim/_reference.py``, ``NSF(foreach=False)``) op for op, and
tests/test_optax.py proves the two equal step for step. Needs the optional extra: ``pip install "nsf[jax]"``.

    import optax, nsf.optax
    tx = nsf.optax.nsf(1e-2, p=optax.linear_schedule(0.5, -0.25, 1000), scale="adam", weight_decay=1e-4)
    tx = optax.inject_hyperparams(nsf.optax.scale_by_nsf)(p=0.25)     # p read and set through the state

p is a float, an optax schedule (a jax-traceable ``f(count)``), or an ``nsf.schedules`` schedule (evaluated on
the host through ``jax.pure_callback``, so it works under ``jit``; wrap it with :func:`schedule` before handing
it to ``optax.inject_hyperparams``). As in torch, the p used by the t-th update is ``schedule(t - 1)``.
"""

from __future__ import annotations

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


class ScaleByNSFState(NamedTuple):
    """State of :func:`scale_by_nsf`: the step count (int32) and the two moments (trees like the params)."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def schedule(s: Any, total_steps: int | None = None) -> Callable[[jax.Array], jax.Array]:
    """An ``nsf.schedules`` schedule (or its dict) as a jit-safe optax schedule ``f(count) -> scalar``;
    ``total_steps`` is the run's length for a cycle stated per run (without it, such a cycle raises here)."""
    s = _schedules.as_schedule(s).for_run(total_steps)

    def fn(count: jax.Array) -> jax.Array:
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64)  # float64 where x64 is on, else float32
        return jax.pure_callback(lambda c: np.asarray(s(int(c)), dtype=dtype), jax.ShapeDtypeStruct((), dtype),
                                 count, vmap_method="sequential")

    return fn


_DEFAULT_P = schedule(DEFAULT_P)


def _p_at(p: Any, count: jax.Array) -> jax.Array:
    if isinstance(p, (_schedules.Schedule, dict)):
        return schedule(p)(count)
    return p(count) if callable(p) else jnp.asarray(p)


def _unit_v(v_hat: jax.Array) -> jax.Array:
    """v̂ divided by its (finite) max: the p ≤ 0 direction is unchanged, and v̂^|p| ≤ 1 cannot overflow."""
    finite = jnp.minimum(v_hat, jnp.finfo(v_hat.dtype).max)
    top = finite.max()
    return finite / jnp.where(top > 0, top, 1)


def _graft(direction: jax.Array, reference: jax.Array) -> jax.Array:
    """``direction`` rescaled to the norm of ``reference`` (per leaf); overflow-safe, and 0 for a zero direction."""
    def unit(x):
        top = jnp.abs(x).max()
        top = jnp.where(top > 0, top, jnp.ones_like(top))
        return x / top, top

    d_unit, _ = unit(direction)
    r_unit, r_top = unit(reference)
    d_norm = jnp.linalg.norm(d_unit.ravel())
    d_norm = jnp.where(d_norm > 0, d_norm, jnp.ones_like(d_norm))
    return d_unit * (r_top * (jnp.linalg.norm(r_unit.ravel()) / d_norm))


def _direction(m_hat: jax.Array, v_hat: jax.Array, p: jax.Array, eps: Any, scale: str) -> jax.Array:
    """The step per unit learning rate from bias-corrected moments (SPEC §2); never v̂^p for p < 0."""
    empty = m_hat.size == 0
    base = jnp.where(p > 0, v_hat, _unit_v(v_hat)) if scale != "raw" and not empty else v_hat
    v_pow = base ** jnp.abs(p)
    d = jnp.where(p > 0, m_hat / (v_pow + eps), m_hat * v_pow)
    if empty or scale == "raw":
        return d
    if scale == "sgd":
        return _graft(d, m_hat)
    return _graft(d, m_hat / (jnp.sqrt(v_hat) + eps))


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

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)  # immutable arrays: both moments may start as one tree
        return ScaleByNSFState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros)

    def update_fn(updates, state, params=None):
        del params
        p_now = _p_at(p, state.count)
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
            d = _direction(m.astype(cdtype) / bc1, v.astype(cdtype) / bc2, jnp.asarray(p_now, cdtype), eps, scale)
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
