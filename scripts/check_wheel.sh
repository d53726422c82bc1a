#!/usr/bin/env bash
# Builds the sdist and wheel, checks their metadata with `twine check --strict`, installs the wheel into a fresh
# virtual environment and imports nsf from it (not from this checkout). Run by .ci/run.
#   bash scripts/check_wheel.sh [OUTDIR]     (OUTDIR keeps the built files; default: a temporary folder)
# build and twine come from the calling python when it has them, else from a throwaway venv (PyPI needed).
# The test venv sees the system site-packages so torch is not installed again; the wheel is installed --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
OUT=${1:-$WORK/dist}

TOOLS=$PY
if ! "$PY" -c "import build, twine" 2>/dev/null; then
  "$PY" -m venv --system-site-packages "$WORK/tools"
  "$WORK/tools/bin/python" -m pip install -q build twine "setuptools>=77" >"$WORK/pip.log" 2>&1 \
    || { cat "$WORK/pip.log"; exit 1; }
  TOOLS=$WORK/tools/bin/python
fi

rm -rf "$OUT" && mkdir -p "$OUT"
# --no-isolation: use the installed setuptools (no download); build/ and *.egg-info are gitignored
"$TOOLS" -m build --no-isolation --outdir "$OUT" . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
"$TOOLS" -m twine check --strict "$OUT"/*.whl "$OUT"/*.tar.gz

[[ $(tar tzf "$OUT"/*.tar.gz) == */LICENSE* ]] || { echo "sdist lacks LICENSE" >&2; exit 1; }

"$PY" -m venv --system-site-packages "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --no-deps --no-index "$OUT"/*.whl
cd "$WORK"  # away from the checkout, so nothing is imported from src/
"$WORK/venv/bin/python" - "$WORK/venv" <<'EOF'
import pathlib, sys
import nsf, nsf.optim
venv = pathlib.Path(sys.argv[1]).resolve()
where = pathlib.Path(nsf.__file__).resolve()
assert where.is_relative_to(venv), f"nsf imported from {where}, not from the wheel in {venv}"
assert nsf.NSF is nsf.optim.NSF
print(f"ok: nsf {nsf.__version__} from the wheel ({where.parent})")
EOF
"$WORK/venv/bin/nsf" --help >/dev/null
echo "ok: wheel and sdist built, twine check passed, console script runs"
