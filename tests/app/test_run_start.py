"""What `inferl fit` checks before it trains or writes anything: a checkpoint folder in use by another run, holding
another run's checkpoints, unwritable, or with an unreadable last.ckpt, and a config without an objective, each
fail at once with one line and no empty log folder; unfinished saves are cleaned up; a diverging run exits 1 with one
line and no non-finite checkpoint (the issue's probe)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_cli import REPO, inferl, small_demo

from app.cli import main
from modules.finite import checkpoint_tensors, nonfinite_names
from modules.run_folder import RunLock


def fails_at_start(capsys, folder: Path, says: str, *args: str) -> None:
    """`inferl fit *args` (in this process: the checks come before any training) exits 2 with one error line saying
    `says` after Lightning's start-up notes, no traceback, and no log folder made."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--trainer.max_steps", "1"])  # were a check missing, a short run would fail the test
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2, stderr[-3000:]
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("inferl: error: ") and says in last_line, stderr[-3000:]
    assert "Traceback" not in stderr
    assert not list(folder.glob("demo/version_*")), "the logger made a version folder before the check"


@pytest.fixture(autouse=True)
def command_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["inferl"])
    monkeypatch.chdir(REPO)


def test_a_second_run_in_a_locked_folder_fails_naming_the_first(tmp_path, capsys):
    lock = RunLock(tmp_path / "ckpt").acquire()  # another run (here: of this process) holds the folder
    try:
        fails_at_start(capsys, tmp_path, f"another run is using checkpoint.dirpath {tmp_path / 'ckpt'}: pid "
                       f"{os.getpid()} on host {socket.gethostname()}", "--config", str(small_demo(tmp_path)))
    finally:
        lock.release()


def test_a_fresh_run_into_another_runs_checkpoints_is_refused(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    torch.save({"global_step": 3}, tmp_path / "ckpt" / "last.ckpt")
    fails_at_start(capsys, tmp_path, "already holds checkpoints of another run (last.ckpt); continue that run with "
                   "--ckpt_path last", "--config", str(small_demo(tmp_path)))


def test_ckpt_path_last_never_picks_between_runs(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    for name in ("last.ckpt", "last-v1.ckpt"):
        torch.save({"global_step": 3}, tmp_path / "ckpt" / name)
    fails_at_start(capsys, tmp_path, "--ckpt_path last is ambiguous", "--config", str(small_demo(tmp_path)),
                   "--ckpt_path", "last")


def test_an_empty_last_ckpt_names_itself_and_the_good_checkpoint_beside_it(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    torch.save({"global_step": 2}, tmp_path / "ckpt" / "step000002.ckpt")
    time.sleep(0.01)
    (tmp_path / "ckpt" / "last.ckpt").write_bytes(b"")  # a save cut short by a full disk, before atomic saves
    config = str(small_demo(tmp_path))
    for ckpt_path in ("last", str(tmp_path / "ckpt" / "last.ckpt")):
        fails_at_start(capsys, tmp_path, f"checkpoint {tmp_path / 'ckpt' / 'last.ckpt'} cannot be used: the file is "
                       f"empty (a save that was cut short?); the newest readable checkpoint beside it is "
                       f"{tmp_path / 'ckpt' / 'step000002.ckpt'}", "--config", config, "--ckpt_path", ckpt_path)


def test_an_unwritable_checkpoint_folder_fails_before_warm_up(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    fails_at_start(capsys, tmp_path, f"checkpoint.dirpath {tmp_path / 'file' / 'c'} is not writable", "--config",
                   str(small_demo(tmp_path)), "--checkpoint.dirpath", str(tmp_path / "file" / "c"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_checkpoint_folder_fails_before_warm_up(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir(mode=0o555)
    fails_at_start(capsys, tmp_path, f"checkpoint.dirpath {tmp_path / 'ckpt'} is not writable", "--config",
                   str(small_demo(tmp_path)))


def test_the_objective_is_checked_before_the_logger_makes_a_folder(tmp_path, capsys):
    config_path = small_demo(tmp_path)
    config = yaml.safe_load(config_path.read_text())
    callbacks = config["trainer"]["callbacks"]
    config["trainer"]["callbacks"] = [c for c in callbacks if c["class_path"] != "callbacks.MeanReward"]
    config_path.write_text(yaml.safe_dump(config))
    fails_at_start(capsys, tmp_path, "exactly one objective callback is needed under trainer.callbacks (found: none)",
                   "--config", str(config_path))


@pytest.mark.slow
def test_unfinished_saves_are_removed_and_a_dead_runs_lock_taken_over(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / ".last.ckpt.k2j4.partial").write_bytes(b"half a checkpoint")  # a save killed with -9
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / "inferl.lock").write_text(f'{{"pid": {dead.pid}, "host": "{socket.gethostname()}"}}')
    result = inferl("fit", "--config", str(small_demo(tmp_path)), "--trainer.max_steps", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "removed 1 unfinished checkpoint save(s)" in result.stderr
    assert f"took over {folder / 'inferl.lock'} from pid {dead.pid}" in result.stderr
    assert sorted(os.listdir(folder)) == ["last.ckpt", "step000001.ckpt"]  # and the lock is gone after the run


@pytest.mark.slow
def test_the_divergence_probe_exits_1_with_one_line_and_no_nan_checkpoint(tmp_path):
    result = inferl("fit", "--config", str(small_demo(tmp_path)), "--trainer.max_steps", "6",
                    "--checkpoint.every_n_train_steps", "1", "--model.optimizer.init_args.lr", "1e30", timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("inferl: training diverged at step ") and "non-finite" in last_line
    assert "Traceback" not in result.stderr
    for path in (tmp_path / "ckpt").glob("*.ckpt"):
        assert nonfinite_names(checkpoint_tensors(torch.load(path, weights_only=True))) == [], path
