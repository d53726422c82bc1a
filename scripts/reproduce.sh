#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the quick offline reproduction.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec nsf demo "$@"
