"""What the network learns first (docs/spectral.md §2, function-space sense): 1-D regression, per-frequency DFT error.

Target  y(x) = Σ_k A_k sin(2πkx + φ_k)  on the grid x_n = n/N, n = 0..N−1, every k an exact DFT bin
(so Ŷ_k carries exactly that component, no leakage). A full-batch MLP h is trained with MSE; every
``eval_every`` steps the phase-aware relative error of each target frequency is recorded:

    E_k(t) = |Ĥ_k(t) − Ŷ_k| / |Ŷ_k|      (Ĥ, Ŷ: DFT of the output and of the target on the grid)

E_k = 0 for a perfect fit of that component and 1 for a zero output. "Time to learn k" is the first recorded
step after which E_k stays below a threshold until the end of training. Optimizers are compared at
*matched total training loss*: at the first step where each run's loss falls to the same fraction of the
initial target energy, we read off E_k (and the band index SB = (E_high − E_low)/(E_high + E_low),
E_low = mean E over the lowest third of the frequencies, E_high over the highest third).
Each optimizer's learning rate is tuned on a common grid with the same step budget (criterion: final training
loss; the regression objective itself, no held-out data involved), then re-run with several seeds.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
import torch

from nsf_lab.experiment.models import mlp
from nsf_lab.experiment.stats import mean_ci
from nsf_lab.experiment.train import fit
from nsf_lab.experiment.tuner import Grid
from nsf_lab.experiment.util import save_figure, seed_everything, write_json_atomic

from . import plots
from ._common import (OptimizerSpec, cycle_spec, first_index_below, grid_dict, make_optimizer, map_seeds, spec_label,
                      time_to_learn, tune_lr)

DEFAULT_FREQS = (1, 2, 4, 8, 16, 32)
LOSS_LEVELS = (0.5, 0.2, 0.1, 0.05, 0.02)  # fractions of the target's mean square
LEARN_THRESHOLD = 0.1
#: the declared LR grids (log, in decades) searched by the tuner's "full" rule
LR_GRID = Grid(1e-4, 100.0, 0.5)
QUICK_LR_GRID = Grid(1e-3, 1.0, 1.0)


def default_optimizers(period: int) -> list[str]:
    return ["nsf-fixed:p=-0.5", "nsf-fixed:p=-0.25", "nsf-fixed:p=0", "nsf-fixed:p=0.25", "nsf-fixed:p=0.5",
            "adam", "sgd", cycle_spec("nsf-cyclic", period), cycle_spec("nsf-cyclic-adam", period)]


def amplitudes(ks: Sequence[int], profile: str) -> np.ndarray:
    """'equal': A_k = 1; 'increasing' (Rahaman et al.): A_k = i/K for the i-th frequency (1-based)."""
    K = len(ks)
    if profile == "equal":
        return np.ones(K)
    if profile == "increasing":
        return np.arange(1, K + 1) / K
    raise ValueError(f"unknown amplitude profile {profile!r}")


def make_target(n: int = 256, ks: Sequence[int] = DEFAULT_FREQS, amps: Sequence[float] | None = None,
                seed: int = 0):
    """Grid x (N,), target y (N,), phases (K,). Phases are random per seed."""
    ks = [int(k) for k in ks]
    if max(ks) >= n / 2:
        raise ValueError("every k must be below the Nyquist bin N/2")
    amps = np.ones(len(ks)) if amps is None else np.asarray(amps, dtype=float)
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 2 * np.pi, len(ks))
    x = np.arange(n) / n
    y = sum(a * np.sin(2 * np.pi * k * x + ph) for k, a, ph in zip(ks, amps, phases))
    return (torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), phases)


def dft_errors(h: torch.Tensor, y: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Phase-aware relative error |Ĥ_k − Ŷ_k| / |Ŷ_k| for each k (h, y: (N,) samples on the grid)."""
    H = torch.fft.rfft(h.detach().double().reshape(-1))
    Y = torch.fft.rfft(y.detach().double().reshape(-1))
    idx = torch.as_tensor(list(ks))
    return ((H[idx] - Y[idx]).abs() / Y[idx].abs()).float()


