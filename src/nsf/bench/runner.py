"""One run = (task, optimizer spec, lr, seed, budget, evaluation split) -> final metrics + curves.

Storage layout of a run directory::

    DIR/runs.jsonl            one JSON line per *finished* run (appended + flushed + fsynced)
    DIR/curves/<run_id>.json  its curves, written (atomically) before the line

``run_id`` is a hash of the run's identity (task definition, canonical optimizer spec, lr, seed, budget, split),
so a sweep that is stopped at any moment resumes by skipping the ids already in ``runs.jsonl``; a torn last line
(kill -9 during the write) is ignored and the run is simply done again.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import data as D
from . import models as M
from .tasks import Task, eval_steps, get_task, lr_lambda


# ----------------------------------------------------------------------------------------------------------
# Identity and storage

def make_config(task: str | Task, spec, lr: float, seed: int, budget: float = 1.0, split: str = "test") -> dict:
    from nsf.registry import parse_spec
    task = get_task(task) if isinstance(task, str) else task
    if split not in ("val", "test"):
        raise ValueError("split must be 'val' or 'test'")
    opt = parse_spec(spec)
    opt.pop("lr", None)  # the base LR is a separate, tuned field
    return {"task": task.name, "task_def": task.to_dict(), "optimizer": opt, "lr": float(lr), "seed": int(seed),
            "budget": float(budget), "split": split}


def run_id(config: dict) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class RunStore:
    """Append-only record of finished runs in a directory."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "curves").mkdir(exist_ok=True)
        self.path = self.root / "runs.jsonl"
        self._records: dict[str, dict] | None = None

    def records(self) -> dict[str, dict]:
        if self._records is None:
            self._records = {}
            if self.path.exists():
                with open(self.path, "rb") as f:
                    for n, raw in enumerate(f, 1):
                        try:
                            rec = json.loads(raw.decode("utf-8"))
                        except (ValueError, UnicodeDecodeError):
                            rec = None  # e.g. a torn line from an interrupted write
                        if not (isinstance(rec, dict) and {"run_id", "config", "final"} <= set(rec)):
                            print(f"warning: {self.path} line {n} is damaged and was skipped (its run, if any, "
                                  "counts as not done)", file=sys.stderr)
                            continue
                        have = self._records.get(rec["run_id"])
                        if have is None or have["final"].get("failed"):  # a failed run retried later
                            self._records[rec["run_id"]] = rec
        return self._records

    def __contains__(self, rid: str) -> bool:
        return rid in self.records()

    def curves(self, rid: str) -> dict:
        with open(self.root / "curves" / f"{rid}.json") as f:
            return json.load(f)

    def add(self, record: dict, curves: dict) -> None:
        rid = record["run_id"]
        cpath = self.root / "curves" / f"{rid}.json"
        tmp = cpath.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(curves, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, cpath)
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        with open(self.path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a torn line: terminate it so it stays a single bad line
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
            f.seek(0, os.SEEK_END)
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records()[rid] = record


# ----------------------------------------------------------------------------------------------------------
# Execution

def versions() -> dict:
    import nsf
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "nsf": getattr(nsf, "__version__", "?")}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    return torch.device(device)


@lru_cache(maxsize=4)
def _base_dataset(name: str, root: str | None):
    loader = D.LOADERS[name]
    return loader(root) if (root and name in ("fashion-mnist", "cifar10", "cifar100")) else loader()


_PREPARED: dict = {}


def prepared(task: Task, split: str, device: torch.device, root: str | None = None) -> D.Dataset:
    """Train part + evaluation set (val or test), standardised with train statistics, on ``device``."""
    key = (task.dataset, task.val_frac, split, str(device), root)
    if key not in _PREPARED:
        if len(_PREPARED) >= 4:
            _PREPARED.clear()
        tr_test, tr_val = D.split_train_val(_base_dataset(task.dataset, root), task.val_frac, seed=0)
        ds = tr_val if split == "val" else tr_test
        _PREPARED[key] = D.standardize(ds).to(device)
    return _PREPARED[key]


@torch.no_grad()
def evaluate(model, ds: D.Dataset, task: Task, full: bool = False) -> dict:
    model.eval()
    tot_loss, correct, n = 0.0, 0, 0
    conf_all, corr_all = [], []
    if ds.kind == "text":
        T = task.seq_len
        toks = ds.x_test
        starts = torch.linspace(0, len(toks) - T - 2, task.eval_windows).long().to(toks.device)
        idx = starts[:, None] + torch.arange(T + 1, device=toks.device)
        chunk = toks[idx]
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
    model.train()
    out = {"loss": tot_loss / n, "acc": correct / n}
    if full:
        conf, corr = torch.cat(conf_all).double(), torch.cat(corr_all).double()
        bins = torch.clamp((conf * 15).long(), max=14)
        ece = 0.0
        for b in range(15):
            m = bins == b
            if m.any():
                ece += m.double().mean().item() * abs(corr[m].mean().item() - conf[m].mean().item())
        out.update(ece=ece, mean_conf=conf.mean().item())
    return out


