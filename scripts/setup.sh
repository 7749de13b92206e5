#!/usr/bin/env bash
# Create .venv and install inferl with its test and optional extras, pinned to the versions measured together on
# CPU machines (constraints-cpu.txt keeps pip from pulling a multi-GB CUDA torch). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints-cpu.txt -e '.[dev]' \
    > .venv/pip-install.log 2>&1; then
  grep -v "is ignored: it is neither a file nor a directory" .venv/pip-install.log >&2
  echo "setup failed: pip could not install the environment (log above, also in .venv/pip-install.log)" >&2
  exit 1
fi
