#!/usr/bin/env bash
# Set up the environment (CPU) and run the default test suite: `bash scripts/test.sh [pytest args]`.
# `bash scripts/test.sh -m slow` runs the slow tests; `-m "slow or not slow"` runs everything but GPU-only ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
