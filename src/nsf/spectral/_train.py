"""Classifier training shared by the filtering and alignment instruments: data, model, loop, LR tuning."""
from __future__ import annotations

import json
import math
import os
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ._common import OptimizerSpec, make_optimizer, seed_everything, spec_label, warn_if_grid_edge

#: per-dataset training budgets (constant LR; the same for every optimizer)
BUDGETS = {
    "mnist1d": {"steps": 1200, "batch": 128},
    "digits": {"steps": 600, "batch": 64},
    "fashion-mnist": {"steps": 800, "batch": 128},
}
QUICK_BUDGET = {"steps": 120, "batch": 64}
FASHION_SUBSET = (4000, 2000)  # train, test examples used from Fashion-MNIST


def default_classifier_optimizers(period: int) -> list[str]:
    """The optimizers the classification instruments (filtering, alignment) compare by default."""
    cyc = f"cyclic(-0.25,0.25,{int(period)},cosine)"
    return ["sgd", "adam", "nsf-fixed:p=-0.25", "nsf-fixed:p=0", "nsf-fixed:p=0.25",
            f"nsf-cyclic:p={cyc}", f"nsf-cyclic-adam:p={cyc}"]


def classification_sweep(quick: bool, datasets, seeds, lr_grid, optimizers):
    """Shared set-up of the classification instruments: the defaults for datasets, seeds and the LR grid, then
    per loadable dataset ``(name, data, steps, batch, cyclic period, optimizer specs)``; missing datasets land in ``skipped``."""
    from nsf.bench.data import DatasetMissing

    from ._common import log_grid

    if quick:
        datasets, seeds, lr_grid = datasets or ["digits"], seeds or [0, 1], lr_grid or [1e-3, 1e-2, 1e-1]
    else:
        datasets = datasets or ["mnist1d", "digits", "fashion-mnist"]
        seeds, lr_grid = seeds or range(5), lr_grid or log_grid(1e-4, 100.0, 2)
    skipped: dict[str, str] = {}

    def each():
        for name in datasets:
            try:
                data = load_classification(name)
            except (DatasetMissing, FileNotFoundError, ImportError) as e:
                skipped[name] = str(e)
                continue
            budget = QUICK_BUDGET if quick else BUDGETS[name]
            period = max(10, budget["steps"] // 4)
            opts = list(optimizers or default_classifier_optimizers(period))
            if quick and optimizers is None:
                opts = [opts[0], opts[1], opts[-1]]
            yield name, data, budget["steps"], budget["batch"], period, opts

    return list(datasets), list(seeds), list(lr_grid), each(), skipped


def load_classification(name: str, val_frac: float = 0.1, split_seed: int = 0, subset: tuple | None = None):
    """Flattened, standardised (train statistics) tensors: x_tr, y_tr, x_val, y_val, x_te, y_te.
    The validation split is carved from the training set; tuning never sees the test set."""
    from nsf.bench import data as D

    ds = D.LOADERS[name]()
    if name == "fashion-mnist" and subset is None:
        subset = FASHION_SUBSET
    if subset is not None:
        g = torch.Generator().manual_seed(1234)
        tr = torch.randperm(len(ds.y_train), generator=g)[: subset[0]].sort().values
        te = torch.randperm(len(ds.y_test), generator=g)[: subset[1]].sort().values
        ds = D.Dataset(ds.name, ds.x_train[tr], ds.y_train[tr], ds.x_test[te], ds.y_test[te], ds.n_classes,
                       ds.kind, dict(ds.meta, subset=list(subset)))
    ds = D.standardize(ds)
    tr_ds, val_ds = D.split_train_val(ds, val_frac=val_frac, seed=split_seed)
    fl = lambda t: t.reshape(len(t), -1).float()  # noqa: E731
    return {"name": name, "n_classes": ds.n_classes,
            "x_tr": fl(tr_ds.x_train), "y_tr": tr_ds.y_train.long(),
            "x_val": fl(val_ds.x_test), "y_val": val_ds.y_test.long(),
            "x_te": fl(tr_ds.x_test), "y_te": tr_ds.y_test.long()}


def classifier(d_in: int, n_classes: int, width: int = 128, depth: int = 2) -> nn.Module:
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, n_classes))
    return nn.Sequential(*layers)


