"""The optimizer as a filter (docs/spectral.md §1): drive a real optimizer's ``step()`` with synthetic gradient
streams.

Cross-coordinate gain. One parameter tensor holds many coordinates; coordinate c receives

    g_c(t) = d · (1 + r_c · sin(2π f_c t + φ_c)) + σ · d · ξ_c(t),   ξ ~ N(0, 1)

(a steady drift d plus an oscillation of relative amplitude r at frequency f cycles/step, optional noise).
The gain of a coordinate is its mean step over the measurement window divided by the mean step of the
r = 0 coordinates (same noise) of the same tensor. Since all coordinates share one tensor, per-tensor
grafting ("sgd"/"adam" scale modes) cancels from the ratio. Where f lies well above the β2 window
(f ≫ (1 − β2)/2π) the second moment averages the tone: v ≈ d²(1 + r²/2 + σ²) and

    gain ≈ ((1 + r²/2 + σ²) / (1 + σ²))^(−p)

— flat for p = 0, < 1 for p > 0, > 1 for p < 0. Several phases φ per (r, f) are averaged.

Single-tone transfer. A second tensor receives pure tones g_c(t) = a · sin(2π f_c t + φ_c) (no drift).
The transfer at f is the amplitude of the step sequence at f divided by lr · a; for p = 0 (EMA momentum) it is
exactly |H(f)| = (1 − β1)/|1 − β1 e^{−2πif}|, the curve we plot for reference. Frequencies are exact bins of
the measurement window (f · window is an integer) so the projection has no leakage.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
import torch

from nsf_lab.experiment.util import save_figure, write_json_atomic

from . import plots
from ._common import OptimizerSpec, cycle_spec, make_optimizer, spec_label

FIXED = ["sgd", "adam", "nsf-fixed:p=-0.5", "nsf-fixed:p=-0.25", "nsf-fixed:p=0", "nsf-fixed:p=0.25", "nsf-fixed:p=0.5"]
#: the default p cycle at a period of 2048 steps (quick mode: only the grafted one, at 512)
DEFAULT_OPTIMIZERS = FIXED + [cycle_spec("nsf-cyclic", 2048), cycle_spec("nsf-cyclic-adam", 2048)]
QUICK_OPTIMIZERS = FIXED + [cycle_spec("nsf-cyclic-adam", 512)]


def _bin_freqs(window: int, n: int, fmin_cycles: int = 1, fmax: float = 0.45) -> list[float]:
    """~log-spaced frequencies that are exact DFT bins of a window of ``window`` steps."""
    ks = np.unique(np.round(np.logspace(math.log10(fmin_cycles), math.log10(fmax * window), n)).astype(int))
    return [float(k) / window for k in ks]


def _current_p(opt) -> float | None:
    p = opt.param_groups[0].get("p", None)
    if p is None:
        return None
    try:
        return float(p)
    except (TypeError, ValueError):
        return None


def expected_gain(p: float, r: float, noise: float = 0.0) -> float:
    """High-frequency prediction of the cross-coordinate gain (docs/method.md, "What frequency means")."""
    return ((1.0 + r * r / 2.0 + noise * noise) / (1.0 + noise * noise)) ** (-p)


def momentum_transfer(f: np.ndarray, beta1: float) -> np.ndarray:
    """|H(f)| of the bias-corrected EMA m ← β1 m + (1 − β1) g (steady state)."""
    w = 2 * np.pi * np.asarray(f)
    return (1 - beta1) / np.abs(1 - beta1 * np.exp(-1j * w))


def _drive(opt, param: torch.Tensor, grad_fn, steps: int, window: int, p_track: list):
    """Run ``steps`` optimizer steps feeding ``grad_fn(t)``; return the per-step updates (−Δθ) of the last
    ``window`` steps as a float64 array (window × numel)."""
    out = np.empty((window, param.numel()), dtype=np.float64)
    start = steps - window
    for t in range(1, steps + 1):
        param.grad = grad_fn(t)
        before = param.detach().clone()
        opt.step()
        if t > start:
            out[t - start - 1] = (before - param.detach()).double().cpu().numpy().ravel()
        p = _current_p(opt)
        if p is not None:
            p_track.append(p)
    return out


def measure(spec: OptimizerSpec, *, ratios: Sequence[float], freqs: Sequence[float], noise: float = 0.0,
            steps: int = 7000, window: int = 4096, n_phases: int = 8, drift: float = 1e-2, lr: float = 1e-3,
            tone_freqs: Sequence[float] | None = None, seed: int = 0, dtype=torch.float64,
            chunk: int = 256) -> dict:
    """Cross-coordinate gain (len(ratios) × len(freqs)) and single-tone transfer of one optimizer."""
    gen = torch.Generator().manual_seed(seed)
    ratios = [float(r) for r in ratios]
    freqs = [float(f) for f in freqs]
    phases = torch.arange(n_phases, dtype=dtype) * (2 * math.pi / n_phases)
    # coordinate layout: reference block (r = 0) then r × f × phase
    R = torch.tensor(ratios, dtype=dtype).view(-1, 1, 1).expand(-1, len(freqs), n_phases).reshape(-1)
    F = torch.tensor(freqs, dtype=dtype).view(1, -1, 1).expand(len(ratios), -1, n_phases).reshape(-1)
    PH = phases.view(1, 1, -1).expand(len(ratios), len(freqs), -1).reshape(-1)
    R = torch.cat([torch.zeros(n_phases, dtype=dtype), R])
    F = torch.cat([torch.zeros(n_phases, dtype=dtype), F])
    PH = torch.cat([phases, PH])
    n_ref = n_phases

    param = torch.nn.Parameter(torch.zeros(R.numel(), dtype=dtype))
    opt = make_optimizer(spec, [param], lr=lr, total_steps=steps)

    def grad_fn(t):
        g = drift * (1.0 + R * torch.sin(2 * math.pi * F * t + PH))
        if noise > 0:
            g = g + noise * drift * torch.randn(R.numel(), dtype=dtype, generator=gen)
        return g

    p_track: list = []
    upd = _drive(opt, param, grad_fn, steps, window, p_track)
    mean_step = upd.mean(axis=0)
    ref = mean_step[:n_ref].mean()
    gain = (mean_step[n_ref:].reshape(len(ratios), len(freqs), n_phases).mean(axis=2) / ref)

    out = {"label": spec_label(spec), "ratios": ratios, "freqs": freqs, "noise": noise, "gain": gain,
           "ref_step": float(ref)}
    if p_track:
        out["p_min"], out["p_max"] = float(min(p_track)), float(max(p_track))
        if out["p_max"] - out["p_min"] > 1e-12:
            # time-resolved gain for a moving p: chunks of the window, mean over f above the β2 window
            pw = np.asarray(p_track[-window:])
            hf = high_freq_mask(freqs)
            n_chunks = max(1, window // chunk)
            cg, cp = [], []
            for c in range(n_chunks):
                sl = slice(c * chunk, (c + 1) * chunk)
                ms = upd[sl].mean(axis=0)
                g = ms[n_ref:].reshape(len(ratios), len(freqs), n_phases).mean(axis=2) / ms[:n_ref].mean()
                cg.append(g[:, hf].mean(axis=1).tolist())
                cp.append(float(pw[sl].mean()))
            out["chunks"] = {"steps": chunk, "p_mean": cp, "gain_hf": cg}

    # single tones (skipped when tone_freqs == [])
    tf = list(freqs if tone_freqs is None else tone_freqs)
    if not tf:
        return out
    Ft = torch.tensor(tf, dtype=dtype).repeat_interleave(n_phases)
    PHt = phases.repeat(len(tf))
    tparam = torch.nn.Parameter(torch.zeros(Ft.numel(), dtype=dtype))
    topt = make_optimizer(spec, [tparam], lr=lr, total_steps=steps)
    tones = lambda t: drift * torch.sin(2 * math.pi * Ft * t + PHt)  # noqa: E731
    tupd = _drive(topt, tparam, tones, steps, window, [])
    tt = np.arange(steps - window + 1, steps + 1, dtype=np.float64)
    Fn = Ft.numpy()
    # complex amplitude of the update at each coordinate's own frequency, relative to the input tone
    basis = np.exp(-1j * (2 * np.pi * np.outer(tt, Fn)))
    amp_out = 2.0 / window * np.abs((tupd * basis).sum(axis=0))
    transfer = (amp_out / (lr * drift)).reshape(len(tf), n_phases).mean(axis=1)
    out.update(tone_freqs=tf, transfer=transfer)
    return out


def run(optimizers: Sequence[OptimizerSpec] | None = None, *, quick: bool = False, out_dir: str | None = None,
        noises: Sequence[float] | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Gain/transfer for every optimizer; writes ``response.json`` and PNGs into ``out_dir`` if given."""
    from tqdm.auto import tqdm

    optimizers = list(optimizers or (QUICK_OPTIMIZERS if quick else DEFAULT_OPTIMIZERS))
    if quick:
        window, steps, nf, n_phases, chunk = 1024, 2048, 7, 4, 64
        ratios = [0.5, 1.0, 2.0]
        noises = list(noises if noises is not None else [0.0])
    else:
        window, steps, nf, n_phases, chunk = 16384, 20480, 16, 8, 256
        ratios = [0.25, 0.5, 1.0, 1.5, 2.0, 3.0]
        noises = list(noises if noises is not None else [0.0, 1.0])
    freqs = _bin_freqs(window, nf)
    t0 = time.time()
    results = {}
    jobs = [(o, n) for o in optimizers for n in noises]
    for spec, noise in tqdm(jobs, desc="response", disable=not progress):
        r = measure(spec, ratios=ratios, freqs=freqs, noise=noise, steps=steps, window=window,
                    n_phases=n_phases, seed=seed, chunk=chunk)
        results.setdefault(spec_label(spec), {})[f"noise={noise:g}"] = r
    summary = summarize(results)
    data = {"settings": {"quick": quick, "steps": steps, "window": window, "warmup": steps - window,
                         "ratios": ratios, "freqs": freqs, "noises": noises, "n_phases": n_phases,
                         "drift": 1e-2, "lr": 1e-3, "seed": seed, "seconds": time.time() - t0},
            "results": results, "summary": summary}
    if out_dir:
        write_json_atomic(f"{out_dir}/response.json", data)
        plot(data, out_dir)
    return data