def execute(config: dict, device="cpu", data_root: str | None = None, progress=None) -> tuple[dict, dict]:
    """Train one run; returns (final metrics dict, curves dict).  Never raises on divergence."""
    from nsf import create_optimizer

    device = torch.device(device)
    task = Task(**config["task_def"])
    ds = prepared(task, config["split"], device, data_root)
    seed = config["seed"]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 7919)
    if ds.kind == "text":
        n_train, in_shape = len(ds.x_train), None
    else:
        n_train, in_shape = len(ds.y_train), tuple(ds.x_train.shape[1:])
    model = M.build(task.model, in_shape, ds.n_classes, **task.model_kw).to(device)
    opt = create_optimizer(dict(config["optimizer"]), model.parameters(), lr=config["lr"])
    spe = task.epoch_steps(n_train)
    total = task.total_steps(n_train, config["budget"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, task.warmup))
    evals = eval_steps(task, spe, total, config["budget"])
    eval_set = set(evals)
    full_spe = spe  # epochs on the curves are *full-budget-equivalent* epochs: step / spe / budget * budget
    curves = {"step": [], "epoch": [], "frac": [], "train_loss": [], "loss": [], "acc": [], "lr": [], "p": [],
              "wall": []}
    ar = torch.arange(task.seq_len + 1, device=device)
    perm, pos = None, n_train
    run_loss, run_n = 0.0, 0
    diverged_at = None
    t0 = time.perf_counter()
    for step in range(1, total + 1):
        if ds.kind == "text":
            starts = torch.randint(0, n_train - task.seq_len - 1, (task.batch_size,), generator=gen).to(device)
            chunk = ds.x_train[starts[:, None] + ar]
            xb, yb = chunk[:, :-1], chunk[:, 1:]
        else:
            if pos + task.batch_size > n_train:
                perm, pos = torch.randperm(n_train, generator=gen).to(device), 0
            idx = perm[pos:pos + task.batch_size]
            pos += task.batch_size
            xb, yb = ds.x_train[idx], ds.y_train[idx]
        logits = model(xb)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        lv = loss.item()
        if not math.isfinite(lv):
            diverged_at = step
            break
        run_loss += lv
        run_n += 1
        if step in eval_set:
            m = evaluate(model, ds, task)
            g0 = opt.param_groups[0]
            curves["step"].append(step)
            curves["epoch"].append(step / full_spe)
            curves["frac"].append(step / total)
            curves["train_loss"].append(run_loss / max(1, run_n))
            curves["loss"].append(m["loss"])
            curves["acc"].append(m["acc"])
            curves["lr"].append(float(g0["lr"]))
            curves["p"].append(float(g0["p"]) if "p" in g0 else None)
            curves["wall"].append(time.perf_counter() - t0)
            run_loss, run_n = 0.0, 0
            if not math.isfinite(m["loss"]):
                diverged_at = step
                break
        if progress is not None:
            progress(step, total)
    wall = time.perf_counter() - t0
    if diverged_at is None:
        final = evaluate(model, ds, task, full=True)
        if not math.isfinite(final["loss"]):
            diverged_at = total
    if diverged_at is not None:
        final = {"loss": float("nan"), "acc": 1.0 / ds.n_classes, "ece": float("nan"), "mean_conf": float("nan")}
    final["error"] = 1.0 - final["acc"]
    final["best_acc"] = max(curves["acc"]) if curves["acc"] else final["acc"]
    if ds.kind == "text":
        final["ppl"] = math.exp(final["loss"]) if math.isfinite(final["loss"]) else float("nan")
    final.update(diverged=diverged_at is not None, diverged_step=diverged_at, steps=total,
                 steps_per_epoch=spe, wall_s=wall)
    return final, curves


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    return x


def run_and_store(store: RunStore, config: dict, meta: dict | None = None, device="cpu",
                  data_root: str | None = None, progress=None) -> dict:
    rid = run_id(config)
    if rid in store:
        return store.records()[rid]
    t0 = time.time()
    final, curves = execute(config, device=device, data_root=data_root, progress=progress)
    record = {"run_id": rid, "config": config, "seed": config["seed"], "final": _jsonable(final),
              "wall_s": time.time() - t0, "versions": versions(), "device": str(device),
              "threads": torch.get_num_threads(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "curve_file": f"curves/{rid}.json", **(meta or {})}
    store.add(record, _jsonable(curves))
    return record
