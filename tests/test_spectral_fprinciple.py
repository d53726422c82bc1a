"""Per-frequency DFT error, target construction, time to learn and matched-loss statistics (docs/spectral.md §2)."""
import math

import numpy as np
import pytest
import torch

from nsf_lab.spectral import fprinciple as fp
from nsf_lab.experiment.stats import mean_ci
from nsf_lab.spectral._common import time_to_learn

KS = (1, 2, 4, 8, 16)


def test_target_has_energy_only_on_its_bins_with_its_amplitudes():
    amps = fp.amplitudes(KS, "increasing")
    x, y, _ = fp.make_target(128, KS, amps, seed=3)
    Y = torch.fft.rfft(y.double()).abs() / (128 / 2)
    assert torch.allclose(Y[list(KS)], torch.tensor(amps, dtype=torch.float64), atol=1e-5)
    others = [i for i in range(len(Y)) if i not in KS]
    assert float(Y[others].max()) < 1e-5
    assert np.allclose(amps, [0.2, 0.4, 0.6, 0.8, 1.0])
    with pytest.raises(ValueError):
        fp.make_target(32, (1, 16))  # 16 is the Nyquist bin of N = 32


def test_dft_error_perfect_fit_zero_output_and_phase():
    x, y, ph = fp.make_target(128, KS, seed=0)
    assert torch.all(fp.dft_errors(y, y, KS) < 1e-5)
    assert torch.allclose(fp.dft_errors(torch.zeros_like(y), y, KS), torch.ones(len(KS)), atol=1e-6)
    # drop one component: only its error is 1
    xs = x.double()
    comp = torch.sin(2 * math.pi * 4 * xs + ph[2]).float()
    e = fp.dft_errors(y - comp, y, KS)
    assert abs(float(e[2]) - 1) < 1e-4 and float(e[[0, 1, 3, 4]].max()) < 1e-4
    # right amplitude, opposite phase: phase-aware error 2 (a magnitude-only error would say 0)
    e = fp.dft_errors(y - 2 * comp, y, KS)
    assert abs(float(e[2]) - 2) < 1e-4


def test_time_to_learn_on_synthetic_curves():
    steps = [0, 10, 20, 30, 40, 50]
    assert time_to_learn(steps, [1, 0.5, 0.05, 0.2, 0.05, 0.01], 0.1) == 40  # dips, comes back, stays
    assert time_to_learn(steps, [1, 0.05, 0.05, 0.05, 0.05, 0.2], 0.1) is None  # not below at the end
    assert time_to_learn(steps, [0.01] * 6, 0.1) == 0
    assert time_to_learn(steps, [1, 0.5, float("nan"), 0.05, 0.05, 0.05], 0.1) == 30


def test_mean_ci_known_answer():
    c = mean_ci([1.0, 2.0, 3.0, float("inf")])
    assert c["mean"] == 2.0 and c["n"] == 3 and c["n_missing"] == 1
    assert abs(c["ci95"] - 4.302652729749 / math.sqrt(3)) < 1e-9  # t(0.975, df=2) exactly


def _fake_run(loss, E, energy=1.0):
    return {"steps": [0, 10, 20, 30], "loss": loss, "E": E, "energy": energy, "diverged": False,
            "final_loss": loss[-1]}


def test_analyse_runs_reads_errors_at_matched_loss():
    # run A reaches L = 0.5 at step 10 with low k learned; run B at step 20 with high k learned
    a = _fake_run([1.0, 0.5, 0.1, 0.05], [[1, 1], [0.1, 0.9], [0.05, 0.5], [0.01, 0.05]])
    b = _fake_run([1.0, 0.8, 0.45, 0.05], [[1, 1], [0.9, 0.9], [0.9, 0.1], [0.05, 0.05]])
    sa = fp.analyse_runs([a], (1, 2), levels=(0.5,), threshold=0.1)
    sb = fp.analyse_runs([b], (1, 2), levels=(0.5,), threshold=0.1)
    assert sa["steps_to_loss"]["0.5"]["mean"] == 10 and sb["steps_to_loss"]["0.5"]["mean"] == 20
    assert [e["mean"] for e in sa["at_loss"]["0.5"]["E"]] == [0.1, 0.9]
    # SB > 0: low band fitted first; SB < 0: high band fitted first
    assert sa["at_loss"]["0.5"]["SB"]["mean"] > 0.7 and sb["at_loss"]["0.5"]["SB"]["mean"] < -0.7
    assert sa["time_to_learn"]["1"]["mean"] == 20 and sa["time_to_learn"]["2"]["mean"] == 30


def test_training_reduces_low_frequency_error_first_with_adam():
    """A real (tiny) run: after a short Adam run the lowest frequency is fitted better than the highest
    (the F-principle the instrument exists to measure)."""
    r = fp.train_run("adam", 1e-2, ks=(1, 16), n=64, steps=150, eval_every=50, seed=0, width=64, depth=2)
    E = np.asarray(r["E"])
    assert E[0].min() > 0.9  # at init nothing is fitted
    assert E[-1, 0] < 0.5 * E[-1, 1]
    assert r["loss"][-1] < r["loss"][0]


def test_tune_lr_uses_the_one_tuner_caches_warns_and_rejects_all_diverged():
    from nsf_lab.experiment.tuner import Grid
    from nsf_lab.spectral._common import tune_lr

    calls = []

    def run(lr, seed):  # a valley at 1e-2 on a decade grid 1e-4..1; diverges above 0.5
        calls.append(lr)
        loss = math.log10(lr / 1e-2) ** 2
        return {"loss": loss, "error": loss, "diverged": lr > 0.5}

    cache = {}
    d = tune_lr(run, Grid(1e-4, 1.0, 1.0), seed=7, cache=cache)
    assert d.lr == 1e-2 and d.flags == []
    assert set(d.scores) >= {1e-4, 1e-3, 1e-2, 1e-1, 1.0} and d.scores[1.0][0] == 1  # diverged: worst
    assert len(calls) == len(cache) == len(set(calls))  # every lr trained once
    calls.clear()
    assert tune_lr(run, Grid(1e-4, 1.0, 1.0), seed=7, cache=cache).lr == 1e-2 and calls == []  # from the cache
    with pytest.warns(UserWarning, match="flagged"):  # optimum beyond the largest point it may try
        tune_lr(lambda lr, s: {"loss": -lr, "error": -lr}, Grid(1e-2, 1.0, 1.0), seed=0)
    with pytest.raises(RuntimeError, match="diverged"):
        tune_lr(lambda lr, s: {"diverged": True}, Grid(0.1, 1.0, 1.0), seed=0)
