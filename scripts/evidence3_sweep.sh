#!/usr/bin/env bash
# Evidence v3's long sweep across sessions (docs/evidence_v3.md). Usage:
#   bash scripts/evidence3_sweep.sh start COMMIT [--until tuned]   # worktree at COMMIT, records unpacked if absent, sweep in the background
#   bash scripts/evidence3_sweep.sh pause | cont                   # stop / continue the sweep's processes (e.g. while timing)
#   bash scripts/evidence3_sweep.sh status                         # runs finished, whether it runs
#   bash scripts/evidence3_sweep.sh pack                           # pause, then compress the records into benchmarks/results/
# RUNS (default /work/runs) holds the run directory (RUNS/evidence3) and the log; WT (default /work/wt/evidence3-COMMIT)
# the worktree, so that edits to this checkout never change the code under a running sweep. Every start is logged in
# RUNS/evidence3/starts.log (time, commit, arguments; by nsf bench itself, by this script for older commits), which
# travels with the records: runs finished after a start (their finished_at) ran that commit's code.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-/work/runs}
ARCHIVE=benchmarks/results/evidence3_rundir.tar.gz  # was evidence3_rundir_partial.tar.gz while the sweep ran
group() { ps -eo pgid=,args= | awk '/nsf_lab bench --suite evidence3 /&&!/awk/{print $1; exit}'; }
case "${1:-}" in
  start)
    [ -n "${2:-}" ] || { echo "start needs a commit, e.g.: $0 start 72e9041 --until tuned" >&2; exit 2; }
    commit=$(git rev-parse --short "$2^{commit}" 2>/dev/null) || { echo "not a commit: $2" >&2; exit 2; }
    shift 2
    wt=${WT:-/work/wt/evidence3-$commit}
    [ -z "$(group)" ] || { echo "a sweep is already running (process group $(group))" >&2; exit 2; }
    [ -d "$wt" ] || git worktree add --detach "$wt" "$commit" >/dev/null
    mkdir -p "$RUNS"
    [ -d "$RUNS/evidence3" ] || tar xzf "$ARCHIVE" -C "$RUNS"
    grep -q log_start "$wt/src/nsf_lab/bench/cli.py" ||  # nsf bench logs its own starts since 2026-12-02; older code does not
      echo "$(date -u +%FT%TZ) start $(git rev-parse "$commit") $*" >>"$RUNS/evidence3/starts.log"  # which code ran when
    (cd "$wt" && setsid nohup env PYTHONPATH=src python3 -m nsf_lab bench --suite evidence3 --out "$RUNS/evidence3" \
      --workers 2 --threads 1 "$@" >>"$RUNS/evidence3.log" 2>&1 </dev/null &)
    echo "sweep started from $wt ($commit); log: $RUNS/evidence3.log" ;;
  pause|cont)
    g=$(group); [ -n "$g" ] || { echo "no sweep is running" >&2; exit 2; }
    kill -"$( [ "$1" = pause ] && echo STOP || echo CONT )" -- -"$g" ;;
  status)
    echo "$(wc -l <"$RUNS/evidence3/runs.jsonl") runs finished; $( [ -n "$(group)" ] && echo running || echo 'not running')" ;;
  pack)
    g=$(group); [ -z "$g" ] || kill -STOP -- -"$g"
    tar czf "$ARCHIVE" -C "$RUNS" evidence3
    echo "packed $(wc -l <"$RUNS/evidence3/runs.jsonl") runs into $ARCHIVE$( [ -n "$g" ] && echo ' (sweep paused: cont to go on)')" ;;
  *) echo "usage: $0 start COMMIT [--until tuned] | pause | cont | status | pack" >&2; exit 2 ;;
esac
