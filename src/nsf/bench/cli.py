"""``nsf bench`` and ``nsf report`` subcommands."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _bench(args) -> int:
    import torch
    from tqdm import tqdm

    from .protocol import Planner, suite_from_dict, suite_to_dict
    from .runner import RunStore, resolve_device, run_and_store, run_id
    from .suites import get_suite
    from nsf.experiment.tasks import get_task

    from nsf.registry import parse_spec
    for spec in args.opt or []:  # validate extra specs first: a clear message, nothing written
        try:
            parse_spec(spec)
        except ValueError as e:
            print(f"error: --opt {spec!r}: {e}", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    out = Path(args.out)
    store = RunStore(out)
    sfile = out / "suite.json"
    suite = get_suite(args.suite)
    if args.tasks:
        suite.tasks = [get_task(t).name for t in args.tasks.split(",")]
    if args.seeds is not None:
        suite.seeds = list(range(args.seeds))
    suite.extra = [(s, s) for s in (args.opt or [])]
    if sfile.exists():
        old = suite_from_dict(json.loads(sfile.read_text()))
        if old.name != suite.name:
            print(f"error: {out} holds suite {old.name!r}; use another --out", file=sys.stderr)
            return 2
        if not (args.tasks or args.seeds is not None or args.opt):
            suite = old  # plain resume: keep the recorded suite options
    tmp = sfile.with_suffix(".tmp")
    tmp.write_text(json.dumps(suite_to_dict(suite), indent=1))
    os.replace(tmp, sfile)

    planner = Planner(suite, store)
    n0 = len(store.records())
    if n0:
        print(f"resuming {out}: {n0} finished runs kept")
    t_start = time.time()
    done = 0
    while True:
        todo = planner.plan()
        if not todo:
            break
        order = {t: i for i, t in enumerate(suite.search.tasks if suite.search else [])}
        order.update({t: len(order) + i for i, t in enumerate(suite.tasks)})
        # search first, then task by task in the suite's order (cheap tasks first), tuning before seeds
        todo.sort(key=lambda cm: (cm[1].get("stage") != "search", order.get(cm[0]["task"], 99),
                                  cm[1].get("stage") != "tune"))
        bar = tqdm(todo, desc=f"{suite.name}", unit="run", dynamic_ncols=True, file=sys.stderr)
        for cfg, meta in bar:
            bar.set_postfix_str(f"{meta.get('stage')} {cfg['task']} {meta.get('label', '')} lr={cfg['lr']:.3g}"
                                f" seed={cfg['seed']} b={cfg['budget']:g} done={done}")
            if run_id(cfg) in store:
                continue
            run_and_store(store, cfg, meta, device=str(device), data_root=args.data_root)
            done += 1
        bar.close()
    wall = time.time() - t_start
    print(f"{suite.name}: {done} runs done now, {len(store.records())} in {out}/runs.jsonl, {wall:.0f} s")
    if args.report:
        from .report import write_report
        path = write_report(out)
        print(f"report: {path}")
    return 0


def _report(args) -> int:
    from .report import write_report
    path = write_report(Path(args.dir), results_md=args.results_md, plots_dir=args.plots_dir,
                        plot_prefix=args.plot_prefix, notes=args.notes)
    print(f"report: {path}")
    return 0


def register(subparsers) -> None:
    from .suites import SUITES
    p = subparsers.add_parser("bench", help="run a benchmark suite (resumable) into DIR",
                              description="Run a benchmark suite. Re-running on the same --out resumes: finished "
                                          "runs (DIR/runs.jsonl) are never repeated.")
    p.add_argument("--suite", default="quick", choices=sorted(SUITES))
    p.add_argument("--out", required=True, help="run directory (created; resumed if it exists)")
    p.add_argument("--opt", action="append", metavar="SPEC",
                   help="extra optimizer spec, e.g. 'nsf-fixed:p=-0.25' (repeatable)")
    p.add_argument("--tasks", help="comma-separated task names (default: the suite's)")
    p.add_argument("--seeds", type=int, help="number of seeds (default: the suite's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--data-root", help="folder with user-supplied datasets (Fashion-MNIST IDX, CIFAR pickles)")
    p.add_argument("--report", action="store_true", help="write DIR/report.md when done")
    p.set_defaults(func=_bench)

    r = subparsers.add_parser("report", help="write DIR/report.md and plots from a bench run directory")
    r.add_argument("dir")
    r.add_argument("--results-md", help="also write this markdown file (e.g. docs/RESULTS.md)")
    r.add_argument("--plots-dir", help="where --results-md's plots go (default: results_plots/ beside it)")
    r.add_argument("--plot-prefix", default="", help="file-name prefix of the copied plots")
    r.add_argument("--notes", help="markdown file inserted after the header of --results-md (discussion)")
    r.set_defaults(func=_report)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nsf.bench")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
