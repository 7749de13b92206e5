"""A pool of worker processes that run picklable jobs with a hard time limit per job (math-verify, which can hang).

Unlike `multiprocessing.Pool`, a job that overruns its limit has its worker killed (SIGKILL) and replaced, so a hang
costs that one job (Outcome(False, error="timeout")), never the caller; a job that raises gives
Outcome(False, error="<Exception>: <message>"); a worker that dies gives an error too.

Workers are plain subprocesses running datamodules/math/worker.py, not multiprocessing children: multiprocessing's
spawn and forkserver methods re-import the caller's `__main__` in every worker (the trainer's CLI: lightning, torch,
seconds and hundreds of MB per worker, and a training script without an `if __name__ == "__main__"` guard would start
training again in each), and `fork` is unsafe in a process running torch threads. A worker imports only what its jobs
need (package __init__ files are kept light for this: see worker.py). Jobs are module-level functions
(pickled by reference, so not ones defined in `__main__`) and picklable arguments.

Each worker runs in its own session (a terminal's Ctrl-C is the trainer's business), dies with the trainer
(PR_SET_PDEATHSIG) and has an address-space limit (`memory_mb`), so a runaway computation fails that one job.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import select
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

WORKER_SCRIPT = Path(__file__).with_name("worker.py")
_HEADER = 8  # bytes of the little-endian frame length


class Outcome(NamedTuple):
    """The result of one job: ok and value, or not ok and error ("timeout" when the time limit was hit)."""

    ok: bool
    value: Any = None
    error: str | None = None


def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(_HEADER, "little") + data


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        try:
            b = os.read(fd, min(n - got, 1 << 20))
        except OSError:
            return None
        if not b:
            return None
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _recv(fd: int) -> Any:
    """One frame from a worker; raises EOFError when the worker is gone or the frame is cut short."""
    head = _read_exact(fd, _HEADER)
    if head is None:
        raise EOFError
    data = _read_exact(fd, int.from_bytes(head, "little"))
    if data is None:
        raise EOFError
    return pickle.loads(data)


class _Worker:
    __slots__ = ("deadline", "job", "jobs_done", "proc", "ready", "rfd", "started", "wfd")

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.rfd = proc.stdout.fileno()
        self.wfd = proc.stdin.fileno()
        self.ready = False
        self.job: int | None = None
        self.deadline = 0.0
        self.started = time.monotonic()
        self.jobs_done = 0

    def send(self, obj: Any) -> None:
        data = memoryview(_frame(obj))
        while data:
            data = data[os.write(self.wfd, data):]

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        self.close()

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Spawner:
    """Starts worker processes from a thread that lives as long as the process. A worker's PR_SET_PDEATHSIG fires when
    the *thread* that started it exits, so workers started from a short-lived thread (a thread pool's, say) would be
    killed with it: those are started by this long-lived daemon thread instead; the main thread starts its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable[[], Any]) -> Any:
        if threading.current_thread() is threading.main_thread():
            return fn()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="inferl-verifier-spawner", daemon=True)
                self._thread.start()
        done: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs.put((fn, done))
        ok, value = done.get()
        if not ok:
            raise value
        return value

    def _loop(self) -> None:
        while True:
            fn, done = self._jobs.get()
            try:
                done.put((True, fn()))
            except BaseException as e:  # noqa: BLE001 - handed back to the caller
                done.put((False, e))


_spawner = _Spawner()


def _stop_workers(workers: list) -> None:
    for w in workers:
        try:
            w.send(None)
        except OSError:
            pass
    deadline = time.monotonic() + 1.0
    for w in workers:
        try:
            w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        w.kill()
    workers.clear()