def train_run(spec: OptimizerSpec, lr: float, *, ks=DEFAULT_FREQS, profile: str = "equal", n: int = 256,
              steps: int = 2000, eval_every: int = 20, seed: int = 0, width: int = 128, depth: int = 3,
              act: str = "relu", record: bool = True) -> dict:
    """Train once; return steps, loss, E (evals × K) and whether it diverged."""
    x, y, phases = make_target(n, ks, amplitudes(ks, profile), seed=seed)
    seed_everything(seed)
    model = mlp((1,), 1, hidden=[width] * depth, act=act)
    opt = make_optimizer(spec, model.parameters(), lr=lr, total_steps=steps)
    xin = (2 * x - 1).unsqueeze(1)
    energy = float((y ** 2).mean())
    rec_steps, losses, errs = [], [], []

    @torch.no_grad()
    def evaluate(t, model, _loss=None) -> bool:  # callback: records, and stops the run when it diverged
        if t % eval_every and t != steps:
            return False
        h = model(xin).squeeze(1)
        loss = float(((h - y) ** 2).mean())
        rec_steps.append(t)
        losses.append(loss)
        if record:
            errs.append(dft_errors(h, y, ks).tolist())
        return not math.isfinite(loss) or loss > 100 * energy

    r = fit(model, opt, lambda: (xin, y), steps, loss_fn=lambda out, target: ((out.squeeze(1) - target) ** 2).mean(),
            callbacks=[evaluate], diverged=lambda loss: False)
    diverged = r["diverged_at"] is not None
    return {"steps": rec_steps, "loss": losses, "E": errs, "energy": energy, "diverged": diverged,
            "final_loss": losses[-1] if not diverged else float("inf"), "phases": phases.tolist()}


def centroid(E: Sequence[float], ks: Sequence[int]) -> float:
    """Learned-frequency centroid: Σ w_k log2 k / Σ w_k with w_k = max(0, 1 − E_k) — where on the log-frequency
    axis the fitted part of the target sits (higher = more of the high frequencies learned). NaN if nothing is
    fitted."""
    w = np.clip(1 - np.asarray(E, dtype=float), 0, None)
    if not np.isfinite(w).all() or w.sum() <= 0:
        return float("nan")
    return float((w * np.log2(np.asarray(ks, dtype=float))).sum() / w.sum())


