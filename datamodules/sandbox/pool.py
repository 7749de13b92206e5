"""The parent side of the code sandbox: limits, results, isolation detection, verdicts and the pool of concurrent
runs (design notes in datamodules/sandbox/__init__.py)."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from datamodules.sandbox.launch import SETUP_FAILED, _Raw
from datamodules.sandbox.launch import _launch as _launch_raw

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one program. timeout_s is wall-clock per stdin case (script mode) or per test program (tests mode);
    startup_s is extra time allowed once per run for interpreter start and confinement, which a busy machine slows."""

    timeout_s: float = 10.0
    cpu_s: float | None = None          # RLIMIT_CPU per process; default: timeout_s + 1
    memory_mb: int = 1024               # RLIMIT_AS (address space, so allow for the interpreter: ~40 MB)
    max_procs: int = 32                 # RLIMIT_NPROC: processes + threads of the sandbox uid
    file_size_mb: int = 16              # RLIMIT_FSIZE
    max_open_files: int = 64            # RLIMIT_NOFILE
    tmpfs_mb: int = 64                  # size of the private root, working dir included
    max_output_bytes: int = 4 << 20     # stdout cap (per case in script mode)
    max_stderr_bytes: int = 64 << 10
    startup_s: float = 10.0
    max_total_s: float | None = None    # wall-clock cap for all stdin cases of one run (None: timeout_s per case)

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.memory_mb < 64 or self.max_procs < 1:
            raise ValueError(f"invalid sandbox limits: {self}; need timeout_s > 0, memory_mb >= 64, max_procs >= 1")
        if self.max_total_s is not None and self.max_total_s <= 0:
            raise ValueError(f"invalid sandbox limits: max_total_s must be > 0 or None, got {self.max_total_s}")

    def wall_limit_s(self, n_cases: int = 1) -> float:
        """The longest one run of `n_cases` stdin cases (or one test program) may take, start-up included."""
        per_case = self.timeout_s * max(1, n_cases) + 0.05 * n_cases
        if self.max_total_s is not None:
            per_case = min(per_case, self.max_total_s)
        return self.startup_s + per_case

    def for_child(self, n_cases: int = 1) -> dict[str, Any]:
        cpu = self.cpu_s if self.cpu_s is not None else self.timeout_s + 1.0
        return {"timeout_s": self.timeout_s, "cpu_s": cpu, "total_cpu_s": cpu * max(1, n_cases) + self.startup_s,
                "memory_mb": self.memory_mb, "max_procs": self.max_procs, "file_size_mb": self.file_size_mb,
                "max_open_files": self.max_open_files, "tmpfs_mb": self.tmpfs_mb,
                "max_output_bytes": self.max_output_bytes}


@dataclass
class ExecResult:
    """One program run on one stdin. status: ok (exit 0) | error (non-zero exit, e.g. an exception) | timeout |
    output_limit | killed (by a signal, e.g. the CPU limit) | sandbox_error (the sandbox itself failed) | skipped."""

    status: str
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class TestResult:
    """A unit-test run. passed: every test unit ran and every assertion held (decided from nonce-authenticated
    records, never from the exit code). first_passed: outcome of the first assertion evaluated (None if none ran).
    unit_results: per unit, True/False, or None if it did not run. status: passed | failed (wrong answers, or a
    crash: see error) | timeout | output_limit | sandbox_error. error: why the program could not be judged or
    crashed (load/compile error, exception, timeout); failure: the first failed assertion."""

    status: str
    passed: bool = False
    first_passed: bool | None = None
    asserts_passed: int = 0
    asserts_total: int = 0
    units_passed: int = 0
    units_total: int = 0
    unit_results: list[bool | None] = field(default_factory=list)
    error: str | None = None
    failure: str | None = None
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0

    @property
    def fraction(self) -> float:
        return self.asserts_passed / self.asserts_total if self.asserts_total else float(self.passed)


@dataclass(frozen=True)
class Isolation:
    """What confinement programs get on this machine (see the module docstring)."""

    level: str
    namespaces: bool
    user_namespace: bool
    uid_drop: bool
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def network_isolated(self) -> bool:
        return self.namespaces

    def describe(self) -> str:
        return f"{self.level} ({', '.join(f'{k}={v}' for k, v in self.details.items())})"


