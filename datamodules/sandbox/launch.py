"""Launching one sandboxed interpreter (child.py) and reading what it writes, with caps and a
deadline; the low level of pool.py (which picks the isolation level and decides verdicts).

One dedicated uid per concurrently running program (a "slot") where the level drops privileges; the job goes to the
child over two pipes (public part, secret part), records come back on a third; stdout and stderr are read with caps;
at the deadline, on a cap or on an early stop the whole process group is killed; the working directory is removed.
"""

from __future__ import annotations

import marshal
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_CHILD = Path(__file__).with_name("child.py")
SETUP_FAILED = 71
_UID_BASE = int(os.environ.get("INFERL_SANDBOX_UID_BASE", "1000000000"))


def _binds() -> list[tuple[str, str, str | None]]:
    out: list[tuple[str, str, str | None]] = []
    for p in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr", "/etc"):
        if os.path.islink(p):
            out.append(("link", p, os.readlink(p)))
        elif os.path.isdir(p):
            out.append(("bind", p, None))
    extra = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *_site_dirs(),
             os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
    bound = ["/usr", "/etc"]
    for p in sorted((os.path.realpath(p) for p in extra if p), key=len):
        if p in ("/", "") or any(p == b or p.startswith(b + "/") for b in bound) or not os.path.isdir(p):
            continue
        bound.append(p)
        out.append(("bind", p, None))
    return out


def _site_dirs() -> list[str]:
    import site
    try:
        dirs = list(site.getsitepackages())
    except AttributeError:  # some virtualenv versions
        dirs = []
    return [d for d in dirs if os.path.isdir(d)]


# ----------------------------------------------------------------------------------------------------------------------
# Slots: one dedicated uid per concurrently running program
# ----------------------------------------------------------------------------------------------------------------------

class _Slots:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[int] = []
        self._next = 0

    def acquire(self) -> int:
        with self._lock:
            if self._free:
                return self._free.pop()
            self._next += 1
            return self._next - 1

    def release(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)


_slots = _Slots()


def _slot_uid(slot: int) -> int:
    return _UID_BASE + (os.getpid() % 1_000_000) * 1000 + slot % 1000


# ----------------------------------------------------------------------------------------------------------------------
# Launching one sandboxed interpreter
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class _Raw:
    returncode: int | None
    stdout: bytes
    stderr: bytes
    lines: list[bytes]                  # record lines on the result channel (without the newline)
    cases: dict[int, tuple[str, int | None, float, bytes]]
    timed_out: bool
    output_limit: bool
    stopped: bool
    wall_s: float


def _child_env() -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8", "PYTHONUTF8": "1"}
    if "LD_LIBRARY_PATH" in os.environ:
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    return env


