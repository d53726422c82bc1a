"""``nsf bench`` and ``nsf report`` subcommands.

Every user input is checked before anything is written; a refused command leaves no file behind.
"""
from __future__ import annotations

import sys
from pathlib import Path

from nsf_lab.cli import UserError, check_spec, check_writable_dir, check_writable_file, positive_int


def resolve_device(name: str) -> str:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available on this machine (use --device cpu or auto)")
    return "cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name)


def make_engine(args, device: str):
    from nsf_lab.experiment.sweep import InlineEngine, PoolEngine, RayEngine
    if args.ray is not None:
        if args.workers > 1:
            raise UserError("--ray and --workers exclude each other (Ray runs as many runs as it has CPUs for)")
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError("--ray needs Ray, which is not installed: pip install nsf[ray]") from None
        return RayEngine(None if args.ray == "local" else args.ray, args.threads, device, args.data_root)
    if args.workers > 1:
        return PoolEngine(args.workers, args.threads, device, args.data_root)
    return InlineEngine(args.threads, device, args.data_root)


def _bench(args) -> int:
    import torch

    from nsf_lab.experiment.sweep import Sweep, drive

    from .protocol import Planner
    from .suites import get_suite, suite_from_dict, suite_to_dict
    from nsf_lab.experiment.tasks import get_task

    # -- everything checked before anything is written ------------------------------------------------------
    check_writable_dir(args.out)
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise UserError(f"--data-root {args.data_root}: no such directory")
    suite = get_suite(args.suite)
    explicit = []
    if args.tasks:
        try:
            suite.tasks = [get_task(t.strip()).name for t in args.tasks.split(",")]
        except ValueError as e:
            raise UserError(f"--tasks: {e}") from None
        explicit.append("tasks")
    if args.seeds is not None:
        suite.seeds = list(range(args.seeds))
        explicit.append("seeds")
    for spec in args.opt or []:
        check_spec(spec)  # a p cycle stated per run (cycles=k) is resolved by each run's own length
    if args.opt:
        suite.extra = [(s, s) for s in args.opt]
        explicit.append("extra")
    device = resolve_device(args.device)
    old = Sweep.existing_suite(args.out)
    if old is not None:
        suite_from_dict(old)  # a damaged suite.json is refused here, before anything is written
    engine = make_engine(args, device)

    # -- the sweep --------------------------------------------------------------------------------------------
    torch.set_num_threads(args.threads)
    sw, grown = Sweep.create(args.out, suite_to_dict(suite), accumulate=tuple(explicit))
    sw.log_start(args.argv)
    suite = suite_from_dict(sw.suite)
    for line in grown:
        print(f"{args.out}: suite {line}", file=sys.stderr)
    n0 = len(sw.store.records())
    if n0:
        print(f"resuming {args.out}: {n0} finished runs kept")
    planner = Planner(suite, sw.store, retry_failed=True, data_root=args.data_root, announce=True)
    bar = Progress(suite.name, engine.slots)
    try:
        stats = drive(sw, lambda: planner.plan(until=args.until), engine, progress=bar)
    finally:
        bar.close()
        sw.write_decisions(planner.decisions())
    print(f"{suite.name}: {stats['done']} runs done now ({stats['failed']} failed), {len(sw.store.records())} in "
          f"{args.out}/runs.jsonl, {bar.elapsed():.0f} s")
    if args.report:
        from .report import write_report
        print(f"report: {write_report(args.out)}")
    return 0


class Progress:
    """tqdm bar: runs done / runs known so far, runs in flight, ETA from the finished runs' rate."""

    def __init__(self, name: str, slots: int):
        import time

        from tqdm import tqdm
        self._t0 = time.time()
        self.bar = tqdm(total=0, desc=name, unit="run", dynamic_ncols=True, file=sys.stderr)
        self.slots = slots

    def __call__(self, done: int, flight: int, queued: int) -> None:
        self.bar.total = done + flight + queued
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(f"in flight {flight}/{self.slots}, waiting {queued}")

    def elapsed(self) -> float:
        import time
        return time.time() - self._t0

    def close(self) -> None:
        self.bar.close()


def _report(args) -> int:
    from nsf_lab.experiment.sweep import Sweep

    from .report import write_report
    if args.notes and not Path(args.notes).is_file():
        raise UserError(f"--notes {args.notes}: no such file")
    Sweep.open(args.dir)  # no sweep there: refused before anything is written
    check_writable_dir(args.dir, "DIR")
    if args.results_md:
        check_writable_file(args.results_md, "--results-md")
    if args.plots_dir:
        check_writable_dir(args.plots_dir, "--plots-dir")
    if "/" in args.plot_prefix or "\\" in args.plot_prefix:
        raise UserError(f"--plot-prefix {args.plot_prefix!r}: a file-name prefix, without a path separator")
    path = write_report(Path(args.dir), results_md=args.results_md, plots_dir=args.plots_dir,
                        plot_prefix=args.plot_prefix, notes=args.notes)
    print(f"report: {path}")
    return 0


def register(subparsers) -> None:
    from .suites import SUITES
    p = subparsers.add_parser("bench", help="run a benchmark suite (resumable) into DIR",
                              description="Run a benchmark suite. Re-running on the same --out resumes: finished "
                                          "runs (DIR/runs.jsonl) are never repeated; --tasks, --seeds and --opt "
                                          "given on a resume add to the recorded suite.")
    p.add_argument("--suite", default="quick", choices=sorted(SUITES))
    p.add_argument("--out", required=True, help="run directory (created; resumed if it exists)")
    p.add_argument("--opt", action="append", metavar="SPEC",
                   help="extra optimizer spec, e.g. 'nsf-fixed:p=-0.25' or 'nsf:p=cyclic(0,0.5,cycles=2)' (a cycle "
                        "stated per run spans each run, budgets included) (repeatable)")
    p.add_argument("--tasks", help="comma-separated task names (default: the suite's)")
    p.add_argument("--seeds", type=positive_int, help="number of seeds (default: the suite's)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="runs in parallel on this machine, each in its own process (default 1: in this process)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run through Ray: a local Ray without ADDRESS, 'auto' for this machine's cluster "
                        "(pip install nsf[ray])")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--data-root", help="folder with user-supplied datasets (Fashion-MNIST IDX, CIFAR pickles)")
    p.add_argument("--report", action="store_true", help="write DIR/report.md when done")
    p.add_argument("--until", choices=["tuned"],
                   help="stop once every choice is made (search, LR tuning, references: validation runs only); "
                        "resuming without it runs the rest")
    p.set_defaults(func=_bench)

    r = subparsers.add_parser("report", help="write DIR/report.md and plots from a bench run directory")
    r.add_argument("dir")
    r.add_argument("--results-md", help="also write this markdown file (e.g. docs/RESULTS.md)")
    r.add_argument("--plots-dir", help="where --results-md's plots go (default: results_plots/ beside it)")
    r.add_argument("--plot-prefix", default="", help="file-name prefix of the copied plots")
    r.add_argument("--notes", help="markdown file inserted after the header of --results-md (discussion)")
    r.set_defaults(func=_report)
