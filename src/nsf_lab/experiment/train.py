"""One training loop for every experiment, with callbacks; and one benchmark run (:func:`run_config`).

:func:`fit` is the loop used by the bench runs, the spectral instruments and the demo.  What differs between
them is passed in: the batch source (:func:`shuffled_batches`, :func:`window_batches`, a full batch), the loss,
an LR scheduler, a divergence rule, and callbacks ``cb(step, model, loss) -> stop?`` called once before the
first step (``step=0, loss=None``) and after every optimizer step.  Evaluation cadence, the alignment
recorder, the filtering probe, curves and progress are all callbacks.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from . import data as D
from . import models as M
from .augment import random_crop
from .metrics import ece, temperature_scaled_loss
from .tasks import Task, eval_steps, lr_lambda

Callback = Callable[[int, torch.nn.Module, "float | None"], "bool | None"]


def not_finite(loss: float) -> bool:
    return not math.isfinite(loss)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the last axis (token-level for sequence models)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def fit(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: Callable[[], tuple], steps: int, *,
        loss_fn=cross_entropy, scheduler=None, callbacks: Sequence[Callback] = (),
        diverged: Callable[[float], bool] = not_finite) -> dict:
    """Train ``steps`` optimizer steps on ``batches()``; stop early when ``diverged(loss)`` or a callback
    returns True.  Returns ``{"diverged_at": step or None, "steps_done": n}``."""
    model.train()
    for cb in callbacks:
        cb(0, model, None)
    for step in range(1, steps + 1):
        xb, yb = batches()
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        lv = loss.item()
        if diverged(lv) or any(cb(step, model, lv) for cb in callbacks):
            return {"diverged_at": step, "steps_done": step}
    return {"diverged_at": None, "steps_done": steps}


def shuffled_batches(x: torch.Tensor, y: torch.Tensor, batch: int, gen: torch.Generator):
    """Endless mini-batches of (x, y): a new permutation (drawn from ``gen``) whenever fewer than ``batch``
    rows of the current one are left (the rest is dropped)."""
    n, perm, pos = len(y), None, len(y)

    def next_batch():
        nonlocal perm, pos
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen).to(x.device), 0
        idx = perm[pos:pos + batch]
        pos += batch
        return x[idx], y[idx]
    return next_batch


def window_batches(tokens: torch.Tensor, batch: int, seq_len: int, gen: torch.Generator):
    """Endless batches of random windows of a token stream: (inputs, next-token targets), each (batch, seq_len)."""
    ar = torch.arange(seq_len + 1, device=tokens.device)

    def next_batch():
        starts = torch.randint(0, len(tokens) - seq_len - 1, (batch,), generator=gen).to(tokens.device)
        chunk = tokens[starts[:, None] + ar]
        return chunk[:, :-1], chunk[:, 1:]
    return next_batch


def augmented(batches: Callable[[], tuple], gen: torch.Generator, **crop):
    """``batches`` with :func:`~nsf_lab.experiment.augment.random_crop` (kwargs ``crop``) applied to each batch's
    inputs, the shifts drawn from ``gen``."""
    def next_batch():
        xb, yb = batches()
        return random_crop(xb, generator=gen, **crop), yb
    return next_batch


@torch.no_grad()
def evaluate(model, ds: D.Dataset, task: Task, full: bool = False, scaled: bool = False) -> dict:
    """Loss and accuracy on the evaluation set of ``ds`` (text: ``task.eval_windows`` fixed windows, evenly
    spaced); with ``full`` also ECE and mean confidence; with ``scaled`` also the loss at the best temperature
    (``loss_ts``, :func:`~nsf_lab.experiment.metrics.temperature_scaled_loss`)."""
    model.eval()
    tot_loss, correct, n = 0.0, 0, 0
    conf_all, corr_all, logits_all, y_all = [], [], [], []
    if ds.kind == "text":
        T = task.seq_len
        toks = ds.x_test
        starts = torch.linspace(0, len(toks) - T - 2, task.eval_windows).long().to(toks.device)
        chunk = toks[starts[:, None] + torch.arange(T + 1, device=toks.device)]
        batches = [(chunk[i:i + 64, :-1], chunk[i:i + 64, 1:]) for i in range(0, len(chunk), 64)]
    else:
        X, Y = ds.x_test, ds.y_test
        batches = [(X[i:i + 2048], Y[i:i + 2048]) for i in range(0, len(Y), 2048)]
    for xb, yb in batches:
        logits = model(xb).float()
        logits, yb = logits.reshape(-1, logits.shape[-1]), yb.reshape(-1)
        tot_loss += F.cross_entropy(logits, yb, reduction="sum").item()
        pred = logits.argmax(-1)
        correct += (pred == yb).sum().item()
        n += yb.numel()
        if full:
            conf_all.append(logits.softmax(-1).max(-1).values.cpu())
            corr_all.append((pred == yb).cpu())
        if scaled:
            logits_all.append(logits.cpu())
            y_all.append(yb.cpu())
    model.train()
    out = {"loss": tot_loss / n, "acc": correct / n}
    if full:
        conf = torch.cat(conf_all).double()
        out.update(ece=ece(conf, torch.cat(corr_all)), mean_conf=conf.mean().item())
    if scaled:
        out["loss_ts"] = temperature_scaled_loss(torch.cat(logits_all), torch.cat(y_all))[0]
    return out


class CurveRecorder:
    """Callback of a bench run: mean training loss since the last evaluation, then evaluation loss (also at the
    best temperature, ``loss_ts``), accuracy, LR and p at the steps of ``evals``; stops the run (diverged) when
    the evaluation loss is not finite."""

    KEYS = ("step", "epoch", "frac", "train_loss", "loss", "loss_ts", "acc", "lr", "p", "wall")

    def __init__(self, ds: D.Dataset, task: Task, opt, evals, total: int, steps_per_epoch: int):
        self.ds, self.task, self.opt, self.evals = ds, task, opt, set(evals)
        self.total, self.spe = total, steps_per_epoch
        self.curves = {k: [] for k in self.KEYS}
        self.run_loss, self.run_n = 0.0, 0
        self.t0 = time.perf_counter()

    def __call__(self, step: int, model, loss: float | None) -> bool:
        if loss is None:
            return False
        self.run_loss += loss
        self.run_n += 1
        if step not in self.evals:
            return False
        m = evaluate(model, self.ds, self.task, scaled=True)
        g0, c = self.opt.param_groups[0], self.curves
        # epochs on the curves are full-budget-equivalent epochs
        for k, v in (("step", step), ("epoch", step / self.spe), ("frac", step / self.total),
                     ("train_loss", self.run_loss / max(1, self.run_n)), ("loss", m["loss"]),
                     ("loss_ts", m["loss_ts"]), ("acc", m["acc"]),
                     ("lr", float(g0["lr"])), ("p", float(g0["p"]) if "p" in g0 else None),
                     ("wall", time.perf_counter() - self.t0)):
            c[k].append(v)
        self.run_loss, self.run_n = 0.0, 0
        return not math.isfinite(m["loss"])


def run_config(config: dict, *, device="cpu", data_root: str | None = None, progress=None) -> dict:
    """Train one benchmark run (a config of ``nsf_lab.experiment.store.make_config``); returns ``{"final": metrics,
    "curves": curves}`` as stored in a bench record.  Never raises on divergence."""
    from nsf import create_optimizer

    device = torch.device(device)
    task = Task(**config["task_def"])
    ds = D.prepared(task.dataset, config["split"], task.val_frac, device, data_root, task.train_subset)
    if ds.kind == "text":  # the evaluation windows of this split
        task = replace(task, eval_windows=task.windows(config["split"]))
    seed = config["seed"]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 7919)
    if ds.kind == "text":
        n_train, in_shape = len(ds.x_train), None
        batches = window_batches(ds.x_train, task.batch_size, task.seq_len, gen)
    else:
        n_train, in_shape = len(ds.y_train), tuple(ds.x_train.shape[1:])
        batches = shuffled_batches(ds.x_train, ds.y_train, task.batch_size, gen)
    if task.augment:  # its own generator: every optimizer of a seed sees the same augmented batches
        batches = augmented(batches, torch.Generator().manual_seed(seed + 104729), **task.augment)
    model = M.build(task.model, in_shape, ds.n_classes, **task.model_kw).to(device)
    spe = task.epoch_steps(n_train)
    total = task.total_steps(n_train, config["budget"])  # p cycles stated per run span these (compressed) steps
    opt = create_optimizer(dict(config["optimizer"]), model.parameters(), total_steps=total, lr=config["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, task.warmup))
    rec = CurveRecorder(ds, task, opt, eval_steps(task, spe, total, config["budget"]), total, spe)
    callbacks = [rec] if progress is None else [rec, lambda s, m, l: progress(s, total) if s else None]
    t0 = time.perf_counter()
    diverged_at = fit(model, opt, batches, total, scheduler=sched, callbacks=callbacks)["diverged_at"]
    wall = time.perf_counter() - t0
    curves = rec.curves
    if diverged_at is None:
        final = evaluate(model, ds, task, full=True, scaled=True)
        if not math.isfinite(final["loss"]):
            diverged_at = total
    if diverged_at is not None:
        final = {"loss": float("nan"), "acc": 1.0 / ds.n_classes, "ece": float("nan"), "mean_conf": float("nan"),
                 "loss_ts": float("nan")}
    final["error"] = 1.0 - final["acc"]
    final["best_acc"] = max(curves["acc"]) if curves["acc"] else final["acc"]
    if ds.kind == "text":
        final["ppl"] = math.exp(final["loss"]) if math.isfinite(final["loss"]) else float("nan")
    final.update(diverged=diverged_at is not None, diverged_step=diverged_at, steps=total,
                 steps_per_epoch=spe, wall_s=wall)
    return {"final": final, "curves": curves}
