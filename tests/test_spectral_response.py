"""The optimizer-as-a-filter instrument against the real NSF optimizer (docs/spectral.md §1)."""
import numpy as np
import pytest
import torch

from nsf_lab.spectral import response

# Exact DFT bins of a 1024-step window; all are far above the β2 = 0.999 window (2πf ≫ 1e-3).
WINDOW, STEPS = 1024, 1280
HIGH_F = [52 / WINDOW, 205 / WINDOW, 461 / WINDOW]
RATIOS = [0.5, 1.0, 2.0]
# stated tolerance: relative deviation from ((1 + r²/2 + σ²)/(1 + σ²))^(−p) at f above the β2 window
TOL = 0.02


def _gain(spec, noise=0.0, freqs=HIGH_F):
    r = response.measure(spec, ratios=RATIOS, freqs=freqs, noise=noise, steps=STEPS, window=WINDOW, n_phases=4,
                         tone_freqs=[])
    return np.asarray(r["gain"]), r


@pytest.mark.parametrize("p", [-0.5, -0.25, 0.0, 0.25, 0.5])
def test_gain_matches_prediction_above_beta2_window(p):
    gain, _ = _gain(f"nsf-fixed:p={p}")
    expected = np.array([response.expected_gain(p, r) for r in RATIOS])[:, None]
    assert np.all(np.abs(gain / expected - 1) < TOL), (gain, expected)
    if p == 0:
        assert np.all(np.abs(gain - 1) < TOL)  # flat
    elif p > 0:
        assert np.all(gain < 1 - 0.02)  # every oscillating coordinate is damped
    else:
        assert np.all(gain > 1 + 0.02)  # every oscillating coordinate is amplified
    # monotone in r: the larger the oscillation, the stronger the effect
    if p != 0:
        assert np.all(np.diff(gain, axis=0) * np.sign(-p) > 0)


def test_p0_is_flat_at_every_frequency_including_slow_ones():
    slow_and_fast = [1 / WINDOW, 4 / WINDOW] + HIGH_F
    gain, _ = _gain("nsf-fixed:p=0", freqs=slow_and_fast)
    assert np.all(np.abs(gain - 1) < 1e-6)  # p = 0 is linear: the oscillation averages out exactly


def test_adam_and_p_half_agree_and_sgd_is_flat():
    g_adam, _ = _gain("adam")
    g_half, _ = _gain("nsf-fixed:p=0.5")
    g_sgd, _ = _gain("sgd")
    assert np.allclose(g_adam, g_half, rtol=1e-3)
    assert np.all(np.abs(g_sgd - 1) < 1e-6)


def test_noise_enters_the_prediction():
    gain, _ = _gain("nsf-fixed:p=0.5", noise=1.0)
    expected = np.array([response.expected_gain(0.5, r, 1.0) for r in RATIOS])[:, None]
    assert np.all(np.abs(gain / expected - 1) < 0.03), (gain, expected)
    # noise shrinks the contrast: the gain is closer to 1 than without noise
    assert np.all(gain > np.array([response.expected_gain(0.5, r) for r in RATIOS])[:, None])


def test_single_tone_transfer_of_p0_is_the_momentum_filter():
    r = response.measure("nsf-fixed:p=0", ratios=[1.0], freqs=HIGH_F, steps=STEPS, window=WINDOW, n_phases=4,
                         tone_freqs=[2 / WINDOW, 20 / WINDOW] + HIGH_F)
    expected = response.momentum_transfer(np.asarray(r["tone_freqs"]), 0.9)
    assert np.allclose(r["transfer"], expected, rtol=0.02), (r["transfer"], expected)


def test_cyclic_p_sweeps_the_gain():
    r = response.measure("nsf-cyclic-adam:p=cyclic(-0.25,0.25,512,cosine)", ratios=[1.0], freqs=HIGH_F,
                         steps=STEPS, window=WINDOW, n_phases=4, chunk=64, tone_freqs=[])
    ch = r["chunks"]
    g = np.array([c[0] for c in ch["gain_hf"]])
    expected = np.array([response.expected_gain(p, 1.0) for p in ch["p_mean"]])
    assert max(ch["p_mean"]) > 0.15 and min(ch["p_mean"]) < -0.15
    assert g.max() > 1.05 and g.min() < 0.95
    assert np.all(np.abs(g / expected - 1) < 0.03)


def test_works_with_a_plain_torch_optimizer_callable():
    make = lambda params, lr: torch.optim.RMSprop(params, lr=lr or 1e-3, alpha=0.999)  # noqa: E731
    gain, _ = _gain(make)
    # RMSprop (no momentum) divides by sqrt(v): the p = 1/2 prediction
    expected = np.array([response.expected_gain(0.5, r) for r in RATIOS])[:, None]
    assert np.all(np.abs(gain / expected - 1) < 0.03)
