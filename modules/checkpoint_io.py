"""Checkpoints written whole or not at all, never with NaN or infinite values, and read back with one clear error
when they cannot be used.

Writing: a temporary file beside the target, fsync, then rename (the permissions a normal file would get under
the process's umask, not mkstemp's 0600). Reading: an empty or truncated file, or one holding NaN/inf weights, is
a one-line error naming it and the newest readable checkpoint beside it (modules.run_folder)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from modules.errors import DivergenceError
from modules.finite import checkpoint_tensors, nonfinite_names, summarize
from modules.run_folder import check_checkpoint_file, unreadable_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose files are renamed into place only once fully written, so a crash mid-save leaves the
    previous checkpoint intact (Lightning's own save can land half a file when its temp dir is on another disk).
    The last line of defence against divergence: a checkpoint with non-finite weights or optimizer state is never
    written (the run's guard, callbacks.RunGuard, normally stops the run before), nor loaded."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = os.fspath(path)
        bad = nonfinite_names(checkpoint_tensors(checkpoint))
        if bad:
            raise DivergenceError(f"refusing to write {path}: non-finite values in {summarize(bad)}; the run "
                                  "diverged (lower model.optimizer.init_args.lr or set model.update.max_grad_norm)")
        if "://" in path or storage_options is not None:  # remote storage: fsspec's transaction is the right tool
            return super().save_checkpoint(checkpoint, path, storage_options)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".partial")
        try:
            os.fchmod(handle, 0o666 & ~current_umask())  # mkstemp makes 0600; a checkpoint is an ordinary file
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
            _fsync_dir(Path(folder))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
            raise

    def load_checkpoint(self, path, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in os.fspath(path):
            return super().load_checkpoint(path, map_location, weights_only)
        check_checkpoint_file(path)
        try:
            checkpoint = super().load_checkpoint(path, map_location, weights_only)
        except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
            raise unreadable_checkpoint(Path(path), f"{type(error).__name__}: {str(error).splitlines()[0]}") from None
        bad = nonfinite_names(checkpoint_tensors(checkpoint))
        if bad:
            raise unreadable_checkpoint(Path(path), f"it holds non-finite values ({summarize(bad)}), written by a "
                                                    "run that diverged")
        return checkpoint


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask would, for a moment, for every thread)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Sharded checkpoints are folders (modules/sharding.py): written beside the target, then swapped into place.

def remove_path(path: Path) -> None:
    """Remove a file or a folder; nothing if it is not there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def swap_into_place(partial: Path, path: Path) -> None:
    """Move the complete directory `partial` to `path`, replacing what is there in one atomic exchange where the
    file system supports it (Linux renameat2), else with two renames (the old one kept beside until the new one is
    in place)."""
    _fsync_tree(partial)
    if path.exists() or path.is_symlink():
        if not _exchange(partial, path):
            old = path.parent / f".{path.name}.old"
            remove_path(old)
            os.replace(path, old)
            os.replace(partial, path)
            partial = old
        remove_path(partial)  # now the previous checkpoint
    else:
        os.replace(partial, path)
    _fsync_dir(path.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2 with RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _fsync_tree(folder: Path) -> None:
    """fsync the files rank 0 can see in `folder` (distributed checkpoint's own writers sync theirs) and the folder."""
    for child in folder.iterdir():
        if child.is_file():
            with open(child, "rb") as file:
                os.fsync(file.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
