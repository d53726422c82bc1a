"""The grafted step on the device (issues #10, #11): no host read of a device value inside ``step()`` with
``capturable=True``, and a NaN/inf gradient coordinate damages only its own coordinate, on every path."""

from __future__ import annotations

import pytest
import torch

import nsf

#: one p per exponent kind: zero, the square-root chains (both signs), and the general power (both signs)
P_KINDS = [0.0, 0.25, -0.25, 0.5, -0.5, 0.75, -0.75, 1.0, -1.0, 0.37, -0.37]
SCALES = ["raw", "sgd", "adam"]
PATHS = {"single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


def _params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in [(40,), (6, 5), (3,)]]


def _set_grads(params, g):
    for q in params:
        q.grad = torch.randn(q.shape, generator=g, dtype=q.dtype) * 10 ** torch.randint(-3, 2, q.shape, generator=g)


@pytest.mark.parametrize("path", ["foreach", "fused"])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("p", P_KINDS)
def test_capturable_step_reads_no_device_value_on_the_host(monkeypatch, uncompiled_fused_kernels, path, scale,
                                                           p):
    """Any .item()/.tolist()/bool()/float()/int() of a tensor inside step() fails, except of group["p"] (a
    host tensor by design); lr is a tensor too, so it is covered."""
    params = _params()
    opt = nsf.NSF(params, lr=torch.tensor(1e-2), p=p, scale=scale, capturable=True, weight_decay=0.01,
                  **PATHS[path])
    g = torch.Generator().manual_seed(1)
    allowed = {id(opt.param_groups[0]["p"])}
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def guard(name):
        def read(self, *args, **kwargs):
            if id(self) not in allowed:
                raise AssertionError(f"step() read a tensor on the host: Tensor.{name}")
            return originals[name](self, *args, **kwargs)
        return read

    for step in range(3):
        _set_grads(params, g)
        with monkeypatch.context() as m:
            for name in HOST_READS:
                m.setattr(torch.Tensor, name, guard(name))
            opt.step()
    assert all(torch.isfinite(q).all() for q in params)
    assert all(s["step"].dtype == torch.float32 and int(s["step"]) == 3 for s in opt.state.values())


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("p", [-0.37, -0.25, 0.0, 0.25, 0.5])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_gradient_coordinate_damages_only_itself(uncompiled_fused_kernels, path, scale, p, bad):
    """A bad coordinate is left out of the grafted norms, so every other coordinate moves exactly as if that
    coordinate's gradient were 0 throughout (which contributes nothing to the norms either), step after step:
    its m and v stay non-finite, as in Adam."""
    runs = []
    for value in (bad, 0.0):
        params = _params(torch.float64)
        start = [q.detach().clone() for q in params]
        opt = nsf.NSF(params, lr=1e-2, p=p, scale=scale, **PATHS[path])
        g = torch.Generator().manual_seed(3)
        for step in range(4):
            _set_grads(params, g)
            params[0].grad[7] = value if step == 0 else 0.0
            opt.step()
        runs.append([(q.detach() - q0).clone() for q, q0 in zip(params, start)])
    (damaged, clean) = runs
    keep = torch.ones(40, dtype=torch.bool)
    keep[7] = False
    torch.testing.assert_close(damaged[0][keep], clean[0][keep], rtol=1e-12, atol=0)
    for a, b in zip(damaged[1:], clean[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    assert torch.isfinite(clean[0]).all()


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("scale", ["sgd", "adam"])
def test_grafted_non_finite_coordinate_is_lost_as_in_adam(uncompiled_fused_kernels, path, scale):
    """The bad coordinate itself ends non-finite, as torch.optim.Adam's does (its m and v are NaN/inf)."""
    theta = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    adam_theta = theta.detach().clone().requires_grad_()
    opt = nsf.NSF([theta], lr=1e-2, p=0.25, scale=scale, **PATHS[path])
    adam = torch.optim.Adam([adam_theta], lr=1e-2)
    grad = torch.tensor([1.0, float("nan"), -2.0, 0.5, 3.0], dtype=torch.float64)
    theta.grad, adam_theta.grad = grad.clone(), grad.clone()
    opt.step()
    adam.step()
    assert torch.equal(torch.isfinite(theta), torch.isfinite(adam_theta))


def test_host_graft_ratio_decides_as_the_device_one():
    """The CPU foreach graft forms its factors from host numbers: the same float64 arithmetic and the same
    zero for a zero, NaN or infinite norm as ``_graft_ratio`` on tensors."""
    from nsf.optim._single_tensor import _graft_ratio, _graft_ratio_host
    values = [0.0, 1e-300, 3e-8, 0.7, 1.0, 12.5, 1e300, float("inf"), float("nan")]
    pairs = [(a, b) for a in values for b in values]
    d = torch.tensor([a for a, _ in pairs], dtype=torch.float64)
    r = torch.tensor([b for _, b in pairs], dtype=torch.float64)
    device = _graft_ratio(d, r, torch.full_like(d, 0.19)).tolist()
    host = [_graft_ratio_host(a, b, 0.19) for a, b in pairs]
    assert host == device


@pytest.mark.parametrize("scale", ["sgd", "adam"])
@pytest.mark.parametrize("p", [0.0, 0.25, -0.37])
def test_cpu_foreach_graft_host_factors_equal_device_factors(scale, p):
    """The CPU path (norms read on the host) and the device path (capturable: no host read) take the same
    step, to float32 rounding of the norms."""
    updates = []
    for capturable in (False, True):
        params = _params(seed=2)
        start = [q.detach().clone() for q in params]
        opt = nsf.NSF(params, lr=1e-2, p=p, scale=scale, foreach=True, capturable=capturable)
        g = torch.Generator().manual_seed(4)
        for _ in range(3):
            _set_grads(params, g)
            opt.step()
        updates.append([(q.detach() - q0).double() for q, q0 in zip(params, start)])
    for a, b in zip(*updates):
        assert a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * a.abs().max().item())


@pytest.mark.parametrize("scale", ["sgd", "adam"])
@pytest.mark.parametrize("magnitude", [1e-24, 1e25])
def test_cpu_foreach_graft_norms_survive_float32_underflow_and_overflow(scale, magnitude):
    """The CPU foreach graft takes float32 norms where they are exact enough: gradients of 1e-24 (squares below
    the smallest float32) or 1e25 (squares above the largest) must still give the reference's step, not a
    zero step or none. θ starts at 0 so that a step of 1e-26 is visible."""
    runs = {}
    for path in ("single", "foreach"):
        theta = [torch.zeros(50), torch.zeros(7, 3)]
        opt = nsf.NSF(theta, lr=1e-2, p=0.25, scale=scale, **PATHS[path])
        g = torch.Generator().manual_seed(3)
        for _ in range(3):
            for q in theta:
                q.grad = torch.randn(q.shape, generator=g) * magnitude
            opt.step()
        runs[path] = theta
    for ref, got in zip(runs["single"], runs["foreach"]):
        assert ref.abs().max() > 0
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=0)


@pytest.mark.parametrize("bad", [None, float("nan")])
def test_cpu_foreach_graft_masks_only_when_a_norm_is_not_finite(monkeypatch, bad):
    """On the CPU (not capturable) the foreach graft takes the plain norms and masks non-finite entries
    (nan_to_num per tensor, most of a small model's norm cost) only when a norm is not finite."""
    calls = []
    real = torch.nan_to_num
    monkeypatch.setattr(torch, "nan_to_num", lambda *a, **k: calls.append(1) or real(*a, **k))
    params = _params()
    opt = nsf.NSF(params, lr=1e-2, p=0.25, scale="adam", foreach=True)
    _set_grads(params, torch.Generator().manual_seed(1))
    if bad is not None:
        params[1].grad[0, 0] = bad
    opt.step()
    assert bool(calls) == (bad is not None)
