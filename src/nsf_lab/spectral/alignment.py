"""Early decision-boundary alignment (docs/spectral.md §4): test accuracy against test loss over training.

:class:`AlignmentRecorder` is a callback for any training loop: call ``recorder(step, model)`` after each
optimizer step; at the steps its cadence selects it evaluates the model on held-out data and records

* accuracy and mean cross-entropy,
* expected calibration error ECE = Σ_b (n_b/N)·|acc_b − conf_b| over equal-width confidence bins
  (confidence = max softmax probability; :func:`nsf_lab.experiment.metrics.ece`, the bench's ECE), and the mean
  confidence,
* margins: probability margin p_y − max_{j≠y} p_j and logit margin z_y − max_{j≠y} z_j (mean, quantiles,
  fraction negative = error rate).

The effect claimed by the paper is "more accuracy at the same loss": the instrument reports, per optimizer,
the test accuracy at the first evaluation where the test loss reaches each of several common levels, and plots
accuracy against loss.
"""
from __future__ import annotations

import functools
import math
import time
from typing import Callable, Sequence

import numpy as np
import torch

from nsf_lab.experiment.metrics import classification_metrics
from nsf_lab.experiment.stats import mean_ci
from nsf_lab.experiment.tuner import Grid
from nsf_lab.experiment.util import save_figure, write_json_atomic

from . import plots
from ._common import OptimizerSpec, first_index_below, fmt_ci, grid_dict, loss_levels, skipped_lines
from ._train import TUNING_CRITERION, classification_sweep, compare


def _cadence(early_every: int, late_every: int, early_steps: int, step: int) -> bool:
    return step == 0 or step % (early_every if step <= early_steps else late_every) == 0


