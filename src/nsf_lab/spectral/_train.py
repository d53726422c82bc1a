"""Classifier set-up shared by the filtering and alignment instruments: data, budgets, training, LR tuning.

Data, model, loop and metrics are the experiment layer's (:mod:`nsf_lab.experiment`); this module only fixes the
instruments' choices (flattened inputs, a 2x128 ReLU MLP, constant LR, per-dataset budgets).
"""
from __future__ import annotations

import functools
import json
import math
import os
from typing import Sequence

import torch
from torch import nn

from nsf_lab.experiment import data as D
from nsf_lab.experiment.metrics import classification_metrics
from nsf_lab.experiment.models import mlp
from nsf_lab.experiment.train import fit, shuffled_batches
from nsf_lab.experiment.tuner import Decision, Grid
from nsf_lab.experiment.util import seed_everything, write_json_atomic

from ._common import OptimizerSpec, cycle_spec, make_optimizer, map_seeds, spec_label, tune_lr

#: per-dataset training budgets (constant LR; the same for every optimizer)
BUDGETS = {
    "mnist1d": {"steps": 1200, "batch": 128},
    "digits": {"steps": 600, "batch": 64},
    "fashion-mnist": {"steps": 800, "batch": 128},
}
QUICK_BUDGET = {"steps": 120, "batch": 64}
FASHION_SUBSET = (4000, 2000)  # train, test examples used from Fashion-MNIST
#: the declared LR grids (log, in decades) searched by the tuner's "full" rule
LR_GRID = Grid(1e-4, 100.0, 0.5)
QUICK_LR_GRID = Grid(1e-3, 0.1, 1.0)
TUNING_CRITERION = ("final validation error (10% of train; ties: validation loss), tuning seed only, same budget; "
                    "the tuner's 'full' rule on the declared grid")


def default_classifier_optimizers(period: int) -> list[str]:
    """The optimizers the classification instruments (filtering, alignment) compare by default."""
    return ["sgd", "adam", "nsf-fixed:p=-0.25", "nsf-fixed:p=0", "nsf-fixed:p=0.25",
            cycle_spec("nsf-cyclic", period), cycle_spec("nsf-cyclic-adam", period)]


