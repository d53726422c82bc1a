"""Pilot of the evidence-v3 candidate tasks (issue 23): measured before the protocol is declared.

Each candidate task (model, data size, budget) trains a few runs of the baselines at a couple of learning rates,
one seed, on the **validation split**, one torch thread per run, one run at a time; every run's record (final
metrics, curves, wall time, the machine's load average before and after) is appended to
``benchmarks/results/evidence_v3_pilot/runs.jsonl`` (resumable: finished runs are skipped).  ``--table`` prints
the pilot table: per run seconds with load, final validation error/loss (also at the fitted temperature), and the
convergence checks of docs/evidence_v3.md per run; ``--estimate`` the evidence3 suite's compute.  The committed
records were made when fashion-resnet-20k had 15 epochs (the first candidate; the declared task has 30): every
record holds the task definition it ran.

    PYTHONPATH=src python3 benchmarks/evidence_v3_pilot.py --group all
    PYTHONPATH=src python3 benchmarks/evidence_v3_pilot.py --table --estimate
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from nsf_lab.experiment.store import make_config, run_id
from nsf_lab.experiment.tasks import TASKS, Task
from nsf_lab.experiment.train import run_config

OUT = Path(__file__).resolve().parent / "results" / "evidence_v3_pilot"


def candidates() -> dict[str, Task]:
    """The candidate tasks: the v3 tasks where tasks.py defines them, else the pilot's own drafts."""
    names = ("mnist1d-mlp", "fashion-mlp-long", "fashion-resnet-20k", "shakespeare-charlm-2k")
    return {n: TASKS[n] for n in names if n in TASKS}


def group(name: str) -> list[tuple[Task, str, float, int]]:
    """(task, optimizer spec, lr, seed) of one pilot group; a task name with "x2" is the 2x longer reference."""
    c = candidates()
    twice = lambda t: replace(t, name=t.name + "-x2", epochs=2 * t.epochs)  # noqa: E731
    g = {
        "resnet": [(c["fashion-resnet-20k"], "adam", 3.16227766017e-3, 100),
                   (c["fashion-resnet-20k"], "adam", 1e-2, 100),
                   (c["fashion-resnet-20k"], "sgd", 0.1, 100),
                   (c["fashion-resnet-20k"], "sgd", 0.316227766017, 100)],
        "charlm": [(c["shakespeare-charlm-2k"], "adam", 3.16227766017e-3, 100),
                   (c["shakespeare-charlm-2k"], "adam", 1e-2, 100),
                   (c["shakespeare-charlm-2k"], "sgd", 0.316227766017, 100),
                   (c["shakespeare-charlm-2k"], "sgd", 1.0, 100)],
        "mlp": [(c["fashion-mlp-long"], opt, lr, 100) for opt, lr in
                (("adam", 1e-3), ("adam", 3.16227766017e-3), ("sgd", 0.0316227766017), ("sgd", 0.1))],
        "mnist1d": [(c["mnist1d-mlp"], opt, lr, s) for s in (100, 101, 102) for opt, lrs in
                    (("sgd", (0.01, 0.0316227766017, 0.1, 0.316227766017, 1.0)),
                     ("adam", (3.16227766017e-4, 1e-3, 3.16227766017e-3, 1e-2, 3.16227766017e-2))) for lr in lrs],
    }
    g["reference"] = [(twice(c["mnist1d-mlp"]), opt, lr, s) for s in (100, 101, 102)
                      for opt, lr in (("adam", 1e-2), ("sgd", 0.316227766017))]
    g["reference"] += [(twice(c["fashion-resnet-20k"]), "adam", 1e-2, 100),
                      (twice(c["shakespeare-charlm-2k"]), "adam", 3.16227766017e-3, 100),
                      (twice(c["fashion-mlp-long"]), "adam", 1e-3, 100)]
    if name == "all":
        return [x for k in ("mnist1d", "mlp", "resnet", "charlm", "reference") for x in g[k]]
    return g[name]


def load() -> dict:
    path = OUT / "runs.jsonl"
    if not path.exists():
        return {}
    return {r["run_id"]: r for r in map(json.loads, path.read_text().splitlines()) if r}


