"""``nsf spectrum <instrument> [--quick] --out DIR``: the spectral instruments from the command line."""
from __future__ import annotations

import argparse
import importlib
import math
import os
import time

from nsf_lab.cli import (CHECK_STEPS, UserError, check_spec, check_writable_dir, non_negative_float,
                         positive_int)

from ._train import BUDGETS

INSTRUMENTS = {
    "response": "the optimizer as a filter: cross-coordinate gain and single-tone transfer (docs/spectral.md §1)",
    "fprinciple": "1-D regression: per-frequency error, time to learn, matched-loss comparison (docs/spectral.md §2)",
    "filtering": "Xu et al.'s filtering method on real data: e_low, e_high, SB (docs/spectral.md §3)",
    "alignment": "early decision-boundary alignment: test accuracy against test loss (docs/spectral.md §4)",
}


#: the classification instruments' datasets (filtering, alignment); one not installed is skipped with a note
DATASETS = tuple(BUDGETS)


def _seeds(text: str) -> list[int]:
    """'5' -> [0..4]; '0,3,7' -> [0, 3, 7] (seeds are non-negative integers)."""
    if "," not in text:
        return list(range(positive_int(text)))
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a count ('5') or a comma list ('0,3,7')") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: seeds are non-negative integers")
    return seeds


def _grid(text: str):
    """'LO,HI,STEP' -> the declared log grid LO..HI in STEP decades that the LR tuner searches."""
    from nsf_lab.experiment.tuner import Grid

    try:
        lo, hi, step = (float(v) for v in text.split(","))
        if not all(math.isfinite(v) for v in (lo, hi, step)):
            raise ValueError("not finite")
        return Grid(lo, hi, step)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI,STEP with 0 < LO <= HI and STEP > 0 (e.g. "
                                         f"1e-4,100,0.5), got {text!r}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser("spectrum", help="spectral instruments (response, fprinciple, filtering, alignment)",
                              description="Spectral instruments. Each writes JSON + PNG into --out and prints "
                                          "a summary.")
    sub = p.add_subparsers(dest="instrument", required=True)
    for name, help_text in INSTRUMENTS.items():
        q = sub.add_parser(name, help=help_text, description=help_text)
        q.add_argument("--quick", action="store_true", help="small settings for CI (well under a minute)")
        q.add_argument("--out", required=True, help="output folder for JSON and PNG files")
        q.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
        q.add_argument("--optimizers", nargs="+", default=None, metavar="SPEC",
                       help="registry specs, e.g. adam 'nsf-fixed:p=-0.25' 'nsf:p=cyclic(0,0.5,cycles=2)' (a cycle "
                            "stated per run spans each run) (default: the instrument's list)")
        q.add_argument("--no-progress", action="store_true", help="no progress bar")
        q.add_argument("--replot", action="store_true",
                       help="redraw the figures and reprint the summary from an existing DIR/<instrument>.json")
        if name != "response":
            q.add_argument("--seeds", type=_seeds, default=None, help="'5' for seeds 0..4, or '0,1,2'")
            q.add_argument("--workers", type=positive_int, default=1,
                           help="run the seeds in N processes, each with --threads torch threads (default 1)")
            q.add_argument("--lr-grid", type=_grid, default=None, metavar="LO,HI,STEP",
                           help="declared log LR grid searched by the tuner, STEP in decades "
                                "(default: the instrument's, e.g. 1e-4,100,0.5)")
        if name in ("filtering", "alignment"):
            q.add_argument("--datasets", nargs="+", default=None, choices=DATASETS, metavar="NAME",
                           help=f"{' '.join(DATASETS)} (default: all available; quick: digits)")
        if name == "fprinciple":
            q.add_argument("--steps", type=positive_int, default=None, help="training steps per run")
        if name == "response":
            q.add_argument("--noise", type=non_negative_float, nargs="+", default=None,
                           help="noise levels σ/d (>= 0)")
        q.set_defaults(func=run)


def check_args(args) -> None:
    """Everything a run needs from the user, checked before any work starts."""
    check_writable_dir(args.out)
    for spec in args.optimizers or []:  # a p cycle stated per run (cycles=k) is resolved by each run's length
        check_spec(spec, "--optimizers", total_steps=getattr(args, "steps", None) or CHECK_STEPS)


def run(args) -> int:
    from ._common import set_threads

    check_args(args)
    set_threads(args.threads)
    mod = importlib.import_module(f"nsf_lab.spectral.{args.instrument}")
    if args.replot:
        import json

        path = os.path.join(args.out, f"{args.instrument}.json")
        try:
            with open(path) as fh:
                data = json.load(fh)
        except (OSError, ValueError) as e:
            raise UserError(f"--replot: cannot read {path} ({type(e).__name__}: {e})") from None
        if hasattr(mod, "reanalyse"):
            data = mod.reanalyse(data)
            from nsf_lab.experiment.util import write_json_atomic

            write_json_atomic(os.path.join(args.out, f"{args.instrument}.json"), data)
        mod.plot(data, args.out)
        print(mod.format_summary(data))
        return 0
    kw = dict(quick=args.quick, out_dir=args.out, progress=not args.no_progress)
    if args.optimizers:
        kw["optimizers"] = args.optimizers
    if args.instrument == "response":
        if args.noise is not None:
            kw["noises"] = args.noise
    else:
        if args.seeds is not None:
            kw["seeds"] = args.seeds
        kw["workers"] = args.workers
        if args.lr_grid is not None:
            kw["lr_grid"] = args.lr_grid
    if getattr(args, "datasets", None):
        kw["datasets"] = args.datasets
    if getattr(args, "steps", None) is not None:
        kw["steps"] = args.steps
    t0 = time.time()
    data = mod.run(**kw)
    print(mod.format_summary(data))
    print(f"[{args.instrument}] wrote {args.out} in {time.time() - t0:.1f}s")
    return 0
