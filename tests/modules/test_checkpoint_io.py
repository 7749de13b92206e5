"""Checkpoints are written whole or not at all, never with non-finite values, with ordinary permissions, and read
back with one clear error when they cannot be used."""

from __future__ import annotations

import os
import stat
import threading

import pytest
import torch

from modules.checkpoint_io import AtomicCheckpointIO
from modules.errors import DivergenceError
from modules.run_folder import RunFolderError


def test_failed_save_keeps_previous_checkpoint_and_leaves_no_partial(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    with pytest.raises(TypeError):
        io.save_checkpoint({"step": 2, "lock": threading.Lock()}, path)  # cannot be pickled: fails mid-save
    assert torch.load(path, weights_only=True)["step"] == 1
    assert os.listdir(path.parent) == ["last.ckpt"]
    io.save_checkpoint({"step": 3}, path)
    assert io.load_checkpoint(path)["step"] == 3


def test_checkpoints_get_the_permissions_of_an_ordinary_file(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)
    ordinary = tmp_path / "ordinary"
    ordinary.write_bytes(b"")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(ordinary.stat().st_mode)  # not mkstemp's 0600


@pytest.mark.parametrize("where", ["state_dict", "optimizer_states"])
def test_a_non_finite_checkpoint_is_never_written(tmp_path, where):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 1}, path)
    inf_moment = [{"state": {0: {"exp_avg": torch.tensor([float("inf")])}}}]
    bad = {"state_dict": {"w": torch.tensor([1.0, float("nan")])}} if where == "state_dict" else {
        "state_dict": {"w": torch.ones(2)}, "optimizer_states": inf_moment}
    with pytest.raises(DivergenceError, match="non-finite values in"):
        io.save_checkpoint(bad, path)
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_resuming_from_a_non_finite_checkpoint_is_refused(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"policy.w": torch.tensor([float("nan")])}}, path)  # written before the guard existed
    with pytest.raises(RunFolderError, match=r"last.ckpt cannot be used: it holds non-finite values \(policy.w\)"):
        AtomicCheckpointIO().load_checkpoint(path)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbled"])
def test_an_unreadable_checkpoint_names_itself_and_the_good_one_beside_it(tmp_path, damage):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, tmp_path / "step000002.ckpt")
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, tmp_path / "last.ckpt")
    last = tmp_path / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes({"empty": b"", "truncated": data[: len(data) // 2],
                      "garbled": data[:200] + bytes(len(data) - 400) + data[-200:]}[damage])
    with pytest.raises(RunFolderError) as error:
        io.load_checkpoint(last)
    message = str(error.value)
    assert f"checkpoint {last} cannot be used" in message
    assert f"the newest readable checkpoint beside it is {tmp_path / 'step000002.ckpt'}" in message
    assert "\n" not in message
