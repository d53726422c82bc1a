"""Xu et al.'s filtering method (docs/spectral.md §3) on real data: low- and high-frequency error of a classifier.

On the training inputs x_1..x_N a row-normalised Gaussian kernel

    G_ij = exp(−‖x_i − x_j‖² / (2δ²)) / Σ_l exp(−‖x_i − x_l‖² / (2δ²))

splits any function v on the training set (labels y as one-hot, outputs h as softmax probabilities) into
v_low = G v and v_high = v − v_low. The errors

    e_low = ‖h_low − y_low‖ / ‖y_low‖,   e_high = ‖h_high − y_high‖ / ‖y_high‖

are tracked over training, with SB = (e_high − e_low)/(e_high + e_low) (> 0: the low band is fitted first).
δ is chosen on a grid of multiples of the median pairwise distance so that the low band holds a share
‖y_low‖²/‖y‖² of the label energy within 20–80 %, the grid point closest to 50 %.
Optimizers are compared at matched *training* loss (the step where each run's full-training-set cross-entropy
first reaches a common level), their LRs tuned on a validation split (never the test set).
"""
from __future__ import annotations

import functools
import math
import time
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from nsf_lab.experiment.stats import mean_ci
from nsf_lab.experiment.tuner import Grid
from nsf_lab.experiment.util import save_figure, write_json_atomic

from . import plots
from ._common import OptimizerSpec, first_index_below, fmt_ci, grid_dict, loss_levels, skipped_lines
from ._train import TUNING_CRITERION, classification_sweep, compare

SHARE_BAND = (0.2, 0.8)



def gaussian_kernel(x: torch.Tensor, delta: float, chunk: int = 2048) -> torch.Tensor:
    """Row-normalised Gaussian kernel matrix on the rows of x (N × N, float32)."""
    x = x.reshape(len(x), -1).float()
    sq = (x * x).sum(1)
    rows = []
    for i in range(0, len(x), chunk):
        d2 = (sq[i:i + chunk, None] + sq[None, :] - 2 * x[i:i + chunk] @ x.T).clamp_min(0)
        logits = -d2 / (2 * delta * delta)
        rows.append(torch.softmax(logits, dim=1))  # exp normalised per row, numerically safe
    return torch.cat(rows)


