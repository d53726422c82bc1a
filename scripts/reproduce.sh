#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the quick offline reproduction: the evidence protocol (docs/evidence.md) in
# miniature. SGD-M, Adam and NSF default (the library default, its p cycle stated per run) with learning rates
# tuned on validation splits over 2 tuning seeds, NSF at Adam's tuned LR (tied) and at fixed LRs (one-shot),
# shorter budgets, paired CIs and the verdict rules, on 2 small tasks with 8 seeds: about 3 minutes on 2 cores.
# At that size it decides nothing (docs/RESULTS.md holds the verdicts). The report lands in runs/quick/report.md.
# Re-running resumes: finished runs are never repeated. NSF_WORKERS / NSF_THREADS override the parallelism.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
CORES=$("$PY" -c "import os; f = getattr(os, 'sched_getaffinity', None); print(len(f(0)) if f else os.cpu_count())")
WORKERS=${NSF_WORKERS:-$(( CORES >= 2 ? 2 : 1 ))}
"$PY" -m nsf_lab bench --suite quick --out "${1:-runs/quick}" --workers "$WORKERS" --threads "${NSF_THREADS:-1}" \
  --report
