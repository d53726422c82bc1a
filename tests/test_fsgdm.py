"""FSGDM: the stage schedule of u, equality with a hand-written float64 reference, and the torch.optim contract."""

from __future__ import annotations

import io
import math

import pytest
import torch

from helpers import make_data, make_model
from nsf import FSGDM, create_optimizer
from nsf.optim.fsgdm import fsgdm_momentum


class SpecFSGDM:
    """The paper's update written out directly (float64): b <- u b + v (g + wd θ), θ <- θ - lr b, where at the
    t-th step (t = 1, 2, ...) u = s / (s + c T) and s = floor(t / L) L, L = floor(T / n_stages) (published code)."""

    def __init__(self, params, lr, total_steps, c=0.033, v=1.0, n_stages=300, weight_decay=0.0, maximize=False):
        self.params, self.lr, self.T, self.c, self.v = list(params), lr, total_steps, c, v
        self.n, self.wd, self.maximize, self.t = n_stages, weight_decay, maximize, 0
        self.b = [torch.zeros_like(q) for q in self.params]

    @torch.no_grad()
    def step(self):
        self.t += 1
        L = self.T // self.n
        s = math.floor(self.t / L) * L
        u = s / (s + self.c * self.T)
        for q, b in zip(self.params, self.b):
            g = -q.grad if self.maximize else q.grad
            b.copy_(u * b + self.v * (g + self.wd * q))
            q.copy_(q - self.lr * b)


def _grad_step(model, x, y, opt):
    before = [q.detach().clone() for q in model.parameters()]
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    return [q.detach() - b for q, b in zip(model.parameters(), before)]


@pytest.mark.parametrize("options", [
    {},
    {"weight_decay": 0.05},
    {"maximize": True, "v": 0.5, "c": 0.1},
])
def test_updates_match_float64_reference_across_stage_boundaries(options):
    T, n_stages = 60, 7  # L = 8: stage boundaries at steps 8, 16, ..., 56; u jumps at each
    ours, ref = make_model(), make_model()
    x, y = make_data()
    opt = FSGDM(ours.parameters(), lr=0.02, total_steps=T, n_stages=n_stages, **options)
    spec = SpecFSGDM(ref.parameters(), lr=0.02, total_steps=T, n_stages=n_stages, **options)
    for t in range(1, T + 6):  # a few steps past T too
        lr = 0.02 * (1 + math.cos(t))  # the LR changes every step, as under a scheduler
        opt.param_groups[0]["lr"] = spec.lr = lr
        d_ours, d_ref = _grad_step(ours, x, y, opt), _grad_step(ref, x, y, spec)
        for a, b in zip(d_ours, d_ref):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-15, msg=f"step {t}")


def test_u_at_stage_boundaries():
    # T = 1000, 300 stages: L = 3, mu = 33. Steps 1-2 are plain SGD; stage k begins at step 3k.
    expected = {1: 0.0, 2: 0.0, 3: 3 / 36, 4: 3 / 36, 5: 3 / 36, 6: 6 / 39, 998: 996 / 1029, 999: 999 / 1032,
                1000: 999 / 1032}
    for t, u in expected.items():
        assert fsgdm_momentum(t, 1000) == pytest.approx(u, rel=1e-15), t
    # fewer steps than stages: every step is its own stage
    assert fsgdm_momentum(7, 100) == pytest.approx(7 / (7 + 3.3), rel=1e-15)
    # and the optimizer uses that clock: with g = 1, lr = 1 the buffer is b_t = u_t b_{t-1} + 1, step = -b_t
    q = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = FSGDM([q], lr=1.0, total_steps=1000)
    prev_b = 0.0
    for t, u_expected in enumerate([0.0, 0.0, 3 / 36, 3 / 36, 3 / 36, 6 / 39, 6 / 39], start=1):
        before = q.item()
        q.grad = torch.ones((), dtype=torch.float64)
        opt.step()
        b = before - q.item()
        u = (b - 1.0) / prev_b if t > 1 else 0.0  # at t = 1 the buffer is empty: b = 1 whatever u is
        assert u == pytest.approx(u_expected, abs=1e-12), t
        prev_b = b


