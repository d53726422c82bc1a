#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the quick offline reproduction of the benchmark protocol
# (tuned learning rates, seeds, NSF vs SGD/Adam/AdamW/Padam); the report lands in runs/quick/report.md.
# Re-running resumes: finished runs are never repeated.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
"${PYTHON:-python3}" -m nsf_lab bench --suite quick --out "${1:-runs/quick}" --threads "${NSF_THREADS:-2}" --report
