#!/usr/bin/env bash
# The committed archives must stay readable: run after touching the registry, spec text, bench, report or suites.
# Usage: bash scripts/check_results.sh [REPO_DIR]  -- regenerates each evidence report from its archive with
# REPO_DIR's code and diffs it against the committed one (figure link lines ignored): Evidence v3 → docs/RESULTS.md,
# v2 → docs/RESULTS_v2.md. Prints IDENTICAL per report on success.
set -euo pipefail
REPO=$(cd "${1:-.}" && pwd)
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
cd "$REPO"
status=0
#       archive                  run dir    plot prefix  results file
for row in "evidence3_rundir.tar.gz evidence3 evidence3_ RESULTS.md" "evidence_rundir.tar.gz evidence evidence_ RESULTS_v2.md"; do
  read -r archive dir prefix md <<<"$row"
  tar xzf "benchmarks/results/$archive" -C "$T"
  PYTHONPATH="$REPO/src" python3 -m nsf_lab report "$T/$dir" --results-md "$T/$md" --plots-dir "$T/plots" \
    --plot-prefix "$prefix" --notes "benchmarks/results/${prefix}notes.md" >"$T/log" 2>&1 || { cat "$T/log"; exit 1; }
  if diff <(grep -v '^!\[' "$T/$md") <(grep -v '^!\[' "docs/$md"); then echo "$md IDENTICAL"; else status=1; fi
done
exit $status