def test_weight_decay_is_coupled_into_the_buffer():
    theta0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    q = theta0.clone().requires_grad_()
    opt = FSGDM([q], lr=0.1, total_steps=20, n_stages=10, weight_decay=0.5)  # L = 2, mu = 0.66
    q.grad = torch.zeros_like(q)  # only the decay term drives it
    opt.step()  # t = 1: u = 0, b = 0.5 θ0
    torch.testing.assert_close(q.detach(), theta0 * (1 - 0.1 * 0.5), rtol=1e-15, atol=0)
    theta1, b1 = q.detach().clone(), 0.5 * theta0
    opt.step()  # t = 2: s = 2, u = 2 / 2.66; the decay enters the buffer, so the old decay term persists
    b2 = (2 / 2.66) * b1 + 0.5 * theta1
    torch.testing.assert_close(q.detach(), theta1 - 0.1 * b2, rtol=1e-14, atol=0)


def test_state_dict_round_trip_is_bit_exact():
    x, y = make_data()
    a = make_model()
    opt_a = FSGDM(a.parameters(), lr=0.03, total_steps=50, n_stages=10, weight_decay=1e-3)
    for _ in range(13):  # stop mid-stage (L = 5)
        _grad_step(a, x, y, opt_a)
    buffer = io.BytesIO()
    torch.save({"model": a.state_dict(), "opt": opt_a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    b = make_model(seed=5)
    b.load_state_dict(saved["model"])
    opt_b = FSGDM(b.parameters(), lr=0.5, total_steps=7)  # options and clock come from the state dict
    opt_b.load_state_dict(saved["opt"])
    assert opt_b.param_groups[0]["step"] == 13 and opt_b.param_groups[0]["total_steps"] == 50
    for _ in range(12):  # across two stage boundaries
        _grad_step(a, x, y, opt_a)
        _grad_step(b, x, y, opt_b)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_lazy_state_skips_params_without_grad_and_returns_closure_loss():
    used, unused = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = FSGDM([used, unused], lr=0.1, total_steps=10)
    assert len(opt.state) == 0
    loss = opt.step(lambda: (used.sum() * 2).backward() or torch.tensor(4.0))
    assert loss.item() == 4.0
    assert set(opt.state) == {used} and torch.equal(unused.detach(), torch.ones(2))
    torch.testing.assert_close(used.detach(), torch.full((2,), 0.8))


def test_registry_builds_it_with_total_steps():
    q = torch.zeros(3, requires_grad=True)
    opt = create_optimizer("fsgdm:c=0.05", [q], total_steps=100)
    assert type(opt) is FSGDM and opt.param_groups[0]["c"] == 0.05 and opt.param_groups[0]["lr"] == 0.05


@pytest.mark.parametrize("bad, match", [
    ({"total_steps": 0}, "total_steps"), ({"total_steps": 2.5}, "total_steps"), ({"total_steps": True}, "total_steps"),
    ({"n_stages": 0}, "n_stages"), ({"c": 0.0}, "Invalid c: 0.0; it must be a finite number > 0"), ({"c": float("nan")}, "Invalid c: nan"),
    ({"v": 0}, "Invalid v: 0.0"), ({"lr": -0.1}, "Invalid lr: -0.1; it must be a finite number >= 0"), ({"weight_decay": -1e-4}, "weight_decay"),
    ({"lr": "0.1"}, "Invalid lr: '0.1'; it must be a real number"), ({"maximize": 1}, "maximize"),
])
def test_bad_inputs_raise_clear_value_errors(bad, match):
    q = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        FSGDM([q], **{"lr": 0.1, "total_steps": 10, **bad})
    opt = FSGDM([q], lr=0.1, total_steps=10)
    with pytest.raises(ValueError, match=match):  # a bad group is refused before it is added
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], **bad})
    assert len(opt.param_groups) == 1


def test_total_steps_is_required():
    with pytest.raises(TypeError, match="total_steps"):
        FSGDM([torch.zeros(1, requires_grad=True)], lr=0.1)
