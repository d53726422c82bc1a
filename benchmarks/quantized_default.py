"""Does a stepped (quantised) default p cycle change results?  Issue #10 asks before it may become the default.

On the validation splits of the evidence search tasks only: the default configuration the evidence search
ranked (p = Cyclic(0, ½), cosine, 2 cycles per run, ``scale="adam"``) at the LR its search tuned, against the
same cycle with ``quantize=q`` (p on multiples of q: square-root chains for q = ⅛), seeds 0–9 sharing
initialisation and batch order.  Prints the paired differences (quantised − continuous) of final validation
loss and error with 95 % t CIs.  Resumable: finished runs in ``--out`` are never repeated.

    python benchmarks/quantized_default.py --out runs/quantized --workers 2
"""
from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path

from tqdm import tqdm

from nsf_lab.experiment import stats as S
from nsf_lab.experiment.store import make_config, run_id
from nsf_lab.experiment.sweep import InlineEngine, PoolEngine, Sweep, drive
from nsf_lab.experiment.util import write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
ARCHIVE = ROOT / "benchmarks/results/evidence_rundir.tar.gz"
CYCLE = {"type": "cyclic", "low": 0.0, "high": 0.5, "cycles": 2.0, "shape": "cosine", "phase": 0.0}


def search_lrs() -> dict:
    """The tuned LR per task of the evidence search's adam-grafted (0, ½) candidate (committed decisions)."""
    with tarfile.open(ARCHIVE) as t:
        member = next(m for m in t.getmembers() if m.name.endswith("decisions.json"))
        dec = json.load(t.extractfile(member))
    for row in dec["search"]["stage_a"]:
        if row["spec"]["scale"] == "adam" and row["spec"]["p"] == CYCLE:
            return {r["task"]: r["lr"] for r in row["per_task"]}
    raise SystemExit(f"{ARCHIVE}: no adam-grafted cyclic(0, 1/2) candidate in the search")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/quantized")
    ap.add_argument("--quantize", type=float, default=0.125)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--results", default=str(ROOT / "benchmarks/results/quantized_default.json"))
    a = ap.parse_args(argv)

    lrs = search_lrs()
    arms = {"continuous": {"name": "nsf", "p": CYCLE, "scale": "adam"},
            "quantised": {"name": "nsf", "p": {**CYCLE, "quantize": a.quantize}, "scale": "adam"}}
    configs = {(task, arm, s): make_config(task, spec, lr, s, split="val")
               for task, lr in lrs.items() for arm, spec in arms.items() for s in range(a.seeds)}
    sweep, _ = Sweep.create(a.out, {"name": "quantized-default", "quantize": a.quantize, "seeds": a.seeds})
    todo = [c for c in configs.values() if run_id(c) not in sweep.store]
    bar = tqdm(total=len(todo), desc="quantised default", unit="run")

    def plan():
        return [(c, {"stage": "quantized"}) for c in configs.values() if run_id(c) not in sweep.store]

    engine = PoolEngine(a.workers) if a.workers > 1 else InlineEngine()
    drive(sweep, plan, engine, progress=lambda done, *_: bar.update(done - bar.n))
    bar.close()

    recs = sweep.store.records()
    rows = []
    for task in lrs:
        final = {arm: [recs[run_id(configs[task, arm, s])]["final"] for s in range(a.seeds)] for arm in arms}
        row = {"task": task, "lr": lrs[task]}
        for key, unit in (("loss", 1.0), ("error", 100.0)):
            q = [unit * f[key] for f in final["quantised"]]
            c = [unit * f[key] for f in final["continuous"]]
            row[key] = {"continuous": S.mean(c), "quantised": S.mean(q), "diff": S.paired(q, c)}
        rows.append(row)
        d_l, d_e = row["loss"]["diff"], row["error"]["diff"]
        print(f"{task:12s} lr {lrs[task]:.4g}  val loss {row['loss']['continuous']:.4f} -> "
              f"{row['loss']['quantised']:.4f}  diff {d_l['diff']:+.4f} [{d_l['lo']:+.4f}, {d_l['hi']:+.4f}]   "
              f"val error {row['error']['continuous']:.2f} % -> {row['error']['quantised']:.2f} %  diff "
              f"{d_e['diff']:+.2f} [{d_e['lo']:+.2f}, {d_e['hi']:+.2f}] points  (n={a.seeds})")
    write_json_atomic(a.results, {"quantize": a.quantize, "seeds": a.seeds, "split": "val", "rows": rows})


if __name__ == "__main__":
    main()
