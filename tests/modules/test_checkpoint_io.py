"""Checkpoints are written whole or not at all."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from modules.checkpoint_io import AtomicCheckpointIO


def test_failed_save_keeps_previous_checkpoint_and_leaves_no_partial(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    with pytest.raises(Exception):
        io.save_checkpoint({"step": 2, "lock": threading.Lock()}, path)  # cannot be pickled: fails mid-save
    assert torch.load(path, weights_only=True)["step"] == 1
    assert os.listdir(path.parent) == ["last.ckpt"]
    io.save_checkpoint({"step": 3}, path)
    assert io.load_checkpoint(path)["step"] == 3
