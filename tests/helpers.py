"""Small shared pieces for the optimizer tests: a deterministic problem and an independent spec reference."""

from __future__ import annotations

import math

import torch


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


class SpecNSF:
    """The update of docs/method.md written out directly (float64, one tensor at a time), independent of nsf's code."""

    def __init__(self, params, lr, p, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, scale="raw",
                 amsgrad=False, decoupled=False, maximize=False):
        self.params = list(params)
        self.lr, self.p, self.eps, self.wd = lr, p, eps, weight_decay
        self.b1, self.b2 = betas
        self.scale, self.amsgrad, self.decoupled, self.maximize = scale, amsgrad, decoupled, maximize
        self.t = 0
        self.m = [torch.zeros_like(q) for q in self.params]
        self.v = [torch.zeros_like(q) for q in self.params]
        self.vmax = [torch.zeros_like(q) for q in self.params]

    def zero_grad(self):
        for q in self.params:
            q.grad = None

    @torch.no_grad()
    def step(self):
        self.t += 1
        t, p = self.t, (self.p(self.t - 1) if callable(self.p) else self.p)
        for i, theta in enumerate(self.params):
            g = theta.grad.clone()
            if self.maximize:
                g = -g
            if self.decoupled:
                theta.mul_(1 - self.lr * self.wd)
            else:
                g = g + self.wd * theta
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
            v = self.v[i]
            if self.amsgrad:
                self.vmax[i] = torch.maximum(self.vmax[i], self.v[i])
                v = self.vmax[i]
            m_hat = self.m[i] / (1 - self.b1**t)
            v_hat = v / (1 - self.b2**t)
            if p > 0:
                d = m_hat / (v_hat**p + self.eps)
            elif p == 0:
                d = m_hat
            else:
                d = m_hat * v_hat ** (-p)
            if self.scale == "sgd":
                d = d * _safe_ratio(m_hat.norm(), d.norm())
            elif self.scale == "adam":
                d = d * _safe_ratio((m_hat / (v_hat.sqrt() + self.eps)).norm(), d.norm())
            theta.sub_(self.lr * d)


def _safe_ratio(a, b):
    return a / b if b > 0 else torch.zeros_like(a)


def cyclic_value(step: int, low: float, high: float, period: int) -> float:
    """Triangle wave starting at ``low``, independent of nsf.schedules."""
    u = math.fmod(step / period, 1.0)
    return low + (high - low) * (1 - abs(2 * u - 1))
