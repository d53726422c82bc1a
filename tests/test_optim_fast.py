"""The fast paths: square-root chains for |p| a multiple of ⅛ up to 1, the fused (torch.compile) step, its
automatic choice and fallback, and stepped (quantised) cycles. Every fast path takes the reference's step
(``nsf.optim.reference_step``)."""

from __future__ import annotations

import functools
import io
import os
import shutil
import warnings

import pytest
import torch

import nsf
from helpers import ReferenceNSF, assert_close_updates
from nsf.optim import StepOptions, _foreach, _fused, _fused_kernels

torch.set_num_threads(1)
#: benchmarks/gpu_check.sh runs this file with NSF_TEST_DEVICE=cuda
DEVICE = os.environ.get("NSF_TEST_DEVICE", "cpu")

FAST_P = [0.25, 0.5, 0.75, 1.0, -0.25, -0.5, -0.75, -1.0, 0.0, 0.125, -0.375, 0.875]


def make_params(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    shapes = [(12, 7), (7,), (5, 3, 2), (1,)]
    return [torch.randn(s, generator=g, dtype=dtype).to(DEVICE).requires_grad_() for s in shapes]


def run(params, steps=8, seed=1, lr_sched=None, reference=False, **options):
    """Steps with fixed pseudo-random gradients (some exact zeros, a wide range of magnitudes), taken by NSF or,
    with ``reference``, by ``nsf.optim.reference_step``."""
    g = torch.Generator().manual_seed(seed)
    opt = (ReferenceNSF if reference else nsf.NSF)(params, **{"lr": 1e-2, **options})
    sched = lr_sched(opt) if lr_sched else None
    for _ in range(steps):
        for q in params:
            grad = torch.randn(q.shape, generator=g, dtype=q.dtype) * 10 ** torch.randint(-4, 1, q.shape, generator=g)
            grad[torch.rand(q.shape, generator=g) < 0.1] = 0
            q.grad = grad.to(DEVICE)
        opt.step()
        if sched:
            sched.step()
    return opt


def assert_close_params(a, b, rtol=2e-5, atol=1e-6):
    """Final parameters equal to tight absolute precision (for exact-equality checks with rtol = atol = 0)."""
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


# --- exponent kinds and square-root chains ----------------------------------------------------------------

def test_exponent_kinds():
    assert [_fused_kernels.exponent_kind(p) for p in (0.25, 0.5, 0.75, 1.0)] == ["+0.25", "+0.5", "+0.75", "+1.0"]
    assert [_fused_kernels.exponent_kind(p) for p in (-0.25, -1.0)] == ["-0.25", "-1.0"]
    assert [_fused_kernels.exponent_kind(p) for p in (0.125, -0.375, 0.625, 0.875)] == ["+0.125", "-0.375", "+0.625",
                                                                                 "+0.875"]
    assert _fused_kernels.exponent_kind(0.0) == "zero" and _fused_kernels.exponent_kind(-0.0) == "zero"
    for p in (0.3, -0.37, 0.2500001, 1.25, -2.0, 0.0625, 1.125):
        assert _fused_kernels.exponent_kind(p) == ("+pow" if p > 0 else "-pow") and not _fused_kernels.is_fast(p)


@pytest.mark.parametrize("exponent", [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0])
def test_foreach_square_root_chains_equal_pow(exponent):
    """Within 4 float32 ulps (2⁻²¹) of the correctly rounded power: up to three roots (½ ulp each, halved
    along the chain) and two products (½ ulp each); 200 seeds of these 1000 draws reach 2.95 ulps."""
    random = torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 1e-3
    x = torch.cat([torch.tensor([0.0, 1e-38, 1e-30, 1.0, 3.5e38, float("inf")]), random]).to(DEVICE)
    before = x.clone()
    got = _foreach._foreach_power([x], exponent)[0]
    want = x.double().pow(exponent).float()
    torch.testing.assert_close(got, want, rtol=2**-21, atol=0)
    torch.testing.assert_close(_fused_kernels._power(x, exponent), want, rtol=2**-21, atol=0)
    assert got.data_ptr() != x.data_ptr()  # a new tensor: callers add to it in place
    assert torch.equal(x, before)  # the chain's in-place roots never touch the input


@pytest.mark.parametrize("p", FAST_P + [-0.37])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_foreach_fast_paths_equal_reference(p, amsgrad):
    a, b = make_params(), make_params()
    run(a, p=p, amsgrad=amsgrad, weight_decay=0.01, reference=True)
    run(b, p=p, amsgrad=amsgrad, weight_decay=0.01, foreach=True)
    assert_close_updates(make_params(), a, b)


# --- the fused kernel ------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", ["raw", "sgd", "adam"])
@pytest.mark.parametrize("p", FAST_P + [-0.37, 0.3])
def test_fused_kernel_equals_reference_every_exponent_kind(each_fused_kernel, p, scale):
    a, b = make_params(), make_params()
    run(a, p=p, scale=scale, reference=True)
    run(b, p=p, scale=scale, fused=True)
    assert_close_updates(make_params(), a, b)


def test_kernel_variants_trace_with_dynamo(dynamo_fused_kernels):
    """fullgraph=True: the kernel variants trace as one graph each (backend "eager": no C++ compile). The
    inductor tests below cover the general-p raw kernel and the ¼ raw and grafted ones."""
    for scale, values in (("raw", [0.75, -1.0, 0.0, -0.5]), ("adam", [-0.37, 0.0])):
        a, b = make_params(), make_params()
        schedule = lambda t, values=values: values[t]  # noqa: E731
        options = dict(p=schedule, scale=scale, steps=len(values), amsgrad=True, maximize=True, weight_decay=0.01)
        run(a, reference=True, **options)
        run(b, fused=True, **options)
        assert_close_updates(make_params(), a, b)
    assert len(_fused._kernels) == 4 + 2 + 2  # raw kinds, graft kinds, their apply stages


@pytest.mark.parametrize("scale", ["sgd", "adam"])
def test_fused_graft_zero_gradient_tensor_takes_no_step(each_fused_kernel, scale):
    params = make_params()
    before = params[1].detach().clone()
    opt = nsf.NSF(params, lr=1e-2, p=-0.3, scale=scale, fused=True)
    for q in params:
        q.grad = torch.randn_like(q)
    params[1].grad.zero_()
    opt.step()
    assert torch.equal(params[1].detach(), before)
    assert all(torch.isfinite(q).all() for q in params)


@pytest.mark.parametrize("scale", ["sgd", "adam"])
@pytest.mark.parametrize("decoupled", [False, True])
def test_fused_graft_overflowing_norms_equal_the_reference(each_fused_kernel, scale, decoupled):
    """Gradients near 1e19: v ≈ 1e38, v̂ and v̂^|p|·m̂ overflow float32; the grafted step is still the reference's."""
    a, b = make_params(), make_params()
    for params, make in ((a, ReferenceNSF), (b, functools.partial(nsf.NSF, fused=True))):
        opt = make(params, lr=1e-2, p=-1.0, scale=scale, weight_decay=0.1, decoupled_weight_decay=decoupled)
        g = torch.Generator().manual_seed(2)
        for _ in range(3):
            for q in params:
                q.grad = (torch.randn(q.shape, generator=g) * 1e19).to(DEVICE)
            opt.step()
    assert all(torch.isfinite(q).all() for q in b)
    assert_close_updates(make_params(), a, b)


@pytest.mark.parametrize("options", [
    dict(weight_decay=0.05),
    dict(weight_decay=0.05, decoupled_weight_decay=True),
    dict(amsgrad=True, maximize=True),
    dict(betas=(0.5, 0.9), eps=1e-3),
])
@pytest.mark.parametrize("p,scale", [(0.5, "raw"), (-0.37, "raw"), (-0.37, "adam")])
def test_fused_kernel_equals_reference_options(each_fused_kernel, options, p, scale):
    a, b = make_params(), make_params()
    run(a, p=p, scale=scale, reference=True, **options)
    run(b, p=p, scale=scale, fused=True, **options)
    assert_close_updates(make_params(), a, b)


def test_fused_kernel_float64_is_tight(uncompiled_fused_kernels):
    a, b = make_params(dtype=torch.float64), make_params(dtype=torch.float64)
    run(a, p=-0.37, reference=True, weight_decay=0.01)
    run(b, p=-0.37, fused=True, weight_decay=0.01)
    assert_close_updates(make_params(dtype=torch.float64), a, b, rtol=1e-12)


def test_fused_cases_it_does_not_cover_take_the_other_paths(uncompiled_fused_kernels):
    z = [torch.randn(4, 3, dtype=torch.complex64).to(DEVICE).requires_grad_()]
    z_ref = [z[0].detach().clone().requires_grad_()]
    run(z, p=0.25, fused=True)
    run(z_ref, p=0.25, foreach=True)
    torch.testing.assert_close(z[0], z_ref[0], rtol=0, atol=0)
    assert _fused._kernels == {}


def test_fused_option_conflicts_raise():
    q = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="fused"):
        nsf.NSF(q, fused=True, foreach=True)
    with pytest.raises(ValueError, match="fused"):
        nsf.NSF(q, fused=True, differentiable=True)
    opt = nsf.NSF(q)
    with pytest.raises(ValueError, match="fused"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "fused": True, "foreach": True})


