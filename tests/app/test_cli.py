"""The `inferl` command line: help from docstrings, config printing, and one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def inferl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_fit_help_shows_docstrings():
    result = inferl("fit", "--help")
    assert result.returncode == 0, result.stderr
    assert "completions sampled per prompt in training" in result.stdout  # InferlModule's group_size docstring
    assert "prompts per training step per device" in result.stdout  # PromptDataModule's batch_size docstring
    assert "--ckpt_path" in result.stdout


def test_print_config_resolves_demo():
    result = inferl("fit", "--config", "configs/demo.yaml", "--print_config")
    assert result.returncode == 0, result.stderr
    assert "class_path: modules.TinyPolicy" in result.stdout
    assert "class_path: callbacks.MeanReward" in result.stdout


@pytest.mark.parametrize("args, says", [
    (["--model.grop_size", "1"], "unrecognized arguments: --model.grop_size"),
    (["--model.policy.init_args.hiden_size", "3"], "'hiden_size' is not accepted"),
    (["--data.train.init_args.path", "no/such/file.jsonl"], "no/such/file.jsonl: no such file"),
    (["--model.group_size", "1"], "model.group_size must be >= 2"),
])
def test_bad_input_is_one_explanation(args, says):
    result = inferl("fit", "--config", "configs/demo.yaml", *args)
    assert result.returncode == 2
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 5, result.stderr
