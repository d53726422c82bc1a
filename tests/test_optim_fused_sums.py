"""The fused step's float32 sums on the CPU (checked on the host, redone in float64 when they may be wrong) and
``NSF.warm_up()`` (every kernel a p schedule visits, compiled up front)."""

from __future__ import annotations

import functools

import pytest
import torch

import nsf
from helpers import ReferenceNSF, assert_close_updates
from nsf.optim import _fused
from test_optim_fast import DEVICE, _frames, make_params


@pytest.mark.parametrize("scale", ["sgd", "adam"])
def test_fused_graft_float32_sums_that_underflow_are_redone(each_fused_kernel, scale):
    """Gradients near 1e-22: the squares of m·q underflow float32 (the CPU's float32 sums of stage 1); the
    sums are checked on the host and redone in float64, so the step is still the reference's (from θ = 0, so
    that steps of 1e-17 are not lost to θ's rounding)."""
    zeros = lambda: [q.detach().zero_().requires_grad_() for q in make_params()]  # noqa: E731
    a, b = zeros(), zeros()
    for params, make in ((a, ReferenceNSF), (b, functools.partial(nsf.NSF, fused=True))):
        opt = make(params, lr=1e-2, p=0.0, scale=scale)  # d = m (v underflows to 0: p < 0 takes no step)
        g = torch.Generator().manual_seed(3)
        for _ in range(3):
            for q in params:
                q.grad = (torch.randn(q.shape, generator=g) * 1e-22).to(DEVICE)
            opt.step()
    assert all(q.abs().max() > 0 for q in b)
    assert_close_updates(zeros(), a, b)


def test_fused_graft_float32_sums_of_zero_and_empty_tensors_are_not_redone(monkeypatch, uncompiled_fused_kernels):
    """A zero m (no gradient yet) and an empty tensor have exact float32 sums (0): no float64 redo."""
    params = [*make_params(), torch.zeros(0, 3).to(DEVICE).requires_grad_()]
    opt = nsf.NSF(params, lr=1e-2, p=0.25, fused=True)
    for q in params:
        q.grad = torch.zeros_like(q)
    for _ in range(2):
        opt.step()
    assert {key[2].accumulate for key in _fused._kernels} == {torch.float32}  # stages 1 and 2, no redo


@pytest.mark.parametrize("fused", [True, None])
def test_warm_up_compiles_the_whole_cycle_up_front(monkeypatch, dynamo_fused_kernels, fused):
    """``NSF.warm_up()`` compiles every kernel the default cycle visits (p = 0, ⅛, ¼, ⅜, ½) on scratch tensors:
    it changes no parameter or state, and a whole cycle of steps afterwards compiles no new kernel (dynamo
    frames counted). ``fused=None`` takes the compiled path only from ``AUTO_FUSED_MIN_NUMEL`` elements."""
    from nsf.optim import nsf as nsf_module
    from nsf.optim.defaults import default_cycle
    if fused is None:
        monkeypatch.setattr(nsf_module, "AUTO_FUSED_MIN_NUMEL", 1)
    params = make_params()
    before = [q.detach().clone() for q in params]
    opt = nsf.NSF(params, lr=1e-2, p=default_cycle(16), fused=fused)
    compiled = opt.warm_up()
    assert compiled == len(_fused._kernels) == 9  # ⅛, ¼, ⅜ and 0 grafted (two stages each); ½ raw (Adam's)
    assert all(torch.equal(q, b) for q, b in zip(params, before)) and not opt.state
    assert opt.param_groups[0]["step"] == 0 and float(opt.param_groups[0]["p"]) == 0.0
    frames = _frames()
    g = torch.Generator().manual_seed(0)
    for _ in range(17):
        for q in params:
            q.grad = torch.randn(q.shape, generator=g).to(DEVICE)
        opt.step()
    assert _frames() == frames and len(_fused._kernels) == 9, "a compile landed mid-training"
    assert opt.warm_up() == 0


def test_warm_up_compiles_nothing_where_the_fused_path_is_not_taken(dynamo_fused_kernels):
    assert nsf.NSF(make_params(), foreach=True).warm_up() == 0
    assert nsf.NSF(make_params()).warm_up() == 0  # small: the automatic choice is foreach
    assert not _fused._kernels