def high_freq_mask(freqs: Sequence[float], beta2: float = 0.999, factor: float = 20.0) -> np.ndarray:
    """Frequencies 'well above the β2 window': 2πf ≥ factor · (1 − β2)."""
    return 2 * np.pi * np.asarray(freqs) >= factor * (1 - beta2)


def summarize(results: dict) -> dict:
    """Per optimizer and noise: mean gain over high frequencies for each r, and the max relative deviation
    from the (1 + r²/2 + σ²)/(1 + σ²))^(−p) prediction when p is constant."""
    summ = {}
    for label, by_noise in results.items():
        for nkey, r in by_noise.items():
            hf = high_freq_mask(r["freqs"])
            g = np.asarray(r["gain"])[:, hf]
            row = {"gain_hf_mean": g.mean(axis=1).tolist(), "ratios": r["ratios"],
                   "gain_hf_min": g.min(axis=1).tolist(), "gain_hf_max": g.max(axis=1).tolist()}
            p = None
            if "p_min" in r and abs(r["p_max"] - r["p_min"]) < 1e-12:
                p = r["p_min"]
            elif label.startswith("adam"):
                p = 0.5
            elif label.startswith("sgd"):
                p = 0.0
            if p is not None:
                th = np.array([expected_gain(p, rr, r["noise"]) for rr in r["ratios"]])
                row["p"] = p
                row["expected"] = th.tolist()
                row["max_rel_dev"] = float(np.max(np.abs(g / th[:, None] - 1)))
            summ.setdefault(label, {})[nkey] = row
    return summ


