"""The native CPU kernels of the fused step (``nsf/optim/_native.c``): what they take, that their sums do not depend
on the thread count, their float64 redo, and the fallback where they cannot be built. Their arithmetic is tested
equal to the reference with the other fused implementations (``each_fused_kernel`` in test_optim_fast.py)."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

import nsf
from conftest import require_native_kernels
from helpers import ReferenceNSF, assert_close_updates
from nsf.optim import _fused, _native
from test_optim_fast import make_params, run


@pytest.fixture
def native_calls(monkeypatch, native_fused_kernels):
    """The native steps taken: one entry per call, the number of tensors whose float32 sums were redone."""
    real, calls = _native.step, []

    def step(*args):
        calls.append(real(*args))
        return calls[-1]
    monkeypatch.setattr(_native, "step", step)
    return calls


@pytest.mark.parametrize("scale", ["raw", "adam"])
def test_float32_cpu_steps_take_the_native_kernels(native_calls, scale):
    run(make_params(), p=0.25, scale=scale, fused=True, steps=2)
    assert _fused._kernels == {}  # no compiled kernel ran
    assert native_calls == [0, 0]


def test_native_step_bumps_version_counters_so_autograd_sees_the_change(native_calls):
    """A parameter stepped between a forward pass and its backward: autograd raises, as with torch's optimizers
    (the native kernels write through pointers, so the version counters are bumped by hand)."""
    w = torch.ones(3, requires_grad=True)
    opt = nsf.NSF([w], lr=0.1, fused=True)
    w.grad = torch.ones(3)
    loss = (w * w).sum()  # saves w for backward
    opt.step()
    assert native_calls == [0]
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("options", [dict(amsgrad=True), dict(weight_decay=0.1), dict(dtype=torch.float64)])
def test_what_the_native_kernels_do_not_cover_takes_the_compiled_kernels(native_calls, options):
    options = dict(options)  # the parametrised dict is shared: not changed here
    dtype = options.pop("dtype", torch.float32)
    a, b = make_params(dtype=dtype), make_params(dtype=dtype)
    run(a, p=0.25, reference=True, **options)
    run(b, p=0.25, fused=True, **options)
    assert native_calls == [] and _fused._kernels != {}
    assert_close_updates(make_params(dtype=dtype), a, b)


def test_small_float32_models_take_the_native_kernels_automatically(native_calls):
    """``fused=None``: float32 CPU parameters take the native kernels at any size (no per-size compile to repay);
    the other cases keep the size rule."""
    run(make_params(), p=0.25, steps=1)
    assert native_calls == [0]
    run(make_params(), p=0.25, steps=1, amsgrad=True)  # not covered: small, so foreach
    run(make_params(), p=0.25, steps=1, foreach=True)
    assert native_calls == [0] and _fused._kernels == {}


@pytest.mark.parametrize("scale,p", [("adam", 0.125), ("sgd", -0.37), ("raw", -0.37)])
def test_native_step_is_the_same_at_any_thread_count(native_fused_kernels, scale, p):
    """Tensors large enough to be split across threads: the same bits with 1 and 2 threads (sums are added per
    block, in block order)."""
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            params = [torch.randn(300_001, generator=torch.Generator().manual_seed(0)).requires_grad_()]
            run(params, p=p, scale=scale, fused=True, steps=3)
            results.append(params[0].detach())
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("magnitude,redone", [(1e19, True), (1e-22, True), (1.0, False)])
def test_native_float32_sums_are_redone_in_float64_only_where_they_may_be_wrong(native_calls, magnitude, redone):
    """Gradients near 1e19 (squares overflow float32) or 1e-22 (they underflow): the first pass's float32 sums
    are rejected and redone in float64 from the stored moments, and the step is the reference's; ordinary
    gradients are not redone."""
    zeros = lambda: [q.detach().zero_().requires_grad_() for q in make_params()]  # noqa: E731
    a, b = zeros(), zeros()
    for params, make in ((a, ReferenceNSF), (b, functools.partial(nsf.NSF, fused=True))):
        opt = make(params, lr=1e-2, p=0.0 if magnitude < 1 else -1.0, scale="adam")
        g = torch.Generator().manual_seed(3)
        for _ in range(3):
            for q in params:
                q.grad = torch.randn(q.shape, generator=g) * magnitude
            opt.step()
    assert len(native_calls) == 3 and (sum(native_calls) > 0) == redone
    assert all(torch.isfinite(q).all() for q in b)
    assert_close_updates(zeros(), a, b)


def test_a_native_build_that_fails_warns_once_and_the_compiled_kernels_step(monkeypatch, tmp_path):
    """``fused=True`` says once why the kernels are missing and steps with the compiled kernels; the automatic
    choice says nothing (a small model quietly keeps the foreach path)."""
    require_native_kernels()
    monkeypatch.setattr(_fused, "BACKEND", None)
    monkeypatch.setattr(_fused, "_kernels", {})
    monkeypatch.setattr(_native, "_library", None)
    monkeypatch.setattr(_native, "_tried", False)
    monkeypatch.setenv("CC", "false")  # a compiler that always fails
    monkeypatch.setenv("NSF_CACHE_DIR", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(make_params(), p=0.25, steps=1)  # automatic: foreach, no warning
    assert _fused._kernels == {}
    a, b = make_params(), make_params()
    with pytest.warns(RuntimeWarning, match="native CPU kernels could not be built") as record:
        run(b, p=0.25, fused=True)
    assert len([w for w in record if "native" in str(w.message)]) == 1
    assert _fused._kernels != {} and not list(tmp_path.glob("*.so"))
    run(a, p=0.25, reference=True)
    assert_close_updates(make_params(), a, b)


def test_native_library_is_built_once_into_the_cache_dir(monkeypatch, tmp_path):
    require_native_kernels()
    monkeypatch.setattr(_native, "_library", None)
    monkeypatch.setattr(_native, "_tried", False)
    monkeypatch.setenv("NSF_CACHE_DIR", str(tmp_path))
    assert _native.library() is not None
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"
    monkeypatch.setattr(_native, "_library", None)
    monkeypatch.setattr(_native, "_tried", False)
    mtime = built[0].stat().st_mtime_ns
    assert _native.library() is not None and built[0].stat().st_mtime_ns == mtime  # loaded, not rebuilt


@pytest.mark.parametrize("scale,p", [("adam", 0.25), ("sgd", -0.37), ("adam", 0.0), ("raw", 0.25)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_native_non_finite_gradient_coordinate_damages_only_itself(native_calls, scale, p, bad):
    """A bad coordinate is left out of the grafted norms: every other coordinate moves as if its gradient had been
    0 (to float32 rounding: the first pass's sums are not finite, so the bad run's norms are redone in double)."""
    moves = []
    for value in (bad, 0.0):
        w = torch.zeros(5000, requires_grad=True)  # from 0, so that θ's rounding does not hide the step's
        start = w.detach().clone()
        opt = nsf.NSF([w], lr=1e-2, p=p, scale=scale, fused=True)
        g = torch.Generator().manual_seed(1)
        for step in range(3):
            w.grad = torch.randn(5000, generator=g)
            w.grad[7] = value if step == 0 else 0.0
            opt.step()
        moves.append(w.detach() - start)
    keep = torch.ones(5000, dtype=torch.bool)
    keep[7] = False
    largest = float(moves[1].abs().max())  # updates compared to 1e-5 of the largest
    torch.testing.assert_close(moves[0][keep], moves[1][keep], rtol=1e-5, atol=1e-5 * largest)
    assert not torch.isfinite(moves[0][7])
    # the bad run's m stays non-finite there (as in Adam), so each of its grafted steps redoes its norms in double
    assert native_calls == [int(scale != "raw")] * 3 + [0] * 3


def test_warm_up_builds_the_native_kernels_and_steps_nothing(native_calls, monkeypatch):
    monkeypatch.setattr(_native, "_library", None)
    monkeypatch.setattr(_native, "_tried", False)
    params = make_params()
    opt = nsf.NSF(params, total_steps=100)
    assert opt.warm_up() == 0 and _native._library is not None
    assert native_calls == [] and not opt.state and _fused._kernels == {}


def test_native_library_builds_in_a_private_temporary_directory_where_the_cache_cannot_be_made(monkeypatch,
                                                                                                 tmp_path):
    require_native_kernels()
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # the cache directory would have to be made under a file: fails, even for root
    monkeypatch.setattr(_native, "_library", None)
    monkeypatch.setattr(_native, "_tried", False)
    monkeypatch.setenv("NSF_CACHE_DIR", str(blocker / "nsf"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _native.library() is not None
    run(make_params(), p=0.25, fused=True, steps=1)


def test_a_variant_that_fails_to_compile_is_not_tried_again(monkeypatch, tmp_path):
    """A variant whose compile failed leaves a note in the cache: the next process (here: a reset module) skips
    it without compiling, and the working variant is loaded from the cache."""
    require_native_kernels()
    monkeypatch.setenv("NSF_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_native, "VARIANTS", (["-fopenmp", "--no-such-flag"], ["-fopenmp"]))
    compiles = []
    real_run = _native.subprocess.run

    def counting_run(cmd, *args, **kwargs):
        compiles.extend([cmd[-1]] if "-o" in cmd else [])
        return real_run(cmd, *args, **kwargs)
    monkeypatch.setattr(_native.subprocess, "run", counting_run)
    for _ in range(2):
        monkeypatch.setattr(_native, "_library", None)
        monkeypatch.setattr(_native, "_tried", False)
        assert _native.library() is not None
    assert len(compiles) == 2  # the first process: the bad variant and the good one; the second: none
    assert len(list(tmp_path.glob("*.failed"))) == 1 and len(list(tmp_path.glob("*.so"))) == 1


def test_native_first_moment_is_torchs_lerp_bit_for_bit(native_calls):
    """m ← lerp(m, g, 1 − β1) exactly as torch computes it (ATen's vectorised lerp: one fused multiply-add)."""
    g = torch.Generator().manual_seed(0)
    w = torch.zeros(10_000, requires_grad=True)
    opt = nsf.NSF([w], fused=True, betas=(0.9, 0.999))
    m = torch.zeros(10_000)
    for _ in range(3):
        w.grad = torch.randn(10_000, generator=g)
        opt.step()
        m = m.lerp(w.grad, 0.1)
    assert native_calls == [0, 0, 0] and torch.equal(opt.state[w]["exp_avg"], m)
