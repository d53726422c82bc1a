#!/usr/bin/env bash
# The committed archive must stay readable: run after touching the registry, spec text, bench, report or suites.
# Usage: bash scripts/check_results.sh [REPO_DIR]  -- regenerates the evidence report from the archive with REPO_DIR's code
# and diffs it against REPO_DIR/docs/RESULTS.md (figure link lines ignored). Prints IDENTICAL on success.
set -euo pipefail
REPO=$(cd "${1:-.}" && pwd)
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
tar xzf "$REPO/benchmarks/results/evidence_rundir.tar.gz" -C "$T"
cd "$REPO"
PYTHONPATH="$REPO/src" python3 -m nsf_lab report "$T/evidence" --results-md "$T/RESULTS.md" --plots-dir "$T/plots" \
  --plot-prefix evidence_ --notes benchmarks/results/evidence_notes.md >"$T/log" 2>&1 || { cat "$T/log"; exit 1; }
diff <(grep -v '^!\[' "$T/RESULTS.md") <(grep -v '^!\[' docs/RESULTS.md) && echo IDENTICAL
