"""Xu et al.'s filtering split and the δ rule (docs/spectral.md §3)."""
import numpy as np
import torch
from torch.nn import functional as F

from nsf_lab.spectral import filtering as fl


def _clusters(n_per=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    x = torch.cat([c + torch.randn(n_per, 2, generator=g) for c in centers])
    y = torch.arange(3).repeat_interleave(n_per)
    # 15 % label noise so that the labels carry high-frequency content
    flip = torch.rand(len(y), generator=g) < 0.15
    y = torch.where(flip, (y + 1) % 3, y)
    return x, y


def test_kernel_is_row_stochastic_and_split_is_exact():
    x, y = _clusters()
    Y = F.one_hot(y, 3).float()
    G = fl.gaussian_kernel(x, 1.0, chunk=50)  # chunking must not change the result
    assert torch.allclose(G, fl.gaussian_kernel(x, 1.0), atol=1e-6)
    assert torch.allclose(G.sum(1), torch.ones(len(x)), atol=1e-5)
    low, high = fl.split(Y, G)
    assert torch.allclose(low + high, Y)
    # constant functions are entirely low-frequency
    c = torch.full((len(x), 1), 0.3)
    assert torch.allclose(fl.split(c, G)[1], torch.zeros_like(c), atol=1e-6)


def test_low_share_limits_and_monotonicity():
    x, y = _clusters()
    Y = F.one_hot(y, 3).float()
    shares = [fl.low_share(Y, fl.gaussian_kernel(x, d)) for d in (1e-3, 0.3, 1.0, 3.0, 1e3)]
    assert abs(shares[0] - 1) < 1e-6  # tiny δ: G = I, everything is "low"
    assert all(a >= b - 1e-9 for a, b in zip(shares, shares[1:]))  # wider kernel, smaller share
    # huge δ: y_low is the class-frequency vector for every row, share = Σ_c (n_c/N)²
    freq = Y.mean(0)
    assert abs(shares[-1] - float((freq ** 2).sum())) < 1e-4


def test_choose_delta_follows_the_20_80_rule():
    x, y = _clusters()
    Y = F.one_hot(y, 3).float()
    d = fl.choose_delta(x, Y)
    assert 0.2 <= d["share"] <= 0.8
    assert abs(d["share"] - fl.low_share(Y, fl.gaussian_kernel(x, d["delta"]))) < 1e-6
    # it is the tried δ whose share is closest to 50 %
    assert abs(d["share"] - 0.5) <= min(abs(t["share"] - 0.5) for t in d["table"]) + 1e-12
    assert abs(d["share"] - 0.5) < 0.1  # bisection gets close
    # a band nothing can satisfy is an error, not a silent pick
    try:
        fl.choose_delta(x, Y, band=(0.0, 0.01), factors=[0.5, 1.0], refine=0)
    except ValueError:
        pass
    else:
        raise AssertionError("expected ValueError")


def test_probe_errors_for_perfect_and_zero_outputs():
    x, y = _clusters()
    Y = F.one_hot(y, 3).float()
    G = fl.gaussian_kernel(x, 1.0)
    probe = fl.FilterProbe(x, y, 3, G, every=1)
    assert probe.errors(Y) == (0.0, 0.0)
    el, eh = probe.errors(torch.zeros_like(Y))
    assert abs(el - 1) < 1e-6 and abs(eh - 1) < 1e-6
    # a constant offset is pure low frequency: it leaves e_high at 0 and raises e_low by its relative size
    off = torch.full_like(Y, 0.1)
    el, eh = probe.errors(Y + off)
    assert eh < 1e-5
    assert abs(el - float(off.norm() / (G @ Y).norm())) < 1e-5


def test_probe_records_on_cadence():
    x, y = _clusters()
    G = fl.gaussian_kernel(x, 1.0)
    probe = fl.FilterProbe(x, y, 3, G, every=5)
    model = torch.nn.Linear(2, 3)
    for t in range(0, 12):
        probe(t, model)
    assert probe.history["step"] == [0, 5, 10]
    assert all(np.isfinite(probe.history[k]).all() for k in ("loss", "acc", "e_low", "e_high"))