def _launch(pub: dict[str, Any], secret: dict[str, Any] | None, limits, *, iso, n_cases: int = 1,
            on_case: Callable[[int, tuple], bool] | None = None) -> _Raw:
    """Start the child, feed it the job, read everything it writes with caps, enforce the deadline, clean up.
    limits: a SandboxLimits; iso: the Isolation to run under (pool.py)."""
    slot = _slots.acquire()
    uid = _slot_uid(slot) if iso.uid_drop else None
    workdir = None
    proc = None
    fds: set[int] = set()  # our pipe ends still open; closed exactly once (fd numbers are reused across threads)
    t0 = time.monotonic()
    try:
        if not iso.namespaces:
            workdir = tempfile.mkdtemp(prefix="inferl-sbx-")
            if uid is not None:
                os.chown(workdir, uid, uid)
            os.chmod(workdir, 0o700)
        pub = dict(pub, iso={"ns": iso.namespaces, "userns": iso.user_namespace, "uid": uid, "gid": uid,
                             "binds": _binds() if iso.namespaces else [], "workdir": workdir},
                   limits=limits.for_child(n_cases), site_dirs=_site_dirs(), parent=os.getpid())
        pub_b, sec_b = marshal.dumps(pub), marshal.dumps(secret or {})
        pr, pw = os.pipe()
        sr, sw = os.pipe()
        outr, outw = os.pipe()
        fds.update((pw, sw, outr))
        try:
            proc = subprocess.Popen([sys.executable, "-S", "-s", "-B", str(_CHILD), str(pr), str(sr), str(outw)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    pass_fds=(pr, sr, outw), start_new_session=True, env=_child_env(), cwd="/")
        finally:
            for fd in (pr, sr, outw):
                os.close(fd)
        deadline = t0 + limits.wall_limit_s(n_cases)
        return _pump(proc, pw, sw, outr, pub_b, sec_b, limits, deadline, on_case, t0, n_cases, fds)
    finally:
        if proc is not None:
            _kill(proc)
        for fd in list(fds):
            _close(fd, fds)
        if uid is not None and not iso.namespaces:
            _sweep(uid)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        _slots.release(slot)


def _close(fd: int, fds: set[int]) -> None:
    if fd in fds:
        fds.discard(fd)
        try:
            os.close(fd)
        except OSError:
            pass


def _pump(proc, pw, sw, outr, pub_b, sec_b, limits, deadline, on_case, t0, n_cases, fds) -> _Raw:
    sel = selectors.DefaultSelector()
    pending = {pw: memoryview(pub_b), sw: memoryview(sec_b)}
    for fd in (pw, sw):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_WRITE)
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    caps = {out_fd: limits.max_output_bytes, err_fd: limits.max_stderr_bytes,
            outr: (limits.max_output_bytes + 256) * max(1, n_cases) + (1 << 20)}
    bufs: dict[int, bytearray] = {fd: bytearray() for fd in caps}
    for fd in caps:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    parser = _ChannelParser(on_case)
    timed_out = output_limit = False
    exit_seen_at = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if proc.poll() is not None:
                exit_seen_at = exit_seen_at or now
                if now - exit_seen_at > 1.0:  # something that escaped still holds a pipe; stop waiting for it
                    break
            wait = min(deadline - now, 0.25)
            for key, _ in sel.select(wait):
                fd = key.fd
                if fd in pending:
                    try:
                        n = os.write(fd, pending[fd][:1 << 16])
                        pending[fd] = pending[fd][n:]
                    except BlockingIOError:
                        continue
                    except OSError:  # the child is gone or closed its end
                        pending[fd] = memoryview(b"")
                    if not pending[fd]:
                        sel.unregister(fd)
                        _close(fd, fds)
                        del pending[fd]
                    continue
                try:
                    data = os.read(fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(fd)
                    continue
                buf = bufs[fd]
                buf += data
                if fd == outr and not parser.feed(buf):
                    break
                if len(buf) > caps[fd]:
                    output_limit = True
                    break
            else:
                continue
            break  # a `break` inside the for: stop (caps, early stop)
    finally:
        sel.close()
        for fd in list(pending):
            _close(fd, fds)
    if timed_out or output_limit or parser.stopped:
        _kill(proc)
    try:
        rc = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        _kill(proc)
        rc = proc.wait()
    parser.feed(bufs[outr], final=True)
    return _Raw(rc, bytes(bufs[out_fd]), bytes(bufs[err_fd]), parser.lines, parser.cases,
                timed_out, output_limit, parser.stopped, time.monotonic() - t0)


class _ChannelParser:
    """Result channel: text lines, except `CASE i status rc wall len` headers followed by `len` raw bytes."""

    def __init__(self, on_case) -> None:
        self.lines: list[bytes] = []
        self.cases: dict[int, tuple[str, int | None, float, bytes]] = {}
        self.pos = 0
        self.on_case = on_case
        self.stopped = False

    def feed(self, buf: bytearray, final: bool = False) -> bool:
        while True:
            nl = buf.find(b"\n", self.pos)
            if nl < 0:
                if final and self.pos < len(buf):
                    self.lines.append(bytes(buf[self.pos:]))
                    self.pos = len(buf)
                return not self.stopped
            line = bytes(buf[self.pos:nl])
            if line.startswith(b"CASE "):
                parts = line.split()
                try:
                    i, status, rc, wall, n = int(parts[1]), parts[2].decode(), parts[3], float(parts[4]), int(parts[5])
                except (IndexError, ValueError):
                    self.pos = nl + 1
                    continue
                if len(buf) < nl + 1 + n:
                    return True  # wait for the payload
                payload = bytes(buf[nl + 1:nl + 1 + n])
                self.pos = nl + 1 + n
                case = (status, None if rc == b"None" else int(rc), wall, payload)
                self.cases[i] = case
                if self.on_case is not None and not self.stopped and self.on_case(i, case) is False:
                    self.stopped = True
                    return False
                continue
            self.lines.append(line)
            self.pos = nl + 1


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the session leader's group: the outer and whatever stayed in it
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.kill()
        except ProcessLookupError:
            pass
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _sweep(uid: int) -> None:
    """Without namespaces, kill everything the sandbox uid still runs (it may have left our process group)."""
    subprocess.run([sys.executable, "-S", "-c", f"import os; os.setgroups([]); os.setgid({uid}); os.setuid({uid}); "
                    "os.kill(-1, 9)"], env=_child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=10, check=False)
