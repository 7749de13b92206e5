"""The run guard (callbacks/run_guard.py) on a real tiny fit: a diverging run stops before any non-finite
checkpoint exists, naming the step and the last good checkpoint; collapse is warned about. Signals are tested
through `inferl fit` in tests/app/test_signals.py."""

from __future__ import annotations

import glob

import pytest
import torch
from fit_helpers import tiny_data, tiny_module, tiny_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks.run_guard import RunGuard, collapse_start
from modules.checkpoint_io import AtomicCheckpointIO
from modules.errors import DivergenceError
from modules.finite import checkpoint_tensors, nonfinite_names


def saving_trainer(tmp_path, max_steps: int, guard: RunGuard):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, save_last=True,
                                 filename="step{step:06d}", auto_insert_metric_name=False)
    return tiny_trainer(max_steps, callbacks=[guard, checkpoint], enable_checkpointing=True,
                        plugins=[AtomicCheckpointIO()])


def test_divergence_stops_the_run_before_it_is_saved(tmp_path):
    module = tiny_module(optimizer=lambda params: torch.optim.AdamW(params, lr=1e30))
    with pytest.raises(DivergenceError) as error:
        saving_trainer(tmp_path, 6, RunGuard()).fit(module, datamodule=tiny_data())
    message = str(error.value)
    assert "training diverged at step " in message and "non-finite" in message and "weights (policy." in message
    step = int(message.split("at step ")[1].split(":")[0])
    saved = sorted(glob.glob(str(tmp_path / "*.ckpt")))
    assert len(saved) == step  # step000001 ... step{step-1}, and last
    for path in saved:  # none of them is the diverged step's, none holds a NaN
        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint["global_step"] < step
        assert nonfinite_names(checkpoint_tensors(checkpoint)) == []
    if step > 1:
        assert f"the last good checkpoint is {tmp_path / 'last.ckpt'} (step {step - 1})" in message


def test_a_finite_run_is_left_alone(tmp_path):
    saving_trainer(tmp_path, 2, RunGuard()).fit(tiny_module(), datamodule=tiny_data())
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 2


def test_collapse_start_counts_consecutive_zero_reward_zero_entropy_steps():
    start = None
    for step, (entropy, reward) in enumerate([(0.0, 0.0), (0.001, 0.0), (0.5, 0.0), (0.0, 0.0), (0.0, 0.0)], 1):
        start = collapse_start(start, step, entropy, reward, max_entropy=0.01)
        assert start == {1: 1, 2: 1, 3: None, 4: 4, 5: 4}[step]
    assert collapse_start(4, 6, 0.0, 0.25, max_entropy=0.01) is None  # some reward: still learning


def test_guard_settings_are_checked():
    with pytest.raises(ValueError, match=r"guard\.collapse_steps"):
        RunGuard(collapse_steps=-1)
