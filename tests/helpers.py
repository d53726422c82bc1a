"""Small shared pieces for the optimizer tests: a deterministic problem and the reference driven as an optimizer."""

from __future__ import annotations

import math

import torch

from nsf.optim import StepOptions, reference_step


def make_model(seed: int = 0, dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
    ).to(dtype)


def make_data(seed: int = 1, n: int = 64, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=dtype)
    y = torch.sin(x[:, :1] * 2) + 0.5 * x[:, 1:2] * x[:, 2:3]
    return x, y


def train(model, opt, steps: int, data=None) -> list[float]:
    x, y = data if data is not None else make_data(dtype=next(model.parameters()).dtype)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def assert_close_updates(initial, a, b, rtol=None):
    """The updates Δθ = θ − θ₀ of two runs agree within ``rtol`` of the update's size (per tensor, max-norm):
    comparing parameters of size ~1 would hide errors in updates of size 1e-3. Default: 1e-4 in float32,
    1e-10 in float64."""
    for x0, x, y in zip(initial, a, b):
        dx, dy = (x.detach() - x0.detach()).double(), (y.detach() - x0.detach()).double()
        tol = rtol if rtol is not None else (1e-10 if x0.dtype == torch.float64 else 1e-4)
        size = max(dx.abs().max().item(), 1e-300) if dx.numel() else 1.0
        torch.testing.assert_close(dx, dy, rtol=0, atol=tol * size)


class ReferenceNSF:
    """``nsf.optim.reference_step`` (the method written out) driven as an optimizer: what every path is tested
    against. ``p``: a number or ``f(step)``; ``options``: the other ``StepOptions`` fields."""

    def __init__(self, params, lr, p, **options):
        self.params = list(params)
        self.lr, self.p, self.options = lr, p, options
        self.state: dict[torch.Tensor, dict] = {}
        self.t = 0

    def zero_grad(self):
        for q in self.params:
            q.grad = None

    def step(self):
        p = self.p(self.t) if callable(self.p) else self.p
        self.t += 1
        options = StepOptions(p=p, lr=self.lr, **self.options)
        for q in self.params:
            if q.grad is not None:
                reference_step(q, q.grad, self.state.setdefault(q, {}), options)


def cyclic_value(step: int, low: float, high: float, period: int) -> float:
    """Triangle wave starting at ``low``, independent of nsf.schedules."""
    u = math.fmod(step / period, 1.0)
    return low + (high - low) * (1 - abs(2 * u - 1))
