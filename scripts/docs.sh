#!/usr/bin/env bash
# Builds the documentation site into site/ (gitignored) with mkdocs --strict: a broken link or anchor (the
# reports' figure links included), an unresolved cross-reference or an unreadable docstring fails the build.
# Installs mkdocs, mkdocs-material and mkdocstrings[python] (the "docs" extra) with pip when they are missing.
#   bash scripts/docs.sh            build into site/
#   bash scripts/docs.sh serve      preview at http://127.0.0.1:8000
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import mkdocs, material, mkdocstrings, mkdocstrings_handlers.python" 2>/dev/null; then
  "$PY" -m pip install -q "mkdocs>=1.6" "mkdocs-material>=9.5" "mkdocstrings[python]>=0.26"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export NO_MKDOCS_2_WARNING=1  # mkdocs-material's banner about its successor: not about this site
if [ "${1:-}" = serve ]; then
  exec "$PY" -m mkdocs serve
fi
"$PY" -m mkdocs build --strict --clean --site-dir site
echo "ok: documentation built into site/ ($(find site -name '*.html' | wc -l) pages)"
