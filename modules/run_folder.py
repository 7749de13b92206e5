"""One run per checkpoint folder, checked before anything is written.

`prepare_fit_folder`, called by `inferl fit` before training starts (app/cli.py), makes sure that:
- the folder can be written (a read-only or missing-parent folder fails here, not at the first save after the warm
  start and validation);
- no other run uses it: a lock file (`inferl.lock`: pid, host, start time, command) held with flock for the run's
  life; a second run fails naming the first one's pid and host; the lock of a run that died on this host (kill -9)
  is taken over with a notice; one from another host is never taken over (its run may be alive there);
- the folder holds one run's checkpoints only: a fresh run (no --ckpt_path) into a folder that already holds
  checkpoints is refused, so that Lightning never writes `last-v1.ckpt` / `step000100-v1.ckpt` beside another
  run's files, and `--ckpt_path last` means `last.ckpt` of the folder's one run (it is refused when several
  `last*.ckpt` exist, e.g. in folders written before this check);
- `.partial` files left by a save that was killed (modules.checkpoint_io writes beside the target, then renames)
  are removed, with a notice.
A checkpoint that cannot be read (empty, truncated) is reported with the newest readable one beside it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
import zipfile
from pathlib import Path

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.rank_zero import rank_zero_only

from modules.errors import ConfigError
from modules.finite import summarize

LOCK_NAME = "inferl.lock"
LAST_NAME = re.compile(r"last(-v\d+)?\.ckpt")


class RunFolderError(ConfigError):
    """A checkpoint folder or file this run cannot use; the message names it and how to fix it (exit code 2)."""


def notice(message: str) -> None:
    """A one-line note on stderr about something fixed on the way (not an error)."""
    print(f"inferl: note: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- checkpoint files
def checkpoint_files(folder: Path) -> list[Path]:
    """The checkpoints in `folder` (files, or directories of sharded checkpoints), newest first."""
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir() if path.suffix == ".ckpt" and not path.name.startswith(".")]
    return sorted(found, key=lambda path: path.stat().st_mtime, reverse=True)


def looks_complete(path: Path) -> bool:
    """Whether a checkpoint can be whole: a sharded checkpoint directory, or a non-empty zip archive with its
    central directory (what torch.save writes last: a truncated or zero-byte file has none). Cheap: no loading."""
    if path.is_dir():
        return True
    try:
        return path.stat().st_size > 0 and zipfile.is_zipfile(path)
    except OSError:
        return False


def unreadable_checkpoint(path: Path, reason: str) -> RunFolderError:
    """The error for a checkpoint that cannot be used, naming the newest readable one beside it."""
    path = Path(path)
    others = [other for other in checkpoint_files(path.parent) if other.name != path.name and looks_complete(other)]
    hint = (f"; the newest readable checkpoint beside it is {others[0]} (pass it with --ckpt_path {others[0]})"
            if others else "; there is no other checkpoint beside it")
    return RunFolderError(f"checkpoint {path} cannot be used: {reason}{hint}")


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """Raise RunFolderError when a checkpoint file is empty or truncated (before anything loads it)."""
    path = Path(path)
    if path.is_file() and not looks_complete(path):
        reason = "the file is empty" if path.stat().st_size == 0 else "the file is truncated or not a checkpoint"
        raise unreadable_checkpoint(path, reason + " (a save that was cut short?)")


def resolve_last(folder: Path) -> Path | None:
    """What `--ckpt_path last` means: the folder's `last.ckpt`; None when there is none (a fresh start)."""
    lasts = sorted(path for path in checkpoint_files(folder) if LAST_NAME.fullmatch(path.name))
    if len(lasts) > 1:
        raise RunFolderError(
            f"--ckpt_path last is ambiguous: {folder} holds {', '.join(path.name for path in lasts)}, written by "
            "more than one run; pass the checkpoint to continue from with --ckpt_path FILE, and give each run its "
            "own checkpoint.dirpath")
    return lasts[0] if lasts else None


def remove_partials(folder: Path) -> list[str]:
    """Delete the `.NAME.partial` files and directories of saves that never finished; returns their names."""
    removed = []
    for path in folder.glob(".*.partial") if folder.is_dir() else []:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed.append(path.name)
    return removed


def check_own_folder(folder: Path, resuming_from: Path | None, resumes_elsewhere: bool = False) -> None:
    """Refuse a run that would write into a folder holding another run's checkpoints. `resuming_from`: the
    checkpoint this run continues from; `resumes_elsewhere`: Lightning resumes by itself (SLURM requeue)."""
    existing = checkpoint_files(folder)
    if not existing or resumes_elsewhere:
        return
    if resuming_from is not None and resuming_from.resolve().parent == folder.resolve():
        return
    raise RunFolderError(
        f"checkpoint.dirpath {folder} already holds checkpoints of another run "
        f"({summarize([path.name for path in existing])}); continue that run with --ckpt_path last, or give this "
        "run its own folder with --checkpoint.dirpath DIR")