def analyse_runs(runs: Sequence[dict], ks: Sequence[int], levels=LOSS_LEVELS, threshold=LEARN_THRESHOLD) -> dict:
    """Seed statistics of one optimizer: time to learn each k, steps to each loss level, E_k, SB and the
    learned-frequency centroid at matched loss, coverage (fraction of (k, evaluation) pairs below threshold).
    Diverged runs count as 'never' / missing, never as numbers."""
    K = len(ks)
    lo_idx = list(range(0, max(1, K // 3)))
    hi_idx = list(range(K - max(1, K // 3), K))
    ttl = {k: [] for k in ks}
    steps_to = {lv: [] for lv in levels}
    at_level = {lv: {"E": [], "SB": [], "centroid": []} for lv in levels}
    coverage, final_loss, final_E = [], [], []
    for r in runs:
        E = np.asarray(r["E"], dtype=float)
        st = r["steps"]
        for j, k in enumerate(ks):
            v = None if r["diverged"] else time_to_learn(st, E[:, j], threshold)
            ttl[k].append(float("inf") if v is None else v)
        rel = np.asarray([np.inf if v is None else v for v in r["loss"]], dtype=float) / r["energy"]
        for lv in levels:
            i = first_index_below(rel, lv)
            steps_to[lv].append(float("inf") if i is None else st[i])
            if i is not None:
                e = E[i]
                at_level[lv]["E"].append(e.tolist())
                el, eh = e[lo_idx].mean(), e[hi_idx].mean()
                at_level[lv]["SB"].append(float((eh - el) / (eh + el)))
                at_level[lv]["centroid"].append(centroid(e, ks))
        ok = not r["diverged"]
        coverage.append(float((E < threshold).mean()) if ok else float("nan"))
        fl = r["final_loss"]
        final_loss.append(float("inf") if (fl is None or not ok) else fl / r["energy"])
        final_E.append(E[-1].tolist() if ok else [float("nan")] * K)
    out = {"time_to_learn": {str(k): mean_ci(v) for k, v in ttl.items()},
           "time_to_learn_raw": {str(k): v for k, v in ttl.items()},
           "steps_to_loss": {str(lv): mean_ci(v) for lv, v in steps_to.items()},
           "coverage_auc": mean_ci(coverage),
           "final_rel_loss": mean_ci(final_loss),
           "final_E": [mean_ci([fe[j] for fe in final_E]) for j in range(K)],
           "final_centroid": mean_ci([centroid(fe, ks) for fe in final_E]),
           "at_loss": {}}
    for lv in levels:
        Es = np.asarray(at_level[lv]["E"], dtype=float)
        out["at_loss"][str(lv)] = {
            "n_reached": len(at_level[lv]["SB"]),
            "E": [mean_ci(Es[:, j].tolist()) for j in range(K)] if len(Es) else None,
            "SB": mean_ci(at_level[lv]["SB"]),
            "centroid": mean_ci(at_level[lv]["centroid"]),
        }
    return out


def reanalyse(data: dict) -> dict:
    """Recompute every statistic from the stored runs (e.g. after loading the JSON)."""
    st = data["settings"]
    for prof, by in data["results"].items():
        for o in by.values():
            o["stats"] = analyse_runs(o["runs"], st["ks"], levels=st["loss_levels"], threshold=st["learn_threshold"])
    data["matched_level"] = {prof: matched_level(by, st["loss_levels"]) for prof, by in data["results"].items()}
    return data


def run(optimizers: Sequence[OptimizerSpec] | None = None, *, quick: bool = False, out_dir: str | None = None,
        seeds: Sequence[int] | None = None, profiles: Sequence[str] = ("equal", "increasing"),
        steps: int | None = None, lr_grid: Grid | None = None, ks: Sequence[int] | None = None,
        n: int | None = None, width: int | None = None, depth: int | None = None, eval_every: int | None = None,
        tune_seed: int = 1000, progress: bool = True, workers: int = 1) -> dict:
    import functools

    from tqdm.auto import tqdm

    if quick:
        steps = steps or 300
        n = n or 128
        ks = ks or (1, 4, 16)
        width, depth = width or 64, depth or 2
        eval_every = eval_every or 10
        seeds = list(seeds or [0, 1])
        lr_grid = lr_grid or QUICK_LR_GRID
        profiles = profiles[:1]
    else:
        steps = steps or 3000
        n = n or 128
        ks = ks or (1, 2, 4, 8, 16)
        width, depth = width or 128, depth or 3
        eval_every = eval_every or 20
        seeds = list(seeds or range(5))
        lr_grid = lr_grid or LR_GRID
    period = max(10, steps // 4)
    optimizers = list(optimizers or default_optimizers(period))
    if quick and len(optimizers) > 4:
        optimizers = [optimizers[i] for i in (2, 5, 7, 8)] if len(optimizers) == 9 else optimizers[:4]
    kw = dict(ks=ks, n=n, steps=steps, eval_every=eval_every, width=width, depth=depth)
    t0 = time.time()
    total = len(profiles) * len(optimizers) * (len(lr_grid.points()) + 2 + len(seeds))
    bar = tqdm(total=total, desc="fprinciple", disable=not progress)
    result = {}
    for prof in profiles:
        result[prof] = {}
        for spec in optimizers:
            def tune_one(lr, seed, spec=spec, prof=prof):  # criterion: final training loss ("error": L/L0)
                r = train_run(spec, lr, profile=prof, seed=seed, record=False, **kw)
                bar.update(1)
                return {"loss": r["final_loss"], "error": r["final_loss"] / r["energy"], "diverged": r["diverged"]}

            tuning = tune_lr(tune_one, lr_grid, seed=tune_seed, criterion="loss", what=f"{prof}/{spec_label(spec)}: ")
            best_lr = tuning.lr
            runs = map_seeds(functools.partial(train_run, spec, best_lr, profile=prof, **kw), seeds, workers,
                             on_done=lambda: bar.update(1))
            result[prof][spec_label(spec)] = {"lr": best_lr, "tuning": tuning.to_dict(),
                                              "runs": runs, "stats": analyse_runs(runs, ks)}
    bar.close()
    matched = {prof: matched_level(by) for prof, by in result.items()}
    data = {"matched_level": matched, "settings": {"quick": quick, "profiles": list(profiles), "ks": list(ks), "n": n, "steps": steps,
                         "eval_every": eval_every, "width": width, "depth": depth, "act": "relu",
                         "seeds": seeds, "tune_seed": tune_seed, "cyclic_period": period,
                         "lr_grid": grid_dict(lr_grid),
                         "loss_levels": list(LOSS_LEVELS), "learn_threshold": LEARN_THRESHOLD,
                         "tuning_criterion": "final training loss, tuning seed only, full budget; the tuner's 'full' rule",
                         "optimizers": [spec_label(o) for o in optimizers], "seconds": time.time() - t0},
            "results": result}
    if out_dir:
        write_json_atomic(f"{out_dir}/fprinciple.json", data)
        plot(data, out_dir)
    return data


def matched_level(by_opt: dict, levels=LOSS_LEVELS) -> str:
    """The lowest loss level that every non-diverged run of every optimizer reached (the headline matched-loss
    comparison); the highest level if none is reached by all."""
    best = str(levels[0])
    for lv in levels:
        if all(o["stats"]["at_loss"][str(lv)]["n_reached"] == sum(not r["diverged"] for r in o["runs"])
               for o in by_opt.values()):
            best = str(lv)
    return best


def _fmt(ci, digits=0):
    if ci["mean"] is None:
        return "never"
    s = f"{ci['mean']:.{digits}f}"
    if ci.get("ci95") is not None:
        s += f"±{ci['ci95']:.{digits}f}"
    if ci.get("n_missing"):
        s += f" ({ci['n_missing']} miss)"
    return s


def format_summary(data: dict) -> str:
    st = data["settings"]
    lines = []
    for prof, by in data["results"].items():
        lv = data["matched_level"][prof]
        lines.append(f"fprinciple [{prof} amplitudes] k={st['ks']}, {st['steps']} steps, seeds={st['seeds']}")
        lines.append(f"  {'optimizer':<50s} {'lr':>8s} {'final L/L0':>14s} {'steps to L='+lv+'L0':>16s}"
                     f" {'SB@'+lv+'L0':>12s}  time to learn k (E<{st['learn_threshold']})")
        for lab, r in by.items():
            s = r["stats"]
            sb = s["at_loss"][lv]["SB"]
            ttl = " ".join(_fmt(s["time_to_learn"][str(k)]) for k in st["ks"])
            lines.append(f"  {lab:<50s} {r['lr']:>8.3g} {_fmt(s['final_rel_loss'], 4):>14s} "
                         f"{_fmt(s['steps_to_loss'][lv]):>16s} "
                         f"{_fmt(sb, 3):>12s}  {ttl}")
    return "\n".join(lines)


def plot(data: dict, out_dir: str) -> list[str]:
    st = data["settings"]
    ks = st["ks"]
    paths = []
    for prof, by in data["results"].items():
        labels = list(by)
        ncol = min(3, len(labels))
        nrow = int(math.ceil(len(labels) / ncol))
        fig, axes = plots.new_figure(ncol, nrow, w=3.8, h=3.0)
        fig.subplots_adjust(hspace=0.7, wspace=0.35, right=0.85)
        for i, lab in enumerate(labels):
            ax = axes[i // ncol][i % ncol]
            runs = [r for r in by[lab]["runs"] if not r["diverged"]]
            if not runs:
                ax.set_title(f"{lab[:40]} (diverged)", fontsize=7)
                continue
            m = min(len(r["E"]) for r in runs)
            E = np.mean([np.asarray(r["E"][:m], dtype=float) for r in runs], axis=0)
            stp = runs[0]["steps"][:m]
            im = ax.imshow(np.log10(np.clip(E.T, 1e-3, 10)), aspect="auto", origin="lower", cmap="viridis",
                           vmin=-2, vmax=0.3, extent=[stp[0], stp[-1], -0.5, len(ks) - 0.5])
            ax.set_yticks(range(len(ks)))
            ax.set_yticklabels(ks, fontsize=6)
            ax.set_title(f"{lab[:44]}\nlr={by[lab]['lr']:g}", fontsize=6.5)
            ax.set_xlabel("step", fontsize=7)
            ax.set_ylabel("k", fontsize=7)
        for j in range(len(labels), nrow * ncol):
            axes[j // ncol][j % ncol].axis("off")
        fig.colorbar(im, ax=axes, shrink=0.6, label="log10 E_k (mean over seeds)")
        fig.suptitle(f"per-frequency error, {prof} amplitudes", fontsize=9)
        paths.append(save_figure(fig, f"{out_dir}/fprinciple_heatmap_{prof}.png", tight=False))

        # E_k at matched loss (three levels) and loss curves
        show = [lv for lv in ("0.5", "0.2", "0.1") if lv in by[labels[0]]["stats"]["at_loss"]]
        fig, axes = plots.new_figure(len(show) + 1, 1, w=4.0, h=3.6)
        cols = plots.colors(len(labels))
        for c, lab in zip(cols, labels):
            for j, lvkey in enumerate(show):
                s = by[lab]["stats"]["at_loss"].get(lvkey)
                if s and s["E"]:
                    mu = [e["mean"] for e in s["E"]]
                    ci = [e["ci95"] or 0 for e in s["E"]]
                    axes[0][j].errorbar(np.asarray(ks) * (1 + 0.03 * (labels.index(lab) - len(labels) / 2)), mu,
                                        yerr=ci, color=c, marker="o", ms=3, capsize=2,
                                        label=f"{lab[:34]} (n={s['n_reached']})")
            runs = [r for r in by[lab]["runs"] if not r["diverged"]]
            if not runs:
                continue
            m = min(len(r["loss"]) for r in runs)
            L = np.array([np.asarray(r["loss"][:m], dtype=float) / r["energy"] for r in runs])
            axes[0][-1].semilogy(runs[0]["steps"][:m], np.exp(np.log(np.maximum(L, 1e-12)).mean(0)), color=c,
                                 label=lab[:34])
        for j, lvkey in enumerate(show):
            ax = axes[0][j]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("k")
            ax.set_ylabel(f"E_k where L first ≤ {lvkey}·L0")
            ax.set_title(f"matched loss {lvkey}·L0, {prof} amplitudes", fontsize=8)
            ax.legend(fontsize=4.5, loc="lower right")
        axes[0][-1].set_xlabel("step")
        axes[0][-1].set_ylabel("training loss / L0 (geo-mean over seeds)")
        axes[0][-1].set_title("total training loss (non-diverged runs)", fontsize=8)
        paths.append(save_figure(fig, f"{out_dir}/fprinciple_matched_{prof}.png"))
    return paths