# ----------------------------------------------------------------------------------------------------------------------
# Isolation detection
# ----------------------------------------------------------------------------------------------------------------------

_iso_lock = threading.Lock()
_iso: Isolation | None = None




def _candidates() -> list[tuple[str, dict[str, Any]]]:
    root = os.geteuid() == 0
    out = []
    if root:
        out.append(("namespaces+uid", {"ns": True, "userns": False, "uid_drop": True}))
    else:
        out.append(("userns", {"ns": True, "userns": True, "uid_drop": False}))
    if root:
        out.append(("uid-only", {"ns": False, "userns": False, "uid_drop": True}))
    out.append(("rlimits-only", {"ns": False, "userns": False, "uid_drop": False}))
    return out


def isolation_level(refresh: bool = False) -> Isolation:
    """Detect (once; cached) the strongest confinement that works here, by running a probe program under each level
    in turn and checking from the inside what it can see and do. Logs at WARNING when the result is degraded."""
    global _iso
    with _iso_lock:
        if _iso is not None and not refresh:
            return _iso
        failures = []
        for level, cfg in _candidates():
            ok, info = _probe(cfg)
            if ok:
                _iso = Isolation(level, cfg["ns"], cfg["userns"], cfg["uid_drop"], info)
                break
            failures.append(f"{level}: {info.get('why')}")
        else:  # pragma: no cover - rlimits-only cannot fail short of a broken interpreter
            raise RuntimeError("the code sandbox cannot start any program: " + "; ".join(failures))
        if _iso.level in ("namespaces+uid", "userns"):
            log.info("code sandbox isolation: %s", _iso.describe())
        else:
            missing = ["network isolation", "private filesystem view", "pid namespace"]
            if not _iso.uid_drop:
                missing.append("a separate user (programs run as YOU: they can read your files and signal your "
                               "processes)")
            tools = ", ".join(f"{t}={shutil.which(t) or 'not installed'}" for t in ("unshare", "bwrap"))
            log.warning("code sandbox isolation is degraded to %s: no %s. Stronger levels failed: %s. Run as root "
                        "(e.g. in a container with CAP_SYS_ADMIN) or allow unprivileged user namespaces "
                        "(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0). inferl calls "
                        "unshare(2) itself, so no tool is needed (found: %s).",
                        _iso.level, ", ".join(missing), "; ".join(failures), tools)
        return _iso