def test_auto_choice_is_by_size(uncompiled_fused_kernels):
    """``fused=None`` takes the compiled step from ``AUTO_FUSED_MIN_NUMEL`` elements per call (summed over the
    group's tensors) when no path was asked for; ``foreach=True``, ``fused=False`` and complex parameters keep it
    off; ``fused=True`` takes it at any size."""
    threshold = nsf.optim.nsf.AUTO_FUSED_MIN_NUMEL

    def fused_ran(numel, dtype=torch.float32, **options):
        _fused._kernels.clear()
        params = [torch.zeros(numel - 1, dtype=dtype, requires_grad=True),
                  torch.zeros(1, dtype=dtype, requires_grad=True)]
        opt = nsf.NSF(params, p=0.25, scale="raw", **options)
        for q in params:
            q.grad = torch.ones_like(q)
        opt.step()
        return bool(_fused._kernels)

    assert fused_ran(threshold) and not fused_ran(threshold - 1)
    assert not fused_ran(threshold, foreach=True)
    assert not fused_ran(threshold, fused=False)
    assert not fused_ran(threshold, dtype=torch.complex64)
    assert fused_ran(1000, fused=True)


def test_fused_state_dict_is_the_foreach_state_dict(each_fused_kernel, tmp_path):
    """Same state layout: a fused run resumes bit-for-bit-compatibly on the foreach path and back."""
    a, b = make_params(), make_params()
    opt_a = run(a, p=nsf.schedules.Cyclic(-0.3, 0.3, period=5), fused=True)
    opt_b = run(b, p=nsf.schedules.Cyclic(-0.3, 0.3, period=5), foreach=True)
    buf = io.BytesIO()
    torch.save(opt_a.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded["param_groups"][0]["fused"] is True
    for k in ("exp_avg", "exp_avg_sq", "step"):
        assert_close_params([opt_a.state[q][k] for q in a], [opt_b.state[q][k] for q in b])


class BackendCompilerFailed(RuntimeError):
    """Stands for dynamo's compile failure (matched by name)."""


def test_fused_fallback_is_per_optimizer_and_warns_once(monkeypatch, dynamo_fused_kernels):
    """No compiler, unsupported platform...: that optimizer warns once and takes the foreach path, exactly;
    an optimizer built afterwards still compiles (issue #14: never process-wide)."""
    real_compile = torch.compile

    def broken_compile(fn, **kwargs):
        def run_it(*args):
            raise BackendCompilerFailed("no C++ compiler found")
        return run_it

    monkeypatch.setattr(_fused.torch, "compile", broken_compile)
    a, b = make_params(), make_params()
    with pytest.warns(RuntimeWarning, match="fused") as record:
        opt = run(a, p=-0.37, scale="raw", fused=True)
    assert len([w for w in record if "fused" in str(w.message)]) == 1
    run(b, p=-0.37, scale="raw", foreach=True)
    assert_close_params(a, b, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only, and no new compile attempt for this optimizer
        for q in a:
            q.grad = torch.ones_like(q)
        opt.step()
    assert _fused._kernels == {}

    monkeypatch.setattr(_fused.torch, "compile", real_compile)  # the compiler works again
    c, d = make_params(), make_params()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        run(c, p=-0.37, scale="raw", fused=True)
    assert len(_fused._kernels) == 1  # another optimizer compiled its kernel
    run(d, p=-0.37, scale="raw", reference=True)
    assert_close_updates(make_params(), c, d)


def test_fused_graft_stage_one_writes_nothing_and_a_stage_two_failure_falls_back(monkeypatch, dynamo_fused_kernels):
    """Stage 1 only reads (stage 2 writes m, v and θ), so when only stage 2 fails to compile the step is the
    foreach path's, exactly, with one warning; the optimizer then stays on the foreach path."""
    real_compile = torch.compile

    def stage_two_broken(fn, **kwargs):
        if fn.__name__.startswith("graft_apply_kernel"):
            def run_it(*args):
                raise BackendCompilerFailed("no C++ compiler found")
            return run_it
        return real_compile(fn, **kwargs)

    monkeypatch.setattr(_fused.torch, "compile", stage_two_broken)
    a, b = make_params(), make_params()
    with pytest.warns(RuntimeWarning, match="fused") as record:
        run(a, p=-0.37, scale="adam", fused=True, weight_decay=0.01)
    assert len([w for w in record if "fused" in str(w.message)]) == 1
    run(b, p=-0.37, scale="adam", foreach=True, weight_decay=0.01)
    assert_close_params(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("scale", ["sgd", "adam"])
@pytest.mark.parametrize("p", [0.25, -0.37])
def test_fused_graft_stage_one_reads_only(uncompiled_fused_kernels, scale, p):
    params = make_params()
    opt = run(params, p=p, scale=scale, fused=True, steps=2)
    state = [t.clone() for q in params for t in opt.state[q].values()]
    before = [q.detach().clone() for q in params]
    stage_one = next(k for key, k in _fused._kernels.items() if key[1] == "graft_norms_kernel")
    for q in params:
        q.grad = torch.randn_like(q)
    grouped = [params, [q.grad for q in params], *([opt.state[q][n] for q in params]
                                                   for n in ("exp_avg", "exp_avg_sq"))]
    options = StepOptions(p=p, lr=1e-2, scale=scale)
    scalars, hyper, _, _ = _fused._scalars([opt.state[q]["step"] for q in params], options, p, params[0].device,
                                           torch.float32)
    with torch.no_grad():
        sums = stage_one(*grouped, [], scalars, hyper)
    assert sums.shape == (len(params), len(_fused_kernels.GraftNorms._fields)) and torch.isfinite(sums).all()
    assert all(torch.equal(x, y) for x, y in zip(state, [t for q in params for t in opt.state[q].values()]))
    assert all(torch.equal(x, y) for x, y in zip(before, params))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_graft_finite_mask_is_isfinite(dtype):
    """Stage 1's mask, (|m| + x)/2 < inf with x ≥ 0 clamped to the largest float, is isfinite(m) & isfinite(x),
    also at the largest floats (where |m| + x alone would overflow)."""
    big, inf, nan = torch.finfo(dtype).max, float("inf"), float("nan")
    values = torch.tensor([0.0, 1e-30, -1.0, big, -big, inf, -inf, nan], dtype=dtype)
    m, v = torch.meshgrid(values, values.abs(), indexing="ij")
    x = v.clamp(max=big)
    assert torch.equal(_fused_kernels._finite(m, x), torch.isfinite(m) & torch.isfinite(x))


def test_fused_checks_devices_and_dtypes_up_front(uncompiled_fused_kernels):
    """torch's fused optimizers' RuntimeError, before anything is compiled or written."""
    meta = [torch.zeros(3, device="meta", requires_grad=True)]
    meta[0].grad = torch.zeros(3, device="meta")
    with pytest.raises(RuntimeError, match="fused=True.*supported devices"):
        nsf.NSF(meta, fused=True).step()
    assert _fused._kernels == {}


def test_fused_errors_that_are_not_compile_failures_propagate(monkeypatch):
    def bad_compile(fn, **kwargs):
        def run_it(*args):
            raise KeyError("a bug")
        return run_it

    monkeypatch.setattr(_fused, "_kernels", {})
    monkeypatch.setattr(_fused, "NATIVE", False)
    monkeypatch.setattr(_fused.torch, "compile", bad_compile)
    with pytest.raises(KeyError):
        run(make_params(), p=0.3, fused=True, steps=1)


# --- the real compiled kernel (inductor): one exponent kind per test keeps compile time down --------------------

INDUCTOR = any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++"))


def _frames():
    from torch._dynamo.utils import counters
    return sum(counters["frames"].values()), counters["stats"]["unique_graphs"]


@pytest.mark.skipif(not INDUCTOR, reason="torch.compile or a C++ compiler unavailable")
def test_inductor_fused_general_p_moving_p_and_lr_never_recompile(monkeypatch):
    monkeypatch.setattr(_fused, "_kernels", {})
    monkeypatch.setattr(_fused, "NATIVE", False)
    schedule = nsf.schedules.Cyclic(-0.45, -0.05, period=7, shape="triangle")  # never a fast value
    a, b = make_params(), make_params()
    ref = nsf.NSF(a, lr=1e-2, scale="raw", p=schedule, foreach=False, weight_decay=0.01)
    opt = nsf.NSF(b, lr=1e-2, scale="raw", p=schedule, fused=True, weight_decay=0.01)
    g = torch.Generator().manual_seed(5)
    seen = set()
    for step in range(15):
        if step == 3:  # after warm-up: count from here
            frames = _frames()
            assert len(_fused._kernels) == 1
        grads = [torch.randn(q.shape, generator=g).to(DEVICE) for q in a]
        for qa, qb, grad in zip(a, b, grads):
            qa.grad, qb.grad = grad.clone(), grad.clone()
        ref.step()
        opt.step()
        for o in (ref, opt):  # an lr schedule
            o.param_groups[0]["lr"] *= 0.9
        seen.add(float(opt.param_groups[0]["p"]))
    assert len(seen) >= 6
    assert _frames() == frames, "a moving p or lr recompiled the fused step"
    assert len(_fused._kernels) == 1
    assert_close_updates(make_params(), a, b)


@pytest.mark.skipif(not INDUCTOR, reason="torch.compile or a C++ compiler unavailable")
@pytest.mark.parametrize("scale", ["raw", "adam"])
def test_inductor_fused_fast_path_equals_reference(monkeypatch, scale):
    monkeypatch.setattr(_fused, "_kernels", {})
    monkeypatch.setattr(_fused, "NATIVE", False)
    a, b = make_params(), make_params()
    run(a, p=0.25, scale=scale, reference=True, weight_decay=0.01, amsgrad=True)
    run(b, p=0.25, scale=scale, fused=True, weight_decay=0.01, amsgrad=True)
    assert_close_updates(make_params(), a, b)


# --- stepped cycles ---------------------------------------------------------------------------------------

def test_cyclic_quantize_stays_on_fast_paths_and_serialises():
    c = nsf.schedules.Cyclic(-0.5, 0.5, period=40, shape="cosine", quantize=0.25)
    values = [c(t) for t in range(80)]
    assert set(values) <= {-0.5, -0.25, 0.0, 0.25, 0.5}
    assert set(values) == {-0.5, -0.25, 0.0, 0.25, 0.5}
    assert all(_fused_kernels.is_fast(v) for v in values)
    assert not any(str(v) == "-0.0" for v in values)
    d = c.to_dict()
    assert d["quantize"] == 0.25
    assert [nsf.schedules.from_dict(d)(t) for t in range(80)] == values
    plain = nsf.schedules.Cyclic(-0.5, 0.5, period=40)
    assert "quantize" not in plain.to_dict()  # unchanged description when not used
    for bad in (0, -0.25, float("nan")):
        with pytest.raises(ValueError, match="quantize"):
            nsf.schedules.Cyclic(-0.5, 0.5, period=40, quantize=bad)


def test_quantised_schedule_in_optimizer_state_dict_loads_weights_only():
    params = make_params()
    opt = run(params, p=nsf.schedules.Cyclic(-0.5, 0.5, period=6, quantize=0.25), foreach=True, steps=4)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert sd["param_groups"][0]["p_schedule"]["quantize"] == 0.25
    assert _fused_kernels.is_fast(float(opt.param_groups[0]["p"]))


def test_default_cycle_runs_on_square_root_chains_only(dynamo_fused_kernels):
    """The library default p visits 0, ⅛, ¼, ⅜, ½ and nothing else, so the fused path never builds a general
    (log/exp) kernel for it; and the fused default step equals the reference step."""
    from nsf.optim.defaults import DEFAULT_P, default_cycle
    values = {DEFAULT_P(t) for t in range(2000)}
    assert values == {0.0, 0.125, 0.25, 0.375, 0.5}
    assert all(_fused_kernels.is_fast(v) for v in values)
    per_run = default_cycle(total_steps=80)
    assert {per_run(t) for t in range(80)} == values and per_run(0) == per_run(40) == 0.0  # two whole cycles
    a, b = make_params(), make_params()
    run(a, p=default_cycle(8), reference=True, steps=8)
    run(b, p=default_cycle(8), fused=True, steps=8)
    assert_close_updates(make_params(), a, b)
    assert not any("pow" in str(key) for key in _fused._kernels)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_graft_at_p_half_is_adams_step_in_one_pass(uncompiled_fused_kernels, amsgrad):
    """scale="adam" at p = ½ grafts Adam's direction onto its own length: the fast paths take the one-pass raw
    kernel (no graft kernel is built) and still equal the reference's graft, which computes the norms."""
    ref, fused, each = make_params(), make_params(), make_params()
    run(ref, p=0.5, scale="adam", reference=True, amsgrad=amsgrad, weight_decay=0.01)
    run(fused, p=0.5, scale="adam", fused=True, amsgrad=amsgrad, weight_decay=0.01)
    run(each, p=0.5, scale="adam", foreach=True, amsgrad=amsgrad, weight_decay=0.01)
    assert_close_updates(make_params(), ref, fused)
    assert_close_updates(make_params(), ref, each)
    assert _fused._kernels and not any("graft_norms_kernel" in key for key in _fused._kernels)