class VerifierPool:
    """A persistent pool of worker processes running picklable jobs with a hard per-job time limit.

    Args:
        workers: number of worker processes.
        warm_up: a module-level function each worker calls once before it takes jobs (e.g. importing math-verify),
            so start-up time is not charged to a job's limit; None for none.
        max_jobs_per_worker: a worker is recycled after this many jobs (bounds caches that grow, e.g. sympy's).
        startup_timeout_s: a worker not ready after this long is replaced (after repeated failures the pending
            jobs fail with an error instead of waiting forever).
        memory_mb: address-space limit (RLIMIT_AS) of each worker; None for no limit.
    """

    def __init__(self, workers: int = 2, warm_up: Callable[[], Any] | None = None, max_jobs_per_worker: int = 20000,
                 startup_timeout_s: float = 120.0, memory_mb: int | None = 4096) -> None:
        if workers < 1:
            raise ValueError(f"VerifierPool: workers must be >= 1, got {workers}")
        if memory_mb is not None and memory_mb < 256:
            raise ValueError(f"VerifierPool: memory_mb must be >= 256 (Python and sympy need it) or None, got "
                             f"{memory_mb}")
        self.size = workers
        self.warm_up = warm_up
        self.max_jobs_per_worker = max_jobs_per_worker
        self.startup_timeout_s = startup_timeout_s
        self.memory_mb = memory_mb
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._start_failures = 0
        self._last_start_error = ""
        self.timeouts = 0  # counters, for logging by the caller
        self.crashes = 0
        self._finalizer = weakref.finalize(self, _stop_workers, self._workers)

    # -- lifecycle
    def _spawn(self) -> _Worker:
        proc = _spawner.run(lambda: subprocess.Popen(
            [sys.executable, "-u", str(WORKER_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
            start_new_session=True, close_fds=True, cwd=os.getcwd()))
        w = _Worker(proc)
        try:
            warm_up = None if self.warm_up is None else pickle.dumps(self.warm_up)  # unpickled after the worker's setup
            w.send({"sys_path": list(sys.path), "warm_up": warm_up, "memory_mb": self.memory_mb,
                    "parent": os.getpid()})
        except (OSError, pickle.PicklingError, AttributeError, TypeError) as e:
            w.kill()
            raise RuntimeError(f"VerifierPool: cannot start a worker: {type(e).__name__}: {e}") from None
        return w

    def _replace(self, w: _Worker, kill: bool = True) -> _Worker:
        w.kill() if kill else w.close()
        new = self._spawn()
        self._workers[self._workers.index(w)] = new
        return new

    def _ensure_started(self) -> None:
        if self._pid != os.getpid():  # we are a forked copy: the workers belong to the parent
            self._workers.clear()
            self._pid = os.getpid()
        while len(self._workers) < self.size:
            self._workers.append(self._spawn())

    def close(self) -> None:
        """Stop the workers (idempotent); the pool starts new ones if used again."""
        with self._lock:
            if self._pid == os.getpid():
                _stop_workers(self._workers)
            else:
                self._workers.clear()

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        raise TypeError("VerifierPool cannot be pickled; create one in the process that uses it")

    # -- running jobs
    def map(self, fn: Callable, args_list: Sequence[tuple], timeout_s: float) -> list[Outcome]:
        """Run fn(*args) for each args tuple, at most `timeout_s` seconds each (counted from dispatch to an idle,
        started worker). The results keep the order of `args_list`."""
        n = len(args_list)
        results: list[Outcome | None] = [None] * n
        if n == 0:
            return []
        blobs: list[bytes | None] = []
        for i, args in enumerate(args_list):
            try:
                blobs.append(pickle.dumps((fn, tuple(args)), protocol=pickle.HIGHEST_PROTOCOL))
            except Exception as e:  # noqa: BLE001
                blobs.append(None)
                results[i] = Outcome(False, None, f"job could not be sent to a worker: {type(e).__name__}: {e}")
        with self._lock:
            self._ensure_started()
            queue = deque(i for i in range(n) if results[i] is None)
            remaining = len(queue)
            while remaining:
                now = time.monotonic()
                for w in list(self._workers):
                    if w.ready and w.job is None and queue:
                        i = queue.popleft()
                        try:
                            w.send((i, blobs[i]))
                        except OSError:
                            queue.appendleft(i)
                            self._replace(w)
                            continue
                        w.job, w.deadline = i, now + timeout_s
                by_fd = {w.rfd: w for w in self._workers}
                waits = [w.deadline for w in self._workers if w.job is not None]
                waits += [w.started + self.startup_timeout_s for w in self._workers if not w.ready]
                wait_s = max(0.0, min(waits) - time.monotonic()) if waits else 0.05
                readable, _, _ = select.select(list(by_fd), [], [], wait_s)
                for fd in readable:
                    w = by_fd[fd]
                    try:
                        msg = _recv(fd)
                    except (EOFError, pickle.UnpicklingError, ValueError):
                        try:
                            code = w.proc.wait(timeout=2)
                        except subprocess.TimeoutExpired:
                            code = None
                        if w.job is not None:
                            results[w.job] = Outcome(False, None, f"verifier worker died (exit code {code})")
                            remaining -= 1
                            self.crashes += 1
                        elif not w.ready:
                            self._start_failures += 1
                            self._last_start_error = f"exit code {code}"
                        self._replace(w)
                        continue
                    if msg == "ready":
                        w.ready = True
                        self._start_failures = 0
                        continue
                    jid, ok, val = msg
                    if w.job == jid:
                        results[jid] = Outcome(True, val) if ok else Outcome(False, None, val)
                        remaining -= 1
                        w.job = None
                        w.jobs_done += 1
                        if w.jobs_done >= self.max_jobs_per_worker:
                            try:
                                w.send(None)
                            except OSError:
                                pass
                            self._replace(w, kill=False)
                now = time.monotonic()
                for w in list(self._workers):
                    if w.job is not None and now >= w.deadline:
                        results[w.job] = Outcome(False, None, "timeout")
                        remaining -= 1
                        self.timeouts += 1
                        w.job = None
                        self._replace(w)
                    elif not w.ready and now >= w.started + self.startup_timeout_s:
                        self._start_failures += 1
                        self._last_start_error = f"not ready after {self.startup_timeout_s:.0f} s"
                        self._replace(w)
                if self._start_failures >= 3 * self.size and not any(w.ready for w in self._workers):
                    msg = f"verifier workers could not be started ({self._last_start_error})"
                    log.error(msg)
                    while queue:
                        results[queue.popleft()] = Outcome(False, None, msg)
                        remaining -= 1
                    if not any(w.job is not None for w in self._workers):
                        break
        return [r if r is not None else Outcome(False, None, "not run") for r in results]


__all__ = ["Outcome", "VerifierPool"]