def plot(data: dict, out_dir: str) -> list[str]:
    res = data["results"]
    labels = list(res)
    cols = plots.colors(len(labels))
    paths = []
    noises = data["settings"]["noises"]
    # gain vs f at r = 1 (or the closest ratio)
    fig, axes = plots.new_figure(len(noises), 1)
    for j, n in enumerate(noises):
        ax = axes[0][j]
        for c, lab in zip(cols, labels):
            r = res[lab][f"noise={n:g}"]
            i = int(np.argmin(np.abs(np.asarray(r["ratios"]) - 1.0)))
            ax.semilogx(r["freqs"], np.asarray(r["gain"])[i], "o-", color=c, label=lab, ms=3)
            p = data["summary"][lab][f"noise={n:g}"].get("p")
            if p is not None:
                ax.axhline(expected_gain(p, r["ratios"][i], n), color=c, ls=":", lw=1)
        ax.axvline((1 - 0.999) / (2 * np.pi), color="k", lw=0.6, ls="--")
        ax.set_xlabel("oscillation frequency f (cycles/step)")
        ax.set_ylabel(f"gain at r = {res[labels[0]][f'noise={n:g}']['ratios'][i]:g}")
        ax.set_title(f"cross-coordinate gain, noise σ = {n:g}·d", fontsize=9)
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    paths.append(save_figure(fig, f"{out_dir}/response_gain_vs_f.png"))
    # gain vs r at high f
    fig, axes = plots.new_figure(len(noises), 1)
    for j, n in enumerate(noises):
        ax = axes[0][j]
        for c, lab in zip(cols, labels):
            s = data["summary"][lab][f"noise={n:g}"]
            ax.plot(s["ratios"], s["gain_hf_mean"], "o-", color=c, label=lab, ms=3)
            if "expected" in s:
                ax.plot(s["ratios"], s["expected"], ":", color=c, lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("oscillation ratio r")
        ax.set_ylabel("gain (mean over f above β2 window)")
        ax.set_title(f"gain vs r (dotted: ((1+r²/2+σ²)/(1+σ²))^-p), σ = {n:g}·d", fontsize=8)
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    paths.append(save_figure(fig, f"{out_dir}/response_gain_vs_r.png"))
    # single-tone transfer
    fig, axes = plots.new_figure(1, 1)
    ax = axes[0][0]
    n0 = f"noise={noises[0]:g}"
    for c, lab in zip(cols, labels):
        r = res[lab][n0]
        tr = np.asarray(r["transfer"])
        ax.loglog(r["tone_freqs"], tr / tr[0], "o-", color=c, label=lab, ms=3)
    f = np.asarray(res[labels[0]][n0]["tone_freqs"])
    h = momentum_transfer(f, 0.9)
    ax.loglog(f, h / h[0], "k--", lw=1, label="EMA momentum |H(f)| (β1=0.9)")
    ax.set_xlabel("tone frequency f (cycles/step)")
    ax.set_ylabel("transfer / transfer at lowest f")
    ax.set_title("single-tone transfer")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    paths.append(save_figure(fig, f"{out_dir}/response_transfer.png"))
    # moving p: gain per chunk against the chunk's mean p
    cyc = [lab for lab in labels if "chunks" in res[lab][n0]]
    if cyc:
        fig, axes = plots.new_figure(1, 1)
        ax = axes[0][0]
        r0 = res[cyc[0]][n0]
        i = int(np.argmin(np.abs(np.asarray(r0["ratios"]) - 1.0)))
        rr = r0["ratios"][i]
        for c, lab in zip(plots.colors(len(cyc)), cyc):
            ch = res[lab][n0]["chunks"]
            ax.plot(ch["p_mean"], [g[i] for g in ch["gain_hf"]], "o", color=c, ms=3, label=lab)
        pp = np.linspace(min(min(res[l][n0]["chunks"]["p_mean"]) for l in cyc),
                         max(max(res[l][n0]["chunks"]["p_mean"]) for l in cyc), 50)
        ax.plot(pp, [expected_gain(v, rr, noises[0]) for v in pp], "k--", lw=1, label="(1+r²/2)^-p")
        ax.set_xlabel(f"mean p in a {r0['chunks']['steps']}-step chunk")
        ax.set_ylabel(f"gain at r = {rr:g} (f above β2 window)")
        ax.set_title("cycled p sweeps the spectral tilt", fontsize=9)
        ax.legend(fontsize=6)
        paths.append(save_figure(fig, f"{out_dir}/response_cyclic.png"))
    return paths


def format_summary(data: dict) -> str:
    lines = ["response: mean gain over f above the β2 window (expected in brackets)"]
    ratios = data["settings"]["ratios"]
    lines.append("  optimizer                       noise  " + "  ".join(f"r={r:<5g}" for r in ratios))
    for lab, by in data["summary"].items():
        for nkey, s in by.items():
            cells = []
            for i, g in enumerate(s["gain_hf_mean"]):
                e = f"({s['expected'][i]:.3f})" if "expected" in s else ""
                cells.append(f"{g:.3f}{e}")
            lines.append(f"  {lab:<32s}{nkey[6:]:>5s}  " + " ".join(cells))
    return "\n".join(lines)