def run(items) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    done = load()
    for task, opt, lr, seed in items:
        cfg = make_config(task, opt, lr, seed, 1.0, "val")
        rid = run_id(cfg)
        if rid in done:
            continue
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        res = run_config(cfg)
        wall = time.perf_counter() - t0
        rec = {"run_id": rid, "config": cfg, "final": res["final"], "curves": res["curves"], "wall_s": wall,
               "load_before": load_before, "load_after": os.getloadavg(), "threads": torch.get_num_threads(),
               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(OUT / "runs.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{task.name} {opt} lr={lr:.3g} seed={seed}: val err {100 * res['final']['error']:.2f} % loss "
              f"{res['final']['loss']:.4f}  {wall:.1f} s (load {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f})",
              flush=True)


def convergence(curves: dict) -> dict:
    """docs/evidence_v3.md's convergence check on one run's validation curves: accuracy gained over the last
    quarter of training (points) and the share of the whole training-loss drop that falls in the last quarter."""
    frac, acc, tl = curves["frac"], curves["acc"], curves["train_loss"]
    at = lambda xs, f: xs[min(range(len(frac)), key=lambda i: abs(frac[i] - f))]  # noqa: E731
    return {"gain_pt": 100 * (acc[-1] - at(acc, 0.75)), "loss_share": (at(tl, 0.75) - tl[-1]) / (tl[0] - tl[-1])}


def table() -> None:
    recs = sorted(load().values(), key=lambda r: (r["config"]["task"], r["config"]["optimizer"]["name"],
                                                 r["config"]["lr"], r["config"]["seed"]))
    print("| task | epochs | opt | lr | seed | steps | s/run (load 1-min before→after) | val err % | val loss | val loss at T "
          "| last-¼ acc gain (pt) | last-¼ share of the train-loss drop |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in recs:
        c, f = r["config"], r["final"]
        cv = convergence(r["curves"])
        lts = r["curves"]["loss_ts"][-1]
        print(f"| {c['task']} | {c['task_def']['epochs']:g} | {c['optimizer']['name']} | {c['lr']:.3g} | {c['seed']} | {f['steps']} | "
              f"{r['wall_s']:.1f} ({r['load_before'][0]:.2f}→{r['load_after'][0]:.2f}) | {100 * f['error']:.2f} | "
              f"{f['loss']:.4f} | {lts:.4f} | {cv['gain_pt']:+.2f} | {100 * cv['loss_share']:.1f} % |")


def estimate(alt_share: float = 0.25) -> None:
    """The suite's planned runs (a dry run: every LR search ends at its first bracket) per task, validation and test
    side, in full-budget run equivalents, times the task's fastest pilot run (the least loaded); plus
    ``alt_share`` more test runs for seeds at runner-up LRs (not in the dry run: its synthetic seeds agree)."""
    import collections

    from nsf_lab.bench.protocol import MemoryStore, Planner, synthetic_final
    per_step = collections.defaultdict(list)  # a 2x reference counts for its task: seconds per step
    for r in load().values():
        per_step[r["config"]["task"].removesuffix("-x2")].append(r["wall_s"] / r["final"]["steps"])
    store, eq = MemoryStore(), collections.Counter()
    planner = Planner("evidence3", store)
    while todo := planner.plan():
        for c, m in todo:
            store.add({"run_id": run_id(c), "config": c, "final": synthetic_final(c), **m})
            eq[c["task"], c["split"]] += c["budget"]
    from nsf_lab.experiment.data import prepared
    secs = {}
    for task in planner.suite.tasks:
        t = candidates()[task]
        ds = prepared(t.dataset, "test", t.val_frac, "cpu", None, t.train_subset)
        secs[task] = [min(per_step[task]) * t.total_steps(len(ds.x_train) if ds.kind == "text" else len(ds.y_train))]
    total = 0.0
    print("| task | s/run (fastest pilot step rate) | validation runs (full-run equivalents) | test runs (+ runner-ups) | "
          "core-hours |\n|---|---|---|---|---|")
    for task in planner.suite.tasks:
        val, test = eq[task, "val"], eq[task, "test"] * (1 + alt_share)
        h = min(secs[task]) * (val + test) / 3600
        total += h
        print(f"| {task} | {min(secs[task]):.1f} | {val:g} | {test:g} | {h:.2f} |")
    print(f"| all | | | | {total:.2f} core-hours = {total / 2:.1f} h on 2 cores |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--group", choices=["all", "mnist1d", "mlp", "resnet", "charlm", "reference"])
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--estimate", action="store_true", help="the evidence3 suite's compute from the pilot's times")
    a = ap.parse_args(argv)
    if a.group:
        run(group(a.group))
    if a.table:
        table()
    if a.estimate:
        estimate()


if __name__ == "__main__":
    main()
