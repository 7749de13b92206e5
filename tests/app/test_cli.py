"""The `inferl` command line: help from docstrings, config printing, and one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]


def inferl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_fit_help_shows_docstrings():
    result = inferl("fit", "--help")
    assert result.returncode == 0, result.stderr
    assert "completions sampled per prompt in training" in result.stdout  # GroupSettings.size's docstring
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
    (["--model.group.size", "1"], "model.group.size must be >= 2"),
    (["--model.update.minibatches", "0"], "model.update.minibatches must be >= 1, got 0"),
])
def test_bad_input_is_one_explanation(args, says):
    result = inferl("fit", "--config", "configs/demo.yaml", *args)
    assert result.returncode == 2
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 5, result.stderr


def small_demo(tmp_path) -> Path:
    """configs/demo.yaml with a 5-step warm start and 4 validation prompts, writing under tmp_path."""
    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"] == "callbacks.SupervisedWarmStart":
            callback["init_args"]["steps"] = 5
    config["trainer"].update(val_check_interval=2, enable_progress_bar=False)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path)
    config["checkpoint"].update(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=1)
    config["data"]["val"]["init_args"]["num_records"] = 4
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_fit_resume_and_validate_from_the_command_line(tmp_path):
    config = str(small_demo(tmp_path))
    first = inferl("fit", "--config", config, "--trainer.max_steps", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    resumed = inferl("fit", "--config", config, "--trainer.max_steps", "3", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 3
    checked = inferl("validate", "--config", config, "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt"),
                     "--model.evaluation.samples", "16", "--model.evaluation.ks", "[1, 16]")
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert "val/pass@1" in checked.stdout
    assert "val/pass@16" in checked.stdout  # the command line's evaluation settings win over the checkpoint's
