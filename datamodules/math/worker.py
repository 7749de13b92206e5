"""Worker process of datamodules/math/pool.py: run as a script (`python -u worker.py`), it reads framed
pickles from stdin and writes framed pickles to stdout.

Protocol (frame = 8-byte little-endian length + pickle):
    parent -> worker  {"sys_path", "warm_up" (a pickled function), "memory_mb", "parent"} once; then
                      (job id, pickled (fn, args)) per job; None to stop.
    worker -> parent  "ready" once warmed up; then (job id, ok, value or error message) per job.

The job's own prints go to stderr, never into the protocol. Unpickling a job imports its module (e.g.
`datamodules.math.answers`) and the packages above it; those package __init__ files are light (datamodules/__init__.py
imports its lightning-based DataModule only on first use), so a worker does not pay for lightning and torch.
"""

import os
import pickle
import signal
import sys

_HEADER = 8


def _read_exact(fd, n):
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, min(n - got, 1 << 20))
        if not b:
            return None
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _recv(fd):
    head = _read_exact(fd, _HEADER)
    if head is None:
        return None
    data = _read_exact(fd, int.from_bytes(head, "little"))
    return None if data is None else pickle.loads(data)


def _send(fd, obj):
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(len(data).to_bytes(_HEADER, "little") + data)
    while view:
        view = view[os.write(fd, view):]


def _die_with_parent(parent):
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the parent's pipe closing still stops an idle worker
        pass
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(0)


def _setup(init):
    here = os.path.dirname(os.path.abspath(__file__))  # the script's own folder: its files are modules of a package
    sys.path[:] = [p for p in init["sys_path"] if os.path.abspath(p or ".") != here]
    if init.get("memory_mb"):
        import resource
        limit = int(init["memory_mb"]) << 20
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def main():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's business
    rfd, wfd = 0, os.dup(1)
    os.dup2(2, 1)  # print() in a job goes to stderr, not into the protocol
    init = _recv(rfd)  # unpickling it needs nothing from the project
    if init is None:
        return
    _die_with_parent(init["parent"])
    _setup(init)
    if init.get("warm_up") is not None:
        try:
            pickle.loads(init["warm_up"])()
        except Exception:  # noqa: BLE001 - a broken dependency shows up as each job's error instead
            pass
    _send(wfd, "ready")
    while True:
        msg = _recv(rfd)
        if msg is None:
            return
        jid, blob = msg
        try:
            fn, args = pickle.loads(blob)
            reply = (jid, True, fn(*args))
        except BaseException as e:  # noqa: BLE001 - the job's failure is reported, the worker lives on
            reply = (jid, False, f"{type(e).__name__}: {e}"[:1000])
        try:
            _send(wfd, reply)
        except (OSError, BrokenPipeError):
            return
        except Exception as e:  # noqa: BLE001 - an unpicklable result
            _send(wfd, (jid, False, f"result could not be sent back: {type(e).__name__}: {e}"[:1000]))


if __name__ == "__main__":
    main()
