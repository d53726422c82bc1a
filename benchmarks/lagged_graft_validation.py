"""Would option (b) of issue 22 — the graft on the *previous* step's norm ratio, so that one pass suffices — change
the default's results? Paired validation runs of the library default's method written plainly twice: the exact
graft and the lagged one (the ratio of step t − 1 applied at step t; the exact ratio at the first step and
whenever p changes). Same code otherwise, so the difference is the lag alone.

    python benchmarks/lagged_graft_validation.py --seeds 10 --out benchmarks/results/perf22b/lagged_validation.json
    python benchmarks/lagged_graft_validation.py --check-library   # seed 0: the plain exact graft vs the library's

Validation splits only (the tasks' held-out part of the training set), at LRs given on the command line (the
default arm's LR chosen on validation by the Evidence v3 sweep). Reports, per task, the paired difference
lagged − exact of the final validation loss and error, mean and 95 % t interval over seeds.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

from nsf.optim.defaults import default_cycle


class GraftNSF(torch.optim.Optimizer):
    """The library default's method (adam-grafted, p on the default cycle of the run), single-tensor, with the
    graft ratio either exact or lagged by one step (``lagged``)."""

    def __init__(self, params, lr: float = 1e-3, total_steps: int | None = None, lagged: bool = False,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))
        self.p_of = default_cycle(total_steps=total_steps)
        self.lagged = lagged
        self.t = 0

    @torch.no_grad()
    def step(self, closure=None):
        p = float(self.p_of(self.t))
        self.t += 1
        for group in self.param_groups:
            (beta1, beta2), eps, lr = group["betas"], group["eps"], group["lr"]
            for q in group["params"]:
                if q.grad is None:
                    continue
                state = self.state[q]
                if not state:
                    state.update(m=torch.zeros_like(q), v=torch.zeros_like(q), t=0)
                m, v = state["m"], state["v"]
                state["t"] += 1
                m.lerp_(q.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(q.grad, q.grad, value=1 - beta2)
                m_hat, v_hat = m / (1 - beta1 ** state["t"]), v / (1 - beta2 ** state["t"])
                d = m_hat / (v_hat.pow(p) + eps) if p > 0 else m_hat  # the default's p is in [0, ½]
                r = m_hat / (v_hat.sqrt() + eps)  # Adam's step: the length the graft keeps
                d_norm, r_norm = float(d.norm()), float(r.norm())
                now = r_norm / d_norm if d_norm > 0 and math.isfinite(d_norm) and math.isfinite(r_norm) else 0.0
                same_p = state.get("p") == p
                ratio = state["ratio"] if self.lagged and same_p and "ratio" in state else now
                state["ratio"], state["p"] = now, p
                q.add_(d, alpha=-lr * ratio)


def paired_delta(lagged: list[float], exact: list[float]) -> dict:
    """lagged − exact over seeds: mean, 95 % paired-t interval (the lab's ``stats.paired``) and the SD."""
    from nsf_lab.experiment.stats import paired
    r = paired(lagged, exact)
    return {"n": r["n"], "mean": r["diff"], "ci95": [r["lo"], r["hi"]],
            "sd": statistics.stdev(a - b for a, b in zip(lagged, exact))}


def main() -> int:
    from nsf_lab.experiment.store import make_config
    from nsf_lab.experiment.train import run_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["mnist1d-mlp=0.0177827941", "fashion-mlp-long=0.00316227766"],
                        help="TASK=LR pairs")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--check-library", action="store_true",
                        help="only seed 0: the plain exact graft against the library default (same method)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sys.modules.setdefault("lagged_graft_validation", sys.modules[__name__])
    if args.check_library:
        from nsf_lab.bench.suites import library_default
        for item in args.tasks:
            task, lr = item.split("=")
            plain, library = (run_config(make_config(task, spec, float(lr), 0, split="val"))["final"]["loss"] for spec
                              in ({"name": "lagged_graft_validation:GraftNSF"}, library_default()))
            print(f"{task} (lr {float(lr):g}, seed 0): final validation loss, plain exact graft {plain:.5f}, "
                  f"library default {library:.5f}, difference {plain - library:+.5f} nats")
        return 0
    results = {}
    for item in args.tasks:
        task, lr = item.split("=")
        finals = {}
        for lagged in (False, True):
            spec = {"name": "lagged_graft_validation:GraftNSF", "lagged": lagged}
            finals[lagged] = [run_config(make_config(task, spec, float(lr), seed, split="val"))["final"]
                              for seed in range(args.seeds)]
        results[task] = {
            "lr": float(lr),
            "exact": finals[False], "lagged": finals[True],
            "delta_loss": paired_delta([b["loss"] for b in finals[True]], [a["loss"] for a in finals[False]]),
            "delta_error_points": paired_delta([100 * b["error"] for b in finals[True]],
                                               [100 * a["error"] for a in finals[False]]),
        }
        d = results[task]["delta_loss"]
        e = results[task]["delta_error_points"]
        print(f"{task} (lr {float(lr):g}, {d['n']} seeds): lagged − exact val loss {d['mean']:+.4f} "
              f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] nats; error {e['mean']:+.2f} "
              f"[{e['ci95'][0]:+.2f}, {e['ci95'][1]:+.2f}] points")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