# ------------------------------------------------------------------------------------------- the lock
class RunLock:
    """An exclusive lock on a checkpoint folder for one run's life: `inferl.lock` in the folder, holding the run's
    pid, host, start time and command as JSON, and an flock (released by the kernel however the process ends)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.handle: int | None = None

    def acquire(self) -> RunLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = self._open_locked()
        except OSError as error:
            raise RunFolderError(f"checkpoint.dirpath {self.folder} is not writable ({error.strerror or error}); "
                                 "make it writable or choose another folder with --checkpoint.dirpath") from None
        previous = read_holder(handle)
        here = socket.gethostname()
        if previous and previous.get("host") != here:
            os.close(handle)
            raise RunFolderError(
                f"checkpoint.dirpath {self.folder} is locked by {describe(previous)}: that run may still be "
                f"running there; if it is not, delete {self.path}")
        if previous:
            notice(f"took over {self.path} from {describe(previous)}, which is no longer running")
        os.ftruncate(handle, 0)
        mine = {"pid": os.getpid(), "host": here, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "command": " ".join(sys.argv)}
        os.pwrite(handle, json.dumps(mine).encode(), 0)
        os.fsync(handle)
        self.handle = handle
        atexit.register(self.release)
        return self

    def _open_locked(self) -> int:
        """Open the lock file and flock it; RunFolderError when another live process holds it."""
        while True:
            handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = read_holder(handle)
                os.close(handle)
                raise RunFolderError(
                    f"another run is using checkpoint.dirpath {self.folder}: {describe(holder)} holds {self.path}; "
                    "wait for it to finish or give this run its own folder with --checkpoint.dirpath DIR") from None
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == os.fstat(handle).st_ino:
                    return handle
            os.close(handle)  # the holder removed the file as we opened it: lock the new one

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent; also run at exit)."""
        if self.handle is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.handle)
        self.handle = None


def read_holder(handle: int) -> dict:
    try:
        return json.loads(os.pread(handle, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}


def describe(holder: dict) -> str:
    if not holder:
        return "a run that left no details"
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (started {holder.get('started', '?')}: "
            f"{holder.get('command', '?')})")


# ------------------------------------------------------------------------------------------- at the start of fit
def prepare_fit_folder(folder: str | os.PathLike | None, ckpt_path: str | None, rank_zero: bool,
                       resumes_elsewhere: bool = False) -> tuple[RunLock | None, str | None]:
    """Check and claim a run's checkpoint folder before `fit` starts; returns the lock (rank zero; None elsewhere or
    without a folder) and the checkpoint to resume from (`last` resolved to this folder's last.ckpt, or None)."""
    if folder is None or "://" in str(folder):  # the logger's new version folder: nothing shared; remote: not ours
        return None, ckpt_path
    folder = Path(folder)
    if ckpt_path == "last":
        last = resolve_last(folder)
        if last is None and rank_zero:
            notice(f"--ckpt_path last: no last.ckpt in {folder} yet, starting a fresh run")
        ckpt_path = None if last is None else str(last)
    lock = RunLock(folder).acquire() if rank_zero else None
    try:
        if ckpt_path is not None:
            check_checkpoint_file(ckpt_path)
        check_own_folder(folder, None if ckpt_path is None else Path(ckpt_path), resumes_elsewhere)
    except RunFolderError:
        if lock is not None:
            lock.release()
        raise
    removed = remove_partials(folder) if rank_zero else []
    if removed:
        notice(f"removed {len(removed)} unfinished checkpoint save(s) in {folder}: {summarize(removed)}")
    return lock, ckpt_path


def launched_as_rank_zero() -> bool:
    """Whether this process will be global rank 0, known before Lightning sets ranks up (from the launcher's
    environment: RANK, LOCAL_RANK, SLURM_PROCID; NODE_RANK for Lightning's own multi-node launch)."""
    return getattr(rank_zero_only, "rank", 0) == 0 and os.environ.get("NODE_RANK", "0") == "0"


def slurm_requeue_resumes(root_dir: str | os.PathLike) -> bool:
    """Whether Lightning will resume by itself: a SLURM job requeued by Lightning's auto-requeue (SIGUSR1) finds
    the `hpc_ckpt_*.ckpt` it saved in the trainer's default_root_dir."""
    return SLURMEnvironment.detect() and any(Path(root_dir).glob("hpc_ckpt_*.ckpt"))
