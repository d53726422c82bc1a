"""Time one re-plan of a finished sweep (the bench driver re-plans after every finished run).

    tar xzf benchmarks/results/evidence_rundir.tar.gz -C runs
    python benchmarks/plan_time.py runs/evidence        # median of 10 re-plans, seconds
"""
import statistics
import sys
import time

from nsf_lab.bench.protocol import Planner
from nsf_lab.bench.suites import suite_from_dict
from nsf_lab.experiment.sweep import Sweep

sweep = Sweep.open(sys.argv[1] if len(sys.argv) > 1 else "runs/evidence")
planner = Planner(suite_from_dict(sweep.suite), sweep.store)
planner.plan()  # the first plan fills the memo
times = []
for _ in range(10):
    start = time.perf_counter()
    planner.plan()
    times.append(time.perf_counter() - start)
print(f"{len(sweep.store.records())} records: median re-plan {statistics.median(times):.3f} s (of 10)")
