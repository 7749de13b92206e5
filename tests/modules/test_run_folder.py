"""One run per checkpoint folder: the lock, `last` resolution, a fresh run into another run's folder, unfinished
saves (modules/run_folder.py). The same checks through `inferl fit` are in tests/app/test_run_start.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modules.run_folder import (
    LOCK_NAME,
    RunFolderError,
    RunLock,
    check_own_folder,
    prepare_fit_folder,
    remove_partials,
    resolve_last,
)

REPO = Path(__file__).resolve().parents[2]


def dead_pid() -> int:
    """The pid of a process that has exited (reaped, so no process has it for now)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_second_lock_on_a_folder_fails_naming_the_holder(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunFolderError) as error:
        RunLock(tmp_path).acquire()
    message = str(error.value)
    assert f"another run is using checkpoint.dirpath {tmp_path}" in message
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    RunLock(tmp_path).acquire().release()  # free again


def test_a_lock_held_by_another_process_is_respected(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", f"from modules.run_folder import RunLock; import time; "
                               f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=f"pid {holder.pid} on host"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(tmp_path).acquire()  # killed (-9): the kernel dropped its flock, its file is taken over
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_the_lock_of_a_dead_run_on_this_host_is_taken_over_with_a_notice(tmp_path, capsys):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(),
                                                  "started": "earlier", "command": "inferl fit"}))
    lock = RunLock(tmp_path).acquire()
    assert "took over" in capsys.readouterr().err
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_the_lock_of_a_run_on_another_host_is_never_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 12345, "host": "node-b", "started": "earlier"}))
    with pytest.raises(RunFolderError, match=f"locked by pid 12345 on host node-b .*delete {tmp_path / LOCK_NAME}"):
        RunLock(tmp_path).acquire()


def test_an_unwritable_folder_fails_before_anything_runs(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="is not writable"):
        RunLock(tmp_path / "file" / "ckpt").acquire()


def test_last_is_this_folders_last_ckpt_and_refused_when_ambiguous(tmp_path):
    assert resolve_last(tmp_path) is None
    torch.save({}, tmp_path / "step000002.ckpt")
    torch.save({}, tmp_path / "last.ckpt")
    assert resolve_last(tmp_path) == tmp_path / "last.ckpt"
    torch.save({}, tmp_path / "last-v1.ckpt")  # a second run's, from before the lock and the folder check
    with pytest.raises(RunFolderError, match=r"--ckpt_path last is ambiguous: .* last-v1\.ckpt, last\.ckpt"):
        resolve_last(tmp_path)


def test_a_fresh_run_into_another_runs_folder_is_refused(tmp_path):
    check_own_folder(tmp_path, None)  # empty: fine
    torch.save({}, tmp_path / "last.ckpt")
    with pytest.raises(RunFolderError, match=r"already holds checkpoints of another run .*--ckpt_path last"):
        check_own_folder(tmp_path, None)
    check_own_folder(tmp_path, tmp_path / "last.ckpt")  # resuming the folder's run
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    torch.save({}, elsewhere / "last.ckpt")
    with pytest.raises(RunFolderError):
        check_own_folder(tmp_path, elsewhere / "last.ckpt")  # another run's checkpoint into this folder


def test_unfinished_saves_are_removed_at_the_start(tmp_path, capsys):
    (tmp_path / ".last.ckpt.x1y2.partial").write_bytes(b"half")
    (tmp_path / ".last.ckpt.partial").mkdir()  # a sharded save's directory
    (tmp_path / ".last.ckpt.partial" / "shard").write_bytes(b"half")
    torch.save({}, tmp_path / "last.ckpt")
    lock, ckpt_path = prepare_fit_folder(tmp_path, "last", rank_zero=True)
    assert ckpt_path == str(tmp_path / "last.ckpt")
    assert sorted(os.listdir(tmp_path)) == [LOCK_NAME, "last.ckpt"]
    assert "removed 2 unfinished checkpoint save(s)" in capsys.readouterr().err
    lock.release()
    assert remove_partials(tmp_path) == []
