#!/usr/bin/env bash
# Issue 22, native CPU kernels: the step-overhead runs behind docs/performance.md (two runs each, 1 and 2 threads,
# 8 M parameters, and the Fashion-MNIST CNN end to end). Run from the repository root with any sweep paused:
#   bash benchmarks/results/perf22b/run.sh > benchmarks/results/perf22b/log.txt 2>&1
set -euo pipefail
D=benchmarks/results/perf22b
for run in 1 2; do
  for t in 1 2; do
    echo "== run $run, $t thread(s); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    python3 benchmarks/step_overhead.py --threads "$t" --params 8e6 --paths fused auto \
      --only "p=¼ fused" "p=−0.37 fused" default graft --repeats 9 --steps 3 --json "$D/step_8M_t${t}_run${run}.json"
    echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
  done
  echo "== run $run, end to end, 1 thread; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  python3 benchmarks/step_overhead.py --e2e --threads 1 --repeats 11 --steps 5 --json "$D/e2e_cnn_t1_run${run}.json"
  echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
done