def split(v: torch.Tensor, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(v_low, v_high) with v_low + v_high = v."""
    low = G @ v
    return low, v - low


def low_share(y: torch.Tensor, G: torch.Tensor) -> float:
    low = G @ y
    return float((low ** 2).sum() / (y ** 2).sum())


def median_distance(x: torch.Tensor, max_n: int = 1000, seed: int = 0) -> float:
    x = x.reshape(len(x), -1).float()
    if len(x) > max_n:
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_n]]
    d = torch.cdist(x, x)
    iu = torch.triu_indices(len(x), len(x), 1)
    return float(d[iu[0], iu[1]].median())


def choose_delta(x: torch.Tensor, y_onehot: torch.Tensor, band=SHARE_BAND, target: float = 0.5,
                 factors: Sequence[float] | None = None, refine: int = 6) -> dict:
    """δ whose low-band label-energy share ‖y_low‖²/‖y‖² is inside ``band`` and as close to ``target`` as a scan
    over multiples of the median pairwise distance (``factors``) followed by ``refine`` bisection steps on
    log δ (the share falls monotonically as δ grows) can get. Returns δ, its share, its kernel ``G`` and the
    table of all δ tried."""
    med = median_distance(x)
    factors = sorted(factors or np.geomspace(0.02, 1.0, 12))
    table = []

    def probe(fct):
        G = gaussian_kernel(x, fct * med)
        s = low_share(y_onehot, G)
        table.append({"factor": float(fct), "delta": float(fct * med), "share": s})
        return s, G

    tried = [(f, *probe(f)) for f in factors]
    # bracket the target: share(lo) >= target >= share(hi)
    lo = max((t for t in tried if t[1] >= target), key=lambda t: t[0], default=None)
    hi = min((t for t in tried if t[1] <= target), key=lambda t: t[0], default=None)
    if lo is not None and hi is not None:
        for _ in range(refine):
            mid = math.sqrt(lo[0] * hi[0])
            t = (mid, *probe(mid))
            tried.append(t)
            if t[1] >= target:
                lo = t
            else:
                hi = t
    ok = [t for t in tried if band[0] <= t[1] <= band[1]]
    if not ok:
        raise ValueError(f"no δ tried puts the low-band share in {band}: {table}")
    best = min(ok, key=lambda t: abs(t[1] - target))
    return {"delta": float(best[0] * med), "share": float(best[1]), "G": best[2], "median_distance": med,
            "band": list(band), "table": sorted(table, key=lambda r: r["factor"])}


class FilterProbe:
    """Callable ``probe(step, model)`` recording train loss/acc, e_low, e_high every ``every`` steps."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n_classes: int, G: torch.Tensor, every: int):
        self.x, self.y, self.G, self.every = x, y, G, max(1, int(every))
        self.Y = F.one_hot(y, n_classes).float()
        self.y_low, self.y_high = split(self.Y, G)
        self.history = {"step": [], "loss": [], "acc": [], "e_low": [], "e_high": []}

    @torch.no_grad()
    def errors(self, probs: torch.Tensor) -> tuple[float, float]:
        h_low, h_high = split(probs, self.G)
        e_low = float((h_low - self.y_low).norm() / self.y_low.norm())
        e_high = float((h_high - self.y_high).norm() / self.y_high.norm())
        return e_low, e_high

    @torch.no_grad()
    def __call__(self, step: int, model, loss: float | None = None) -> None:
        if step % self.every:
            return
        logits = model(self.x)
        el, eh = self.errors(torch.softmax(logits, 1))
        h = self.history
        h["step"].append(step)
        h["loss"].append(float(F.cross_entropy(logits, self.y)))
        h["acc"].append(float((logits.argmax(1) == self.y).float().mean()))
        h["e_low"].append(el)
        h["e_high"].append(eh)


def _at_levels(hist: dict, levels: Sequence[float]) -> dict:
    out = {}
    for lv in levels:
        i = first_index_below(hist["loss"], lv)
        if i is None:
            out[lv] = None
        else:
            el, eh = hist["e_low"][i], hist["e_high"][i]
            out[lv] = {"step": hist["step"][i], "e_low": el, "e_high": eh, "SB": (eh - el) / (eh + el)}
    return out


def run(optimizers: Sequence[OptimizerSpec] | None = None, *, quick: bool = False, out_dir: str | None = None,
        datasets: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
        lr_grid: Grid | None = None, tune_seed: int = 1000, progress: bool = True, workers: int = 1) -> dict:
    datasets, seeds, lr_grid, sweep, skipped = classification_sweep(quick, datasets, seeds, lr_grid, optimizers)
    cache = f"{out_dir}/lr_tuning_cache.json" if out_dir else None
    t0 = time.time()
    results = {}
    for name, data, steps, batch, period, opts in sweep:
        every = max(1, steps // 60)
        Y = F.one_hot(data["y_tr"], data["n_classes"]).float()
        dl = choose_delta(data["x_tr"], Y)
        G = dl.pop("G")
        probe = functools.partial(FilterProbe, data["x_tr"], data["y_tr"], data["n_classes"], G, every)
        per_opt = compare(opts, data, probe,
                          steps=steps, batch=batch, seeds=seeds, lr_grid=lr_grid, tune_seed=tune_seed,
                          cache_path=cache, workers=workers, desc=f"filtering/{name}", progress=progress)
        hi = 0.8 * math.log(data["n_classes"])
        levels = loss_levels([h["loss"] for o in per_opt.values() for h, d in zip(o["histories"], o["diverged"])
                              if not d], hi)
        for lab, o in per_opt.items():
            at = [_at_levels(h, levels) for h in o["histories"]]
            o["at_loss"] = {str(lv): {k: mean_ci([a[lv][k] if a[lv] else None for a in at])
                                      for k in ("step", "e_low", "e_high", "SB")} for lv in levels}
            o["final"] = {k: mean_ci([h[k][-1] for h in o["histories"]]) for k in ("loss", "acc", "e_low", "e_high")}
        results[name] = {"delta": dl, "steps": steps, "batch": batch, "eval_every": every, "cyclic_period": period,
                         "loss_levels": levels, "n_train": len(data["y_tr"]), "optimizers": per_opt}
    data_out = {"settings": {"quick": quick, "datasets": datasets, "seeds": seeds, "lr_grid": grid_dict(lr_grid),
                             "tune_seed": tune_seed, "model": "MLP 2×128 ReLU", "lr_schedule": "constant",
                             "tuning_criterion": TUNING_CRITERION,
                             "share_band": list(SHARE_BAND), "seconds": time.time() - t0},
                "skipped": skipped, "results": results}
    if out_dir:
        write_json_atomic(f"{out_dir}/filtering.json", data_out)
        plot(data_out, out_dir)
    return data_out


def format_summary(data: dict) -> str:
    lines = []
    for name, r in data["results"].items():
        lv = str(r["loss_levels"][len(r["loss_levels"]) // 2])
        lines.append(f"filtering [{name}] δ={r['delta']['delta']:.3g} (low share {r['delta']['share']:.2f}), "
                     f"{r['steps']} steps; at matched train loss {float(lv):.3f}:")
        for lab, o in r["optimizers"].items():
            a = o["at_loss"][lv]
            f = fmt_ci
            lines.append(f"  {lab:<48s} lr={o['lr']:<8g} e_low={f(a['e_low'])} e_high={f(a['e_high'])} "
                         f"SB={f(a['SB'])} step={f(a['step'], 0)}")
    lines += skipped_lines("filtering", data)
    return "\n".join(lines)


def plot(data: dict, out_dir: str) -> list[str]:
    paths = []
    for name, r in data["results"].items():
        labels = list(r["optimizers"])
        cols = plots.colors(len(labels))
        fig, axes = plots.new_figure(3, 1, w=4.2)
        for c, lab in zip(cols, labels):
            o = r["optimizers"][lab]
            hs = [h for h, d in zip(o["histories"], o["diverged"]) if not d]
            if not hs:
                continue
            m = min(len(h["step"]) for h in hs)
            st = hs[0]["step"][:m]
            el = np.mean([h["e_low"][:m] for h in hs], 0)
            eh = np.mean([h["e_high"][:m] for h in hs], 0)
            ls = np.mean([h["loss"][:m] for h in hs], 0)
            axes[0][0].plot(st, el, color=c, label=lab[:40])
            axes[0][0].plot(st, eh, color=c, ls="--")
            axes[0][1].plot(ls, el, color=c)
            axes[0][1].plot(ls, eh, color=c, ls="--")
            x = [float(k) for k in o["at_loss"]]
            sb = [o["at_loss"][k]["SB"]["mean"] for k in o["at_loss"]]
            ci = [o["at_loss"][k]["SB"]["ci95"] or 0 for k in o["at_loss"]]
            axes[0][2].errorbar(x, [np.nan if v is None else v for v in sb], yerr=ci, color=c, marker="o",
                                ms=3, capsize=2)
        axes[0][0].set_xlabel("step")
        axes[0][0].set_ylabel("e_low (solid), e_high (dashed)")
        axes[0][0].set_title(f"{name}: filtered errors (mean over seeds)", fontsize=8)
        axes[0][0].legend(fontsize=5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        axes[0][1].set_xscale("log")
        axes[0][1].invert_xaxis()
        axes[0][1].set_xlabel("training loss (decreasing →)")
        axes[0][1].set_ylabel("e_low (solid), e_high (dashed)")
        axes[0][1].set_title("against training loss", fontsize=8)
        axes[0][2].set_xscale("log")
        from matplotlib.ticker import NullFormatter

        axes[0][2].xaxis.set_minor_formatter(NullFormatter())
        axes[0][2].set_xticks(r["loss_levels"])
        axes[0][2].set_xticklabels([f"{v:.2g}" for v in r["loss_levels"]], fontsize=7)
        axes[0][2].invert_xaxis()
        axes[0][2].set_xlabel("matched training loss level")
        axes[0][2].set_ylabel("SB = (e_high − e_low)/(e_high + e_low)")
        axes[0][2].set_title("SB at matched loss (95% CI)", fontsize=8)
        paths.append(save_figure(fig, f"{out_dir}/filtering_{name}.png"))
    return paths