def early_dense_cadence(steps_per_epoch: int, early_epochs: int = 3, per_epoch_early: int = 8,
                        per_epoch_late: int = 2) -> Callable[[int], bool]:
    """Evaluate ``per_epoch_early`` times per epoch for the first ``early_epochs`` epochs, then
    ``per_epoch_late`` times per epoch (and always at step 0). A partial, so it pickles (``--workers``)."""
    spe = max(1, int(steps_per_epoch))
    return functools.partial(_cadence, max(1, spe // per_epoch_early), max(1, spe // per_epoch_late),
                             early_epochs * spe)


class AlignmentRecorder:
    """Records held-out metrics at the steps ``cadence(step)`` selects. Use from any loop::

        rec = AlignmentRecorder(x_test, y_test, early_dense_cadence(len(train_loader)))
        for step, batch in enumerate(loader, 1):
            ...; opt.step()
            rec(step, model)            # or pass it to nsf_lab.experiment.train.fit as a callback
        rec.history  # dict of lists: step, acc, loss, ece, mean_conf, margins...

    ``x``/``y`` are tensors (evaluated in chunks of ``batch_size``); the model is put in eval mode for the
    evaluation and its previous mode restored."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, cadence: Callable[[int], bool] | int = 1,
                 batch_size: int = 4096, n_bins: int = 15):
        self.x, self.y = x, y
        self.cadence = cadence if callable(cadence) else (lambda s, k=int(cadence): s % k == 0)
        self.batch_size, self.n_bins = batch_size, n_bins
        self.history: dict[str, list] = {}

    @torch.no_grad()
    def record(self, step: int, model: torch.nn.Module) -> dict:
        was_training = model.training
        model.eval()
        logits = torch.cat([model(self.x[i:i + self.batch_size]) for i in range(0, len(self.x), self.batch_size)])
        model.train(was_training)
        m = classification_metrics(logits, self.y, self.n_bins)
        m["step"] = step
        for k, v in m.items():
            self.history.setdefault(k, []).append(v)
        return m

    def __call__(self, step: int, model: torch.nn.Module, loss: float | None = None) -> None:
        if self.cadence(step):
            self.record(step, model)


def accuracy_at_loss(history: dict, levels: Sequence[float]) -> dict:
    """Test accuracy (and ECE, confidence) at the first record where test loss ≤ each level."""
    out = {}
    for lv in levels:
        i = first_index_below(history["loss"], lv)
        out[lv] = None if i is None else {k: history[k][i] for k in ("step", "acc", "ece", "mean_conf",
                                                                      "logit_margin_mean")}
    return out



def run(optimizers: Sequence[OptimizerSpec] | None = None, *, quick: bool = False, out_dir: str | None = None,
        datasets: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
        lr_grid: Grid | None = None, tune_seed: int = 1000, progress: bool = True, workers: int = 1) -> dict:
    datasets, seeds, lr_grid, sweep, skipped = classification_sweep(quick, datasets, seeds, lr_grid, optimizers)
    cache = f"{out_dir}/lr_tuning_cache.json" if out_dir else None
    t0 = time.time()
    results = {}
    for name, data, steps, batch, period, opts in sweep:
        spe = int(math.ceil(len(data["y_tr"]) / batch))
        recorder = functools.partial(AlignmentRecorder, data["x_te"], data["y_te"], early_dense_cadence(spe))
        per_opt = compare(opts, data, recorder,
                          steps=steps, batch=batch, seeds=seeds, lr_grid=lr_grid, tune_seed=tune_seed,
                          cache_path=cache, workers=workers, desc=f"alignment/{name}", progress=progress)
        # common test-loss levels: from 0.9·ln C down to the highest minimum any run reached
        levels = loss_levels([h["loss"] for o in per_opt.values() for h, d in zip(o["histories"], o["diverged"])
                              if not d], 0.9 * math.log(data["n_classes"]))
        for lab, o in per_opt.items():
            at = [accuracy_at_loss(h, levels) for h in o["histories"]]
            o["at_loss"] = {str(lv): {k: mean_ci([a[lv][k] if a[lv] else None for a in at])
                                      for k in ("step", "acc", "ece", "mean_conf", "logit_margin_mean")}
                            for lv in levels}
            o["final"] = {k: mean_ci([h[k][-1] for h in o["histories"]])
                          for k in ("acc", "loss", "ece", "mean_conf", "logit_margin_mean")}
            o["best_acc"] = mean_ci([max(h["acc"]) for h in o["histories"]])
        results[name] = {"steps": steps, "batch": batch, "steps_per_epoch": spe, "cyclic_period": period,
                         "loss_levels": levels, "optimizers": per_opt}
    out = {"settings": {"quick": quick, "datasets": datasets, "seeds": seeds, "lr_grid": grid_dict(lr_grid),
                        "tune_seed": tune_seed, "model": "MLP 2×128 ReLU", "lr_schedule": "constant",
                        "cadence": "8 evaluations/epoch for 3 epochs, then 2/epoch",
                        "tuning_criterion": TUNING_CRITERION,
                        "seconds": time.time() - t0},
           "skipped": skipped, "results": results}
    if out_dir:
        write_json_atomic(f"{out_dir}/alignment.json", out)
        plot(out, out_dir)
    return out


def format_summary(data: dict) -> str:
    lines = []
    f = fmt_ci
    for name, r in data["results"].items():
        lv = r["loss_levels"]
        lines.append(f"alignment [{name}] test accuracy at test-loss levels " + ", ".join(f"{v:.3f}" for v in lv))
        for lab, o in r["optimizers"].items():
            accs = " ".join(f(o["at_loss"][str(v)]["acc"]) for v in lv)
            lines.append(f"  {lab:<48s} lr={o['lr']:<8g} {accs}  final acc {f(o['final']['acc'])} "
                         f"ECE {f(o['final']['ece'])}")
    lines += skipped_lines("alignment", data)
    return "\n".join(lines)


def plot(data: dict, out_dir: str) -> list[str]:
    paths = []
    for name, r in data["results"].items():
        labels = list(r["optimizers"])
        cols = plots.colors(len(labels))
        fig, axes = plots.new_figure(3, 1, w=4.2)
        for c, lab in zip(cols, labels):
            o = r["optimizers"][lab]
            for j, (h, d) in enumerate(zip(o["histories"], o["diverged"])):
                if d:
                    continue
                axes[0][0].plot(h["loss"], h["acc"], color=c, lw=0.8, alpha=0.7, label=lab[:40] if j == 0 else None)
                axes[0][1].plot(h["step"], h["acc"], color=c, lw=0.8, alpha=0.7)
            lv = r["loss_levels"]
            acc = [o["at_loss"][str(v)]["acc"] for v in lv]
            axes[0][2].errorbar(lv, [np.nan if a["mean"] is None else a["mean"] for a in acc],
                                yerr=[a["ci95"] or 0 for a in acc], color=c, marker="o", ms=3, capsize=2)
        axes[0][0].invert_xaxis()
        axes[0][0].set_xlabel("test loss (decreasing →)")
        axes[0][0].set_ylabel("test accuracy")
        axes[0][0].set_title(f"{name}: accuracy against loss (each seed)", fontsize=8)
        axes[0][0].legend(fontsize=5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        axes[0][1].set_xscale("symlog", linthresh=max(1, r["steps_per_epoch"]))
        axes[0][1].set_xlabel("step")
        axes[0][1].set_ylabel("test accuracy")
        axes[0][1].set_title("accuracy over training", fontsize=8)
        axes[0][2].invert_xaxis()
        axes[0][2].set_xlabel("test-loss level")
        axes[0][2].set_ylabel("test accuracy at first reach")
        axes[0][2].set_title("accuracy at fixed loss (mean ± 95% CI)", fontsize=8)
        paths.append(save_figure(fig, f"{out_dir}/alignment_{name}.png"))
    return paths