def train_classifier(spec: OptimizerSpec, lr: float, data: dict, *, steps: int, batch: int, seed: int,
                     width: int = 128, depth: int = 2,
                     callbacks: Sequence[Callable[[int, nn.Module], None]] = ()) -> dict:
    """Mini-batch training with cross-entropy and a constant LR. Each callback is called as ``cb(step, model)``
    after every optimizer step and once at step 0 (it decides its own cadence)."""
    seed_everything(seed)
    x, y = data["x_tr"], data["y_tr"]
    model = classifier(x.shape[1], data["n_classes"], width, depth)
    opt = make_optimizer(spec, model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(len(y), generator=gen), 0
    model.eval()
    for cb in callbacks:
        cb(0, model)
    diverged = False
    for t in range(1, steps + 1):
        if pos + batch > len(y):
            order, pos = torch.randperm(len(y), generator=gen), 0
        idx = order[pos:pos + batch]
        pos += batch
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        model.eval()
        if not math.isfinite(loss.item()) or loss.item() > 1e3:
            diverged = True
            break
        for cb in callbacks:
            cb(t, model)
    return {"model": model, "diverged": diverged, "steps_done": t if steps else 0}


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    logits = model(x)
    if not torch.isfinite(logits).all():
        return float("nan"), 0.0
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def tune_classifier_lr(spec: OptimizerSpec, data: dict, grid: Sequence[float], *, steps: int, batch: int,
                       seed: int = 1000, width: int = 128, depth: int = 2, cache_path: str | None = None,
                       on_step: Callable[[], None] | None = None) -> tuple[float, dict]:
    """Pick the LR on ``grid`` with the lowest final validation error (ties: lower validation loss), same budget
    for every grid point. Results are cached in ``cache_path`` (JSON) so that filtering and alignment, which use
    the same training setup, tune once."""
    key = json.dumps([data["name"], spec_label(spec), list(grid), steps, batch, seed, width, depth])
    cache = {}
    if cache_path and os.path.exists(cache_path):
        with open(cache_path) as fh:
            cache = json.load(fh)
    if key in cache:
        if on_step:
            for _ in grid:
                on_step()
        return cache[key]["lr"], {float(k): v for k, v in cache[key]["scores"].items()}
    scores = {}
    for lr in grid:
        r = train_classifier(spec, lr, data, steps=steps, batch=batch, seed=seed, width=width, depth=depth)
        if r["diverged"]:
            scores[lr] = float("inf")
        else:
            vl, va = evaluate(r["model"], data["x_val"], data["y_val"])
            scores[lr] = (1 - va) + 1e-3 * min(vl, 10.0) if math.isfinite(vl) else float("inf")
        if on_step:
            on_step()
    best = min(scores, key=lambda k: scores[k])
    warn_if_grid_edge(best, grid, f"{data['name']}/{spec_label(spec)}: ")
    if cache_path:
        cache[key] = {"lr": best, "scores": {str(k): (v if math.isfinite(v) else None) for k, v in scores.items()}}
        os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
        with open(cache_path, "w") as fh:
            json.dump(cache, fh, indent=1)
    return best, scores


def loss_levels(curves: Sequence[Sequence[float]], hi: float, n: int = 5) -> list[float]:
    """``n`` loss levels, geometric from ``hi`` down to just above the highest minimum reached by any run
    (so every non-diverged run reaches every level)."""
    mins = [min(c) for c in curves if len(c) and all(math.isfinite(v) for v in c)]
    lo = max(mins) * 1.02 if mins else hi / 2
    lo = min(lo, hi * 0.99)
    import numpy as np

    return [float(v) for v in np.geomspace(hi, lo, n)]
