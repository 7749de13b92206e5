"""SIGTERM and SIGINT stop `inferl fit` at a step boundary with a resumable checkpoint and a non-zero exit (143,
130), and resuming from it is exact: the same prompts and the same losses as an uninterrupted run, and the same
final weights. Real subprocesses; the signal is sent by the process to itself in the middle of a training step
(tests/app/run_probe.py), so that the step it lands in is known."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cli import small_demo

REPO = Path(__file__).resolve().parents[2]
STEPS = 4


def fit(config: Path, *args: str, probe: Path, signal_at: int = 0, signal_name: str = "SIGTERM",
        timeout: float = 300) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])  # for run_probe
    env = {**os.environ, "PYTHONPATH": path}
    probe_callback = json.dumps({"class_path": "run_probe.StepProbe", "init_args": {
        "path": str(probe), "signal_at": signal_at, "signal_name": signal_name}})
    return subprocess.run([sys.executable, "-m", "app", "fit", "--config", str(config), "--trainer.max_steps",
                           str(STEPS), "--checkpoint.every_n_train_steps", "100",
                           f"--trainer.callbacks+={probe_callback}", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def steps(probe: Path) -> list[dict]:
    return [json.loads(line) for line in probe.read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[list[dict], dict]:
    """An uninterrupted run: its steps and final weights."""
    folder = tmp_path_factory.mktemp("straight")
    result = fit(small_demo(folder), probe=folder / "steps.jsonl")
    assert result.returncode == 0, result.stderr[-3000:]
    return steps(folder / "steps.jsonl"), torch.load(folder / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("signal_name, exit_code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_saves_at_the_step_boundary_and_resume_is_exact(tmp_path, straight, signal_name, exit_code):
    config, probe = small_demo(tmp_path), tmp_path / "steps.jsonl"
    stopped = fit(config, probe=probe, signal_at=2, signal_name=signal_name)
    assert stopped.returncode == exit_code, stopped.stderr[-3000:]
    last_line = stopped.stderr.strip().splitlines()[-1]
    assert last_line == (f"inferl: stopped by {signal_name} after step 2: saved {tmp_path / 'ckpt' / 'last.ckpt'}; "
                         "continue with --ckpt_path last")
    assert "Traceback" not in stopped.stderr
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 2  # the step it was in
    assert not (tmp_path / "ckpt" / "inferl.lock").exists()

    resumed = fit(config, "--ckpt_path", "last", probe=probe)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight_steps, straight_weights = straight
    assert steps(probe) == straight_steps  # steps 1-2, then 3-4 after the resume: same prompts, same losses
    weights = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    assert weights.keys() == straight_weights.keys()
    assert all(torch.equal(weights[name], straight_weights[name]) for name in weights)
