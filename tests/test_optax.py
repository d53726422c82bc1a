"""nsf.optax equals the torch reference path (nsf.NSF, foreach=False) update for update, and p = 1/2 raw is
optax.adam. Float64 (jax_enable_x64) to 1e-12 relative; float32 to 2e-5 relative (+1e-7 absolute) over 25 steps.
The built-in p schedules are closed-form jnp (no host callback in the jitted update), and a NaN or inf gradient
entry spoils only its own coordinate, as in torch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nsf

jax = pytest.importorskip("jax", reason="JAX not installed (pip install 'nsf[jax]')")
optax = pytest.importorskip("optax", reason="optax not installed (pip install 'nsf[jax]')")
import jax.numpy as jnp  # noqa: E402

nsf_optax = pytest.importorskip("nsf.optax")

SHAPES = {"w": (5, 4), "b": (4,), "dead": (3,), "empty": (0, 2)}  # "dead" never gets a gradient
STEPS = 25
TOL = {np.float64: dict(rtol=1e-12, atol=1e-15), np.float32: dict(rtol=2e-5, atol=1e-7)}


@pytest.fixture(params=[np.float64, np.float32], ids=["float64", "float32"])
def dtype(request):
    jax.config.update("jax_enable_x64", request.param == np.float64)
    yield request.param
    jax.config.update("jax_enable_x64", False)


def _problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    # small parameters: torch's Δθ is a difference of parameters, so their rounding must not swamp it
    params = {k: (1e-2 * rng.standard_normal(s)).astype(dtype) for k, s in SHAPES.items()}
    scales = np.logspace(-4, 1, STEPS)  # gradients from tiny to large, and every 5th step zero for "b"
    grads = []
    for t in range(STEPS):
        g = {k: (scales[t] * rng.standard_normal(s)).astype(dtype) for k, s in SHAPES.items()}
        g["dead"] = np.zeros(SHAPES["dead"], dtype)
        if t % 5 == 4:
            g["b"] = np.zeros(SHAPES["b"], dtype)
        grads.append(g)
    return params, grads


def _torch_updates(params, grads, **options):
    ts = {k: torch.tensor(v) for k, v in params.items()}
    opt = nsf.NSF(list(ts.values()), foreach=False, fused=False, **options)
    out = []
    for g in grads:
        before = {k: t.clone() for k, t in ts.items()}
        for k, t in ts.items():
            t.grad = torch.tensor(g[k])
        opt.step()
        out.append({k: (ts[k] - before[k]).numpy() for k in ts})
    return out


def _optax_updates(tx, params, grads):
    params = {k: jnp.asarray(v) for k, v in params.items()}
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = []
    for g in grads:
        u, state = update({k: jnp.asarray(v) for k, v in g.items()}, state, params)
        params = optax.apply_updates(params, u)
        out.append({k: np.asarray(v) for k, v in u.items()})
    return out


def _assert_equal_updates(got, want, dtype):
    for t, (a, b) in enumerate(zip(got, want)):
        for k in SHAPES:
            assert a[k].dtype == dtype
            np.testing.assert_allclose(a[k], b[k], **TOL[dtype], err_msg=f"step {t + 1}, leaf {k}")
            assert np.all(np.isfinite(a[k]))
        assert not np.any(a["dead"]), "a zero gradient must be a no-op"


CYCLE = nsf.schedules.Cyclic(-0.25, 0.5, period=8, shape="cosine")
P_KINDS = {  # name -> (p for torch, p for optax)
    "p=+1/4": (0.25, 0.25),
    "p=1/2": (0.5, 0.5),
    "p=0": (0.0, 0.0),
    "p=-1/4": (-0.25, -0.25),
    "p=-1": (-1.0, -1.0),
    "nsf-schedule": (CYCLE, CYCLE),
    "optax-schedule": (None, optax.linear_schedule(0.5, -0.25, 10)),  # torch gets the same p values
}


@pytest.mark.parametrize("scale", nsf.optim.SCALES)
@pytest.mark.parametrize("p_kind", list(P_KINDS))
def test_scale_by_nsf_equals_torch_reference(dtype, scale, p_kind):
    p_torch, p_optax = P_KINDS[p_kind]
    if p_torch is None:  # the very p values optax computes (its schedules are float32 on an int32 count)
        p_torch = lambda step: float(jax.jit(p_optax)(jnp.int32(step)))  # noqa: E731
    params, grads = _problem(dtype)
    want = _torch_updates(params, grads, lr=3e-2, p=p_torch, scale=scale)
    got = _optax_updates(nsf_optax.nsf(3e-2, p=p_optax, scale=scale), params, grads)
    _assert_equal_updates(got, want, dtype)


@pytest.mark.parametrize("decoupled", [False, True], ids=["coupled", "decoupled"])
def test_weight_decay_equals_torch(dtype, decoupled):
    params, grads = _problem(dtype, seed=1)
    options = dict(lr=1e-2, p=-0.25, scale="adam", weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6)
    want = _torch_updates(params, grads, decoupled_weight_decay=decoupled, **options)
    tx = nsf_optax.nsf(1e-2, b1=0.8, b2=0.99, eps=1e-6, p=-0.25, scale="adam", weight_decay=0.1,
                       decoupled_weight_decay=decoupled)
    got = _optax_updates(tx, params, grads)
    for a, b in zip(got, want):
        for k in ("w", "b"):
            np.testing.assert_allclose(a[k], b[k], **TOL[dtype])


def test_default_configuration_matches_torch(dtype):
    params, grads = _problem(dtype, seed=2)
    _assert_equal_updates(_optax_updates(nsf_optax.nsf(1e-2), params, grads),
                          _torch_updates(params, grads, lr=1e-2), dtype)


def test_default_cycle_equals_torch_across_its_p_changes(dtype):
    """The default cycle (period 1000, on multiples of 1/8) leaves p = 0 at step 116: 130 steps cross it."""
    steps = 130
    rng = np.random.default_rng(6)
    params = {k: (1e-2 * rng.standard_normal(s)).astype(dtype) for k, s in SHAPES.items()}
    grads = [{k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()} for _ in range(steps)]
    p_used = {nsf.optim.defaults.DEFAULT_P(t) for t in range(steps)}
    assert p_used == {0.0, 0.125}, p_used
    want = _torch_updates(params, grads, lr=1e-2)
    got = _optax_updates(nsf_optax.nsf(1e-2), params, grads)
    for t, (a, b) in enumerate(zip(got, want)):
        for k in SHAPES:
            np.testing.assert_allclose(a[k], b[k], **TOL[dtype], err_msg=f"step {t + 1}, leaf {k}")


def test_inject_hyperparams_sets_p(dtype):
    """p lives in the state under inject_hyperparams and can be changed between steps, like group["p"]."""
    params, grads = _problem(dtype, seed=3)
    ts = {k: torch.tensor(v) for k, v in params.items()}
    opt = nsf.NSF(list(ts.values()), lr=1.0, p=0.25, scale="sgd", foreach=False, fused=False)
    tx = optax.inject_hyperparams(nsf_optax.scale_by_nsf)(p=0.25, scale="sgd")
    state = tx.init({k: jnp.asarray(v) for k, v in params.items()})
    update = jax.jit(tx.update)
    for t, g in enumerate(grads):
        p = [0.25, -0.5, 0.0][t % 3]
        opt.param_groups[0]["p"].fill_(p)
        state.hyperparams["p"] = jnp.asarray(p, dtype)
        before = {k: x.clone() for k, x in ts.items()}
        for k, x in ts.items():
            x.grad = torch.tensor(g[k])
        opt.step()
        u, state = update({k: jnp.asarray(v) for k, v in g.items()}, state)
        for k in ("w", "b"):  # scale_by_nsf returns the step per unit lr, with the sign of the gradient
            np.testing.assert_allclose(-np.asarray(u[k]), (ts[k] - before[k]).numpy(), **TOL[dtype])


def test_half_raw_equals_optax_adam(dtype):
    params, grads = _problem(dtype, seed=4)
    grads = [{k: v for k, v in g.items() if k != "dead"} for g in grads]
    params = {k: v for k, v in params.items() if k != "dead"}
    got = _optax_updates(nsf_optax.nsf(1e-3, p=0.5, scale="raw"), params, grads)
    want = _optax_updates(optax.adam(1e-3), params, grads)
    for a, b in zip(got, want):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], **TOL[dtype])


def test_bad_scale_is_a_value_error():
    with pytest.raises(ValueError, match="scale must be one of"):
        nsf_optax.scale_by_nsf(scale="Adam")


def test_nsf_schedule_through_inject_hyperparams_equals_direct(dtype):
    """An nsf schedule wrapped by nsf.optax.schedule is an optax schedule: inject_hyperparams evaluates it at
    the same counts as scale_by_nsf does."""
    params, grads = _problem(dtype, seed=5)
    direct = _optax_updates(nsf_optax.scale_by_nsf(p=CYCLE), params, grads)
    injected = _optax_updates(optax.inject_hyperparams(nsf_optax.scale_by_nsf)(p=nsf_optax.schedule(CYCLE)),
                              params, grads)
    for a, b in zip(injected, direct):
        for k in SHAPES:
            np.testing.assert_allclose(a[k], b[k], **TOL[dtype])


# --- p schedules in closed form --------------------------------------------------------------------------------

S = nsf.schedules
CLOSED_FORM = {
    "constant": S.Constant(-0.25),
    "default": nsf.optim.defaults.DEFAULT_P,
    "default per run": nsf.default_cycle(total_steps=90),
    **{f"cyclic {shape}": S.Cyclic(-0.25, 0.5, period=12, shape=shape, phase=0.3) for shape in S.Cyclic.SHAPES},
    "cyclic quantized, 3 cycles in 100 steps": S.Cyclic(-1, 1, cycles=3, total_steps=100, shape="sine",
                                                        quantize=0.125),
    "cyclic 2.5 cycles per run": S.Cyclic(0, 0.5, cycles=2.5, total_steps=64, shape="triangle"),
    "anneal linear": S.Anneal(0.5, -0.25, steps=40),
    "anneal cosine": S.Anneal(0.5, -0.25, steps=40, shape="cosine"),
    "sequence": S.Sequence([(30, S.Anneal(0.5, 0, 30)), (20, 0.0),
                            (1, S.Sequence([(10, S.Cyclic(0, 0.5, period=7, shape="square"))]))]),
}
COUNTS = np.arange(0, 3000, 7, dtype=np.int32)


@pytest.mark.parametrize("name", list(CLOSED_FORM))
def test_schedule_closed_form_equals_the_torch_schedule(dtype, name):
    s = CLOSED_FORM[name]
    fn = jax.jit(jax.vmap(nsf_optax.schedule(s)))
    got = np.asarray(fn(jnp.asarray(COUNTS)))
    want = np.array([s(int(c)) for c in COUNTS])
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 if dtype == np.float64 else 1e-6, err_msg=name)
    if getattr(s, "quantize", None):  # on the grid exactly: the square-root kernels' values
        np.testing.assert_array_equal(got, want)


def _has_callback(jaxpr) -> bool:
    return "callback" in str(jaxpr)


@pytest.mark.parametrize("name", list(CLOSED_FORM))
def test_jitted_update_has_no_host_callback(name):
    params = {"w": jnp.ones((3, 4))}
    tx = nsf_optax.nsf(1e-2, p=CLOSED_FORM[name])
    jaxpr = jax.make_jaxpr(tx.update)(params, tx.init(params), params)
    assert not _has_callback(jaxpr), jaxpr


def test_default_update_has_no_host_callback_and_a_plain_function_still_works():
    params = {"w": jnp.ones((3, 4))}
    default = nsf_optax.nsf()
    assert not _has_callback(jax.make_jaxpr(default.update)(params, default.init(params), params))
    # a plain Python f(step) has no closed form: it is the one case that goes through the host
    plain = nsf_optax.nsf(p=S.CallableSchedule(lambda step: 0.25 if step < 2 else -0.25))
    assert _has_callback(jax.make_jaxpr(plain.update)(params, plain.init(params), params))
    state, update = plain.init(params), jax.jit(plain.update)
    for _ in range(3):
        u, state = update(params, state, params)
    assert np.all(np.isfinite(np.asarray(u["w"])))


# --- non-finite gradients --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("scale", nsf.optim.SCALES)
def test_a_bad_gradient_entry_spoils_only_its_coordinate_as_in_torch(dtype, scale, bad):
    """One NaN/inf entry of a 5x4 leaf at step 3: from then on that coordinate is not finite and every other
    coordinate of the leaf moves as the torch step moves it (before the mask, all 20 went non-finite)."""
    params, grads = _problem(dtype, seed=7)
    where = (1, 2)
    grads[2]["w"][where] = bad
    for p in (0.25, -0.25):
        want = _torch_updates(params, grads, lr=3e-2, p=p, scale=scale)
        got = _optax_updates(nsf_optax.nsf(3e-2, p=p, scale=scale), params, grads)
        for t, (a, b) in enumerate(zip(got, want)):
            finite = np.isfinite(a["w"])
            expected = np.ones_like(finite)
            if t >= 2:
                expected[where] = False
            assert np.array_equal(finite, expected), f"step {t + 1}, p={p}: non-finite at {np.argwhere(~finite)}"
            assert np.array_equal(np.isfinite(b["w"]), expected)  # torch does the same
            np.testing.assert_allclose(a["w"][finite], b["w"][finite], **TOL[dtype], err_msg=f"step {t + 1}")
            for k in ("b", "dead", "empty"):
                np.testing.assert_allclose(a[k], b[k], **TOL[dtype])
