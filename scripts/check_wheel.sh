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

# PEP 561 markers of both packages, and the metadata a package index shows (paper link, Python versions)
"$PY" - "$OUT"/*.whl <<'EOF'
import email, sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
names = set(wheel.namelist())
missing = [f for f in ("nsf/py.typed", "nsf_lab/py.typed", "nsf/optim/_native.c") if f not in names]
assert not missing, f"the wheel lacks {missing}"
meta = email.message_from_bytes(wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))))
urls = meta.get_all("Project-URL") or []
assert any("arxiv.org/abs/2509.04713" in u for u in urls), f"no link to the paper in {urls}"
versions = [c.rsplit(" ", 1)[1] for c in meta.get_all("Classifier")
            if c.startswith("Programming Language :: Python :: 3.")]
assert versions, "no Python-version classifiers"
print(f"ok: the wheel has py.typed in nsf and nsf_lab, the native kernels' source, {len(urls)} project URLs, "
      f"Python {', '.join(versions)}")
EOF

# 1. The library alone: a venv holding nothing but torch (the version the calling python has) and the wheel.
TORCH=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
"$PY" -m venv "$WORK/lib"
"$WORK/lib/bin/python" -m pip install -q "torch==$TORCH" >"$WORK/pip-torch.log" 2>&1 || { cat "$WORK/pip-torch.log"; exit 1; }
"$WORK/lib/bin/python" -m pip install -q --no-deps --no-index "$OUT"/*.whl
cd "$WORK"  # away from the checkout, so nothing is imported from src/
"$WORK/lib/bin/python" - "$WORK/lib" <<'EOF'
import importlib.util, pathlib, sys
import torch
import nsf, nsf.optim
venv = pathlib.Path(sys.argv[1]).resolve()
where = pathlib.Path(nsf.__file__).resolve()
assert where.is_relative_to(venv), f"nsf imported from {where}, not from the wheel in {venv}"
for lab_only in ("numpy", "matplotlib", "tqdm"):
    assert importlib.util.find_spec(lab_only) is None, f"{lab_only} is installed: not a torch-only venv"
w = torch.nn.Parameter(torch.ones(3))
for spec in ("nsf", "rmsprop", "torch.optim:RAdam"):
    opt = nsf.create_optimizer(spec, [w], lr=1e-2)
    w.grad = torch.ones(3)
    opt.step()
assert bool((w < 1).all()), "the steps did not move the parameters"
from nsf.optim import _native
if _native.library() is not None:  # where a C compiler works: built from the wheel's source, and taken
    assert nsf.optim._fused.native_takes([w], nsf.optim.StepOptions(p=0.25)), "the native kernels are not taken"
print(f"ok: nsf {nsf.__version__} from the wheel with torch alone ({where.parent}); nsf, rmsprop, torch.optim:RAdam step;"
      f" native CPU kernels {'built' if _native.library() else 'not built (no C compiler): compiled kernels'}")
EOF
set +e
"$WORK/lib/bin/nsf" --help >"$WORK/nsf.out" 2>"$WORK/nsf.err"; rc=$?
set -e
[ "$rc" = 2 ] && [ "$(wc -l <"$WORK/nsf.err")" = 1 ] && grep -q 'nsf\[lab\]' "$WORK/nsf.err" \
  || { echo "without the lab, 'nsf' should say in one line how to add it (rc $rc):" >&2; cat "$WORK/nsf.err" >&2; exit 1; }
echo "ok: without the lab, 'nsf' says: $(cat "$WORK/nsf.err")"

# 2. With the lab: a venv that sees the calling python's packages (numpy, matplotlib, tqdm) and the wheel.
"$PY" -m venv --system-site-packages "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --no-deps --no-index "$OUT"/*.whl
"$WORK/venv/bin/python" -c "import nsf_lab.bench, nsf_lab.spectral, nsf_lab.experiment.train"
"$WORK/venv/bin/nsf" --help >/dev/null
echo "ok: wheel and sdist built, twine check passed, library alone and with the lab"
