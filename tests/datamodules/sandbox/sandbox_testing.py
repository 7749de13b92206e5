"""Shared parts of the sandbox tests (test_sandbox.py, test_sandbox_verdicts.py): limits, programs, and `Contained`,
which checks on exit that a run was contained: on time, the machine responsive, nothing left behind."""

from __future__ import annotations

import os
import subprocess
import tempfile
import textwrap
import time

from datamodules.sandbox import SandboxLimits, launch

LIM = SandboxLimits(timeout_s=2.0, startup_s=3.0, memory_mb=512)
MEM_LIM = SandboxLimits(timeout_s=10.0, startup_s=3.0, memory_mb=512)  # memory tests: time never the binding limit
MARGIN = 3.0  # seconds on top of a run's own limit, for a loaded 2-core machine
TMP = tempfile.gettempdir()

GOOD_F = "def f(x):\n    return x + 1\n"
F_UNITS = ["assert f(1) == 2", "assert f(10) == 11", "assert f(-1) == 0"]
BAD_F = "def f(x):\n    return x\n"


def dedent(s: str) -> str:
    return textwrap.dedent(s).lstrip("\n")


def sandbox_leftovers() -> set[str]:
    return {n for n in os.listdir(TMP) if n.startswith("inferl-sbx-")}


def slot_uid_base(pid: int | None = None) -> int:
    """The first sandbox uid of the trainer process `pid` (default: this one); its slots use the next 1000."""
    return launch._UID_BASE + ((pid or os.getpid()) % 1_000_000) * 1000


def sandbox_processes(lo: int | None = None) -> list[int]:
    """Processes running as one of the sandbox uids starting at `lo` (default: this test process's)."""
    lo = slot_uid_base() if lo is None else lo
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
        except (OSError, StopIteration, ValueError):
            continue
        if lo <= uid < lo + 1000:
            found.append(int(pid))
    return found


class Contained:
    """Context: timing, host leftovers, responsiveness and stray processes, checked on exit."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s

    def __enter__(self) -> Contained:
        self.before = sandbox_leftovers()
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            return
        elapsed = time.monotonic() - self.t0
        assert elapsed <= self.limit_s + MARGIN, f"took {elapsed:.1f} s, limit {self.limit_s} s"
        t = time.monotonic()
        subprocess.run(["true"], check=True, timeout=10)
        assert time.monotonic() - t < 5.0, "machine unresponsive after the run"
        assert sandbox_leftovers() <= self.before, "a sandbox working directory was left behind"
        deadline = time.monotonic() + 10.0  # teardown on a loaded machine
        while sandbox_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not sandbox_processes(), "sandboxed processes survived the run"


def script_limit() -> float:
    return LIM.startup_s + LIM.timeout_s


EXITS = [
    "import sys\nsys.exit(0)\n",
    "import os\nos._exit(0)\n",
    "raise SystemExit(0)\n",
    "def f(x):\n    import sys\n    sys.exit(0)\n",
    "def f(x):\n    import os\n    os._exit(0)\n",
    "def f(x):\n    raise SystemExit\n",
    "def f(x):\n    raise KeyboardInterrupt\n",
    "import atexit, os\natexit.register(lambda: os._exit(0))\ndef f(x):\n    raise ValueError\n",
]


ALWAYS_EQUAL = [
    # the classic: an object equal to everything
    "class A:\n    def __eq__(self, o):\n        return True\n    __ne__ = lambda s, o: False\n"
    "    __hash__ = object.__hash__\ndef f(x):\n    return A()\n",
    # a subclass of int that claims equality
    "class I(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\n"
    "def f(x):\n    return I(0)\n",
    # arithmetic that always lands within tolerance, for `abs(f(x) - y) < eps` tests
    "class Z:\n    def __sub__(self, o):\n        return 0\n    __rsub__ = __sub__\n    def __eq__(self, o):\n"
    "        return True\n    __hash__ = object.__hash__\ndef f(x):\n    return Z()\n",
    # a str subclass for string tests
    "class S(str):\n    def __eq__(self, o):\n        return True\n    __hash__ = str.__hash__\n"
    "def f(x):\n    return S('')\n",
]