def _probe(cfg: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    import socket
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    port = lst.getsockname()[1]
    with tempfile.NamedTemporaryFile(prefix="inferl-probe-visible-", delete=False) as visible:
        pass  # an empty file the child should not be able to see
    os.chmod(visible.name, 0o600)
    target = os.path.join(tempfile.gettempdir(), f"inferl-probe-write-{secrets.token_hex(6)}")
    try:
        iso = Isolation("probe", cfg["ns"], cfg["userns"], cfg["uid_drop"])
        raw = _launch({"mode": "probe", "probe_port": port, "probe_write": target, "probe_visible": visible.name},
                      None, SandboxLimits(timeout_s=20.0, startup_s=20.0), iso=iso)
    finally:
        lst.close()
        os.unlink(visible.name)
        written = os.path.exists(target)
        if written:
            os.unlink(target)
    probe = next((r for r in raw.lines if r.startswith(b"PROBE ")), None)
    if probe is None:
        setup = next((r for r in raw.lines if r.startswith(b"SETUP ")), None)
        why = (setup or raw.stderr[-300:] or f"exit {raw.returncode}".encode()).decode("utf-8", "replace").strip()
        return False, {"why": why}
    import json
    info = json.loads(probe[6:])
    problems = []
    if not info.get("stdlib"):
        problems.append("the sandbox user cannot read the Python standard library")
    if cfg["uid_drop"] and info.get("uid") == 0:
        problems.append("still uid 0")
    if cfg["ns"]:
        if info.get("net") not in ("ENETUNREACH", "EHOSTUNREACH", "ENETDOWN", "EADDRNOTAVAIL"):
            problems.append(f"network reachable ({info.get('net')})")
        if written or info.get("write_outside"):  # host /tmp from outside, or / and /etc from inside
            problems.append("could write outside its directory")
        if info.get("host_visible"):
            problems.append("host files visible")
    if problems:
        return False, {"why": "; ".join(problems)}
    details = {"net": "none" if cfg["ns"] else "host", "fs": "private root" if cfg["ns"] else "host",
               "uid": info.get("uid"), "pid_ns": info.get("pid") == 1,
               "via": ("unshare(2) in a user namespace" if cfg["userns"] else "unshare(2)") if cfg["ns"]
               else ("setuid" if cfg["uid_drop"] else "rlimits")}
    return True, details




def _launch(pub: dict[str, Any], secret: dict[str, Any] | None, limits: SandboxLimits, *, n_cases: int = 1,
            iso: Isolation | None = None, on_case: Callable[[int, tuple], bool] | None = None) -> _Raw:
    """Run one sandboxed interpreter at the detected isolation level (or `iso`); see launch._launch."""
    return _launch_raw(pub, secret, limits, iso=iso or isolation_level(), n_cases=n_cases, on_case=on_case)


# ----------------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------------

def _decode(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _sandbox_error(raw: _Raw) -> str | None:
    for line in raw.lines:
        if line.startswith(b"SETUP "):
            return "sandbox setup failed: " + _decode(line[6:])
    if raw.returncode == SETUP_FAILED:
        return "sandbox setup failed"
    return None


def run_cases(source: str, inputs: Sequence[str | bytes], limits: SandboxLimits | None = None,
              on_case: Callable[[int, ExecResult], bool] | None = None) -> list[ExecResult]:
    """Run `source` as __main__ once per stdin in `inputs` (each in a fresh forked process of one confined
    interpreter; each case has its own timeout_s and CPU limit). Returns one ExecResult per input; cases after an
    `on_case(i, result) is False` early stop, or after a timeout of the whole run, are status "skipped"."""
    limits = limits or SandboxLimits()
    data = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in inputs]
    results: dict[int, ExecResult] = {}

    def to_result(case) -> ExecResult:
        status, rc, wall, payload = case
        if status == "ok":
            status = "ok" if rc == 0 else ("killed" if rc is not None and rc < 0 else "error")
        return ExecResult(status, _decode(payload), "", rc, wall)

    def cb(i, case) -> bool:
        results[i] = to_result(case)
        return True if on_case is None else on_case(i, results[i]) is not False

    raw = _launch({"mode": "script", "source": source, "inputs": data}, None, limits, n_cases=len(data),
                  on_case=cb)
    err = _sandbox_error(raw)
    stderr = _decode(raw.stderr)
    compile_err = next((_decode(r[8:]) for r in raw.lines if r.startswith(b"COMPILE ")), None)
    out = []
    for i in range(len(data)):
        if i in results:
            r = results[i]
        elif err:
            r = ExecResult("sandbox_error", "", err)
        elif compile_err:
            r = ExecResult("error", "", compile_err, 1)
        elif raw.timed_out and not any(j > i for j in results):
            r = ExecResult("timeout", "", "", None, raw.wall_s)
        elif raw.output_limit and not any(j > i for j in results):
            r = ExecResult("output_limit", "", "", None, raw.wall_s)
        else:
            r = ExecResult("skipped")
        if not r.stderr:
            r.stderr = stderr
        out.append(r)
    return out


def run_program(source: str, stdin: str | bytes = "", limits: SandboxLimits | None = None) -> ExecResult:
    """Run one program on one stdin. See run_cases."""
    return run_cases(source, [stdin], limits)[0]


def run_tests(source: str, units: Sequence[str], *, prelude: str = "", setup: str = "", entry: Iterable[str] = (),
              isolate_calls: bool = True, soft: bool = False, limits: SandboxLimits | None = None) -> TestResult:
    """Run unit tests against a candidate module.

    source: the candidate's code. units: test code strings run in order in one test namespace (each unit passes if
    it runs to the end with every assertion holding). prelude: trusted code run before the tests whose definitions
    the tests may use (e.g. HumanEval's prompt helpers). setup: test code run once before the units. entry: the
    names the tests call on the candidate (they win over same-named prelude definitions). isolate_calls: run the
    candidate in its own process and call it with plain data (False: same process, for tests that need the
    candidate's classes; weaker, see harness.py). soft: keep going after a failed assertion (for fractions).
    """
    limits = limits or SandboxLimits()
    nonce = secrets.token_hex(16)
    secret = {"nonce": nonce, "prelude": prelude, "setup": setup, "units": list(units), "entry": list(entry),
              "soft": soft}
    raw = _launch({"mode": "tests", "source": source, "isolate_calls": isolate_calls}, secret, limits)
    res = TestResult("failed", units_total=len(units), wall_s=raw.wall_s, stdout=_decode(raw.stdout),
                     stderr=_decode(raw.stderr))
    err = _sandbox_error(raw)
    if err:
        res.status, res.error = "sandbox_error", err
        return res
    prefix = nonce.encode() + b" "
    passed, failed, units_ok, end = set(), set(), set(), None
    errors, timed_out = [], raw.timed_out
    res.unit_results = [None] * len(units)
    for line in raw.lines:
        if not line.startswith(prefix):
            continue  # anything the candidate wrote without the nonce
        tag, _, rest = line[len(prefix):].decode("utf-8", "replace").partition(" ")
        if tag in ("P", "X") and rest.isdigit():
            k = int(rest)
            if res.first_passed is None:
                res.first_passed = tag == "P"
            (passed if tag == "P" else failed).add(k)
        elif tag == "N":
            try:
                res.asserts_total = int(rest.split()[0])
            except (ValueError, IndexError):
                pass
        elif tag == "U":
            i, _, ok = rest.partition(" ")
            if i.isdigit() and int(i) < len(units):
                res.unit_results[int(i)] = ok == "1"
                if ok == "1":
                    units_ok.add(int(i))
        elif tag == "FAIL":
            res.failure = res.failure or rest
        elif tag == "TIMEOUT":
            timed_out = True
        elif tag == "END":
            end = rest.split()
        elif tag in ("ERR", "HARNESS"):
            errors.append(rest if tag == "ERR" else "harness: " + rest)
    res.asserts_passed = len(passed - failed)
    res.units_passed = len(units_ok)
    # Passed: the END record says so, every unit ran, no assertion failed, at least one assertion was actually
    # checked (tests that were skipped somehow do not count), and the run ended cleanly within its limits.
    res.passed = (end is not None and len(end) == 2 and end[1] == "1" and end[0] == str(len(units))
                  and not failed and (bool(passed) or res.asserts_total == 0) and raw.returncode == 0
                  and not timed_out and not raw.output_limit)
    if res.passed:
        res.status = "passed"
    elif timed_out:
        res.status, res.error = "timeout", f"timed out after {limits.timeout_s:g} s"
    elif raw.output_limit:
        res.status, res.error = "output_limit", "output exceeded the cap"
    elif any(e.startswith("harness: ") for e in errors):
        res.status = "sandbox_error"
    if res.error is None and errors:
        res.error = errors[0]
    if res.error is None and not res.passed and end is None:
        res.error = f"the program ended before the tests finished (exit status {raw.returncode})"
    if res.error is None and not res.passed and res.failure is None:
        res.error = "no assertion was checked" if not passed else "the tests did not complete"
    return res


# ----------------------------------------------------------------------------------------------------------------------
# Pool
# ----------------------------------------------------------------------------------------------------------------------

class SandboxPool:
    """Runs many sandboxed programs at once. Threads only wait on child processes, so threads are enough; the default
    size is the number of CPU cores. Usable as a context manager; `map` keeps the order of its inputs."""

    def __init__(self, max_workers: int | None = None) -> None:
        self.max_workers = max(1, int(max_workers or os.cpu_count() or 1))
        self._ex = ThreadPoolExecutor(self.max_workers, thread_name_prefix="sandbox")

    def submit(self, fn: Callable, *args, **kwargs):
        return self._ex.submit(fn, *args, **kwargs)

    def map(self, fn: Callable, *iterables) -> list:
        return list(self._ex.map(fn, *iterables))

    def close(self) -> None:
        self._ex.shutdown(wait=True)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_default_pool: SandboxPool | None = None
_pool_lock = threading.Lock()


def default_pool() -> SandboxPool:
    """A process-wide pool with one worker per CPU core, created on first use."""
    global _default_pool
    with _pool_lock:
        if _default_pool is None:
            _default_pool = SandboxPool()
        return _default_pool


__all__ = [
    "ExecResult",
    "Isolation",
    "SandboxLimits",
    "SandboxPool",
    "TestResult",
    "default_pool",
    "isolation_level",
    "run_cases",
    "run_program",
    "run_tests",
]