def classification_sweep(quick: bool, datasets, seeds, lr_grid: Grid | None, optimizers):
    """Shared set-up of the classification instruments: the defaults for datasets, seeds and the LR grid, then
    per loadable dataset ``(name, data, steps, batch, cyclic period, optimizer specs)``; missing datasets land in ``skipped``."""
    if quick:
        datasets, seeds, lr_grid = datasets or ["digits"], seeds or [0, 1], lr_grid or QUICK_LR_GRID
    else:
        datasets, seeds, lr_grid = datasets or ["mnist1d", "digits", "fashion-mnist"], seeds or range(5), lr_grid or LR_GRID
    skipped: dict[str, str] = {}

    def each():
        for name in datasets:
            try:
                data = load_classification(name)
            except (D.DatasetMissing, FileNotFoundError, ImportError) as e:
                skipped[name] = str(e)
                continue
            budget = QUICK_BUDGET if quick else BUDGETS[name]
            period = max(10, budget["steps"] // 4)
            opts = list(optimizers or default_classifier_optimizers(period))
            if quick and optimizers is None:
                opts = [opts[0], opts[1], opts[-1]]
            yield name, data, budget["steps"], budget["batch"], period, opts

    return list(datasets), list(seeds), lr_grid, each(), skipped


def load_classification(name: str, val_frac: float = 0.1, split_seed: int = 0, subset: tuple | None = None):
    """Flattened tensors x_tr, y_tr, x_val, y_val, x_te, y_te: the validation split is carved from the training
    set, then everything is standardised with statistics of the training part only (tuning never sees the
    test set, and neither validation nor test rows enter the statistics)."""
    ds = D.load(name)
    if name == "fashion-mnist" and subset is None:
        subset = FASHION_SUBSET
    if subset is not None:
        ds = D.subset(ds, *subset)
    test, val = D.prepare(ds, "test", val_frac, split_seed), D.prepare(ds, "val", val_frac, split_seed)
    fl = lambda t: t.reshape(len(t), -1).float()  # noqa: E731
    return {"name": name, "n_classes": ds.n_classes,
            "x_tr": fl(test.x_train), "y_tr": test.y_train.long(),
            "x_val": fl(val.x_test), "y_val": val.y_test.long(),
            "x_te": fl(test.x_test), "y_te": test.y_test.long()}


def train_classifier(spec: OptimizerSpec, lr: float, data: dict, *, steps: int, batch: int, seed: int,
                     width: int = 128, depth: int = 2, callbacks=()) -> dict:
    """Mini-batch training with cross-entropy and a constant LR; callbacks ``cb(step, model, loss)`` as in
    :func:`nsf_lab.experiment.train.fit` (step 0 before training).  A loss above 1e3 counts as diverged."""
    seed_everything(seed)
    x, y = data["x_tr"], data["y_tr"]
    model = mlp((x.shape[1],), data["n_classes"], hidden=[width] * depth)
    opt = make_optimizer(spec, model.parameters(), lr=lr, total_steps=steps)
    r = fit(model, opt, shuffled_batches(x, y, batch, torch.Generator().manual_seed(seed)), steps,
            callbacks=callbacks, diverged=lambda loss: not math.isfinite(loss) or loss > 1e3)
    return {"model": model, "diverged": r["diverged_at"] is not None, "steps_done": r["steps_done"]}


@torch.no_grad()
def _val_metrics(model: nn.Module, data: dict) -> dict:
    m = classification_metrics(model(data["x_val"]), data["y_val"])
    return {"error": 1.0 - m["acc"], "loss": m["loss"], "diverged": False}


def tune_classifier_lr(spec: OptimizerSpec, data: dict, grid: Grid, *, steps: int, batch: int, seed: int = 1000,
                       width: int = 128, depth: int = 2, cache_path: str | None = None,
                       on_step=None) -> Decision:
    """The LR with the lowest final validation error (ties: validation loss), same budget for every point,
    by the tuner's "full" rule on ``grid``.  Finished evaluations are kept in ``cache_path`` (JSON), so that
    filtering and alignment, which share the training setup, train each point once."""
    key = json.dumps([data["name"], spec_label(spec), steps, batch, seed, width, depth])
    cache = {}
    if cache_path and os.path.exists(cache_path):
        with open(cache_path) as fh:
            cache = json.load(fh)

    def run(lr: float, s: int) -> dict:
        r = train_classifier(spec, lr, data, steps=steps, batch=batch, seed=s, width=width, depth=depth)
        if on_step:
            on_step()
        return {"diverged": True} if r["diverged"] else _val_metrics(r["model"], data)

    decision = tune_lr(run, grid, seed=seed, resolution=1.0 / len(data["y_val"]), cache=cache.setdefault(key, {}),
                       what=f"{data['name']}/{spec_label(spec)}: ")
    if cache_path:
        write_json_atomic(cache_path, cache)
    return decision


def _recorded_run(spec, lr, data, steps, batch, make_recorder, *, seed):
    """One seed at ``lr`` with a fresh recorder -> (diverged, the recorder's history); picklable for a pool."""
    rec = make_recorder()
    return train_classifier(spec, lr, data, steps=steps, batch=batch, seed=seed, callbacks=[rec])["diverged"], rec.history


def compare(opts: Sequence[OptimizerSpec], data: dict, make_recorder, *, steps: int, batch: int, seeds, lr_grid: Grid,
            tune_seed: int, cache_path: str | None, desc: str, progress: bool, workers: int = 1) -> dict:
    """Per optimizer: tune its LR on the validation split, then train every seed at that LR with a fresh
    ``make_recorder()`` callback (anything with a ``history``).  Returns ``{label: {lr, tuning, histories,
    diverged}}``."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(opts) * (len(lr_grid.points()) + 2 + len(seeds)), desc=desc, disable=not progress)
    per_opt = {}
    for spec in opts:
        tuning = tune_classifier_lr(spec, data, lr_grid, steps=steps, batch=batch, seed=tune_seed,
                                    cache_path=cache_path, on_step=lambda: bar.update(1))
        runs = map_seeds(functools.partial(_recorded_run, spec, tuning.lr, data, steps, batch, make_recorder), seeds,
                         workers, on_done=lambda: bar.update(1))
        div, hists = [d for d, _ in runs], [h for _, h in runs]
        per_opt[spec_label(spec)] = {"lr": tuning.lr, "tuning": tuning.to_dict(), "histories": hists, "diverged": div}
    bar.close()
    return per_opt
