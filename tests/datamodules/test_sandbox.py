"""Hostile programs against the code sandbox. Each must be contained: no wrong verdict, the test process alive, the
machine responsive, nothing left behind on the host, done within its limit plus a small margin."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from datamodules import sandbox
from datamodules.sandbox import SandboxLimits, SandboxPool, isolation_level, run_cases, run_program, run_tests

LIM = SandboxLimits(timeout_s=2.0, startup_s=3.0, memory_mb=512)
MARGIN = 3.0  # seconds on top of a run's own limit, for a loaded 2-core machine
TMP = tempfile.gettempdir()

GOOD_F = "def f(x):\n    return x + 1\n"
F_UNITS = ["assert f(1) == 2", "assert f(10) == 11", "assert f(-1) == 0"]
BAD_F = "def f(x):\n    return x\n"


def dedent(s: str) -> str:
    return textwrap.dedent(s).lstrip("\n")


def _sandbox_leftovers() -> set[str]:
    return {n for n in os.listdir(TMP) if n.startswith("inferl-sbx-")}


def _sandbox_processes() -> list[int]:
    """Processes running as one of this test process's sandbox uids."""
    lo = sandbox._slot_uid(0)
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

    def __enter__(self) -> "Contained":
        self.before = _sandbox_leftovers()
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
        assert _sandbox_leftovers() <= self.before, "a sandbox working directory was left behind"
        deadline = time.monotonic() + 3.0
        while _sandbox_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _sandbox_processes(), "sandboxed processes survived the run"


@pytest.fixture(scope="module")
def iso():
    return isolation_level()


def script_limit() -> float:
    return LIM.startup_s + LIM.timeout_s


# ----------------------------------------------------------------------------------------------------------------------
# Baseline
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_isolation_level_is_reported(iso):
    assert iso.level in ("namespaces+uid", "userns", "uid-only", "rlimits-only")
    assert isolation_level() is iso  # detected once


@pytest.mark.timeout(120)
def test_isolation_level_is_logged_and_degrades_loudly(iso, monkeypatch, caplog):
    """The detected level is logged at INFO (at WARNING when degraded); when the stronger levels fail, the warning
    names what is missing and why each stronger level failed."""
    try:
        with caplog.at_level(logging.INFO, logger="datamodules.sandbox"):
            level = isolation_level(refresh=True)
        assert level.level == iso.level
        line = next(r for r in caplog.records if "code sandbox isolation" in r.getMessage())
        assert iso.level in line.getMessage()
        assert line.levelno == (logging.INFO if iso.namespaces else logging.WARNING)
        caplog.clear()
        real_probe = sandbox._probe  # as on a host without namespaces or root: the stronger levels cannot start
        monkeypatch.setattr(sandbox, "_probe", lambda cfg: (False, {"why": "unshare: Operation not permitted"})
                            if cfg["ns"] or cfg["uid_drop"] else real_probe(cfg))
        with caplog.at_level(logging.INFO, logger="datamodules.sandbox"):
            degraded = isolation_level(refresh=True)
        assert degraded.level == "rlimits-only" and not degraded.network_isolated
        warning = next(r for r in caplog.records if "degraded" in r.getMessage())
        assert warning.levelno == logging.WARNING
        text = warning.getMessage()
        assert "rlimits-only" in text and "network isolation" in text and "Operation not permitted" in text
    finally:
        monkeypatch.undo()
        assert isolation_level(refresh=True).level == iso.level


@pytest.mark.timeout(60)
def test_program_runs_and_reads_stdin():
    r = run_program("import sys\nprint(sum(int(t) for t in sys.stdin.read().split()))", "1 2 3\n4", LIM)
    assert r.status == "ok" and r.stdout == "10\n" and r.returncode == 0


@pytest.mark.timeout(60)
def test_cases_are_independent_processes():
    src = "import sys\nseen = globals().setdefault('seen', [])\nprint(input(), len(seen))\nseen.append(1)\n"
    rs = run_cases(src, ["a", "b", "c"], LIM)
    assert [r.stdout for r in rs] == ["a 0\n", "b 0\n", "c 0\n"]


@pytest.mark.timeout(60)
def test_exit_codes_and_exceptions():
    assert run_program("import sys\nprint('x')\nsys.exit(3)", "", LIM).returncode == 3
    r = run_program("raise ValueError('boom')", "", LIM)
    assert r.status == "error" and "ValueError: boom" in r.stderr
    r = run_program("def f(:\n  pass", "", LIM)
    assert r.status == "error" and "SyntaxError" in r.stderr


@pytest.mark.timeout(60)
def test_program_in_a_thread_finishes():
    src = dedent("""
        import sys, threading
        sys.setrecursionlimit(100000)
        threading.stack_size(64 * 1024 * 1024)
        def depth(n):
            return 0 if n == 0 else 1 + depth(n - 1)
        def main():
            print(depth(20000))
        threading.Thread(target=main).start()
    """)
    r = run_program(src, "", LIM)
    assert r.status == "ok" and r.stdout == "20000\n", r


@pytest.mark.timeout(60)
def test_unit_tests_pass_and_fail():
    ok = run_tests(GOOD_F, F_UNITS, entry=["f"], limits=LIM)
    assert ok.passed and ok.status == "passed" and ok.first_passed and ok.asserts_passed == 3
    bad = run_tests(BAD_F, F_UNITS, entry=["f"], limits=LIM)
    assert not bad.passed and bad.first_passed is False and "assertion failed" in bad.failure and bad.error is None
    soft = run_tests("def f(x):\n    return x + 1 if x > 0 else 5\n", F_UNITS, entry=["f"], soft=True, limits=LIM)
    assert not soft.passed and soft.asserts_passed == 2 and soft.fraction == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------------------------------------------------
# Resource abuse
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("src", ["while True:\n    pass\n", "import time\ntime.sleep(60)\n",
                                 "import time\nwhile True:\n    time.sleep(0.01)\n"])
def test_hang_is_killed_at_the_limit(src):
    with Contained(script_limit()):
        t = time.monotonic()
        r = run_program(src, "", LIM)
        assert r.status in ("timeout", "killed")
        assert time.monotonic() - t >= LIM.timeout_s * 0.9


@pytest.mark.timeout(60)
def test_hang_in_tests_mode_and_at_import():
    for src in ("def f(x):\n    while True:\n        pass\n", "import time\ntime.sleep(60)\ndef f(x):\n    return x + 1\n"):
        with Contained(script_limit()):
            r = run_tests(src, F_UNITS, entry=["f"], limits=LIM)
            assert not r.passed and r.status == "timeout"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("src", [
    "import os\nwhile True:\n    os.fork()\n",
    "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "import os\nwhile True:\n    try:\n        if os.fork() == 0:\n            os.setsid()\n    except OSError:\n        pass\n",
    "import subprocess, sys\nwhile True:\n    try:\n        subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(100)'])\n"
    "    except OSError:\n        pass\n",
])
def test_fork_bomb_is_contained(iso, src):
    if not iso.uid_drop and not iso.user_namespace:
        pytest.skip(f"no process limit at isolation level {iso.level} (RLIMIT_NPROC needs a dedicated uid)")
    with Contained(script_limit()):  # contained: on time, nothing left running (checked on exit), host alive
        r = run_program(src, "", LIM)
    assert r.status in ("ok", "error", "killed", "timeout"), r  # whatever the bomb's own fate
    with Contained(script_limit()):  # and the pool still works afterwards
        assert run_program("print(1)", "", LIM).stdout == "1\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("src", ["x = bytearray(10 * 1024 ** 3)\nprint('allocated')\n",
                                 "x = []\nwhile True:\n    x.append(bytearray(10 ** 7))\n",
                                 "x = ' ' * (10 * 1024 ** 3)\nprint('allocated')\n"])
def test_memory_bomb_fails_cleanly(src):
    with Contained(script_limit()):
        r = run_program(src, "", LIM)
        assert r.status in ("error", "killed") and "allocated" not in r.stdout
        assert "MemoryError" in r.stderr or r.status == "killed"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "in-process"])
def test_memory_bomb_in_tests_mode_fails_cleanly(isolate):
    src = "def f(x):\n    big = bytearray(10 * 1024 ** 3)\n    return x + 1\n"
    with Contained(script_limit()):
        r = run_tests(src, F_UNITS, entry=["f"], isolate_calls=isolate, limits=LIM)
    assert not r.passed and "MemoryError" in (r.error or ""), r


@pytest.mark.timeout(60)
@pytest.mark.parametrize("src", ["while True:\n    print('x' * 1000)\n",
                                 "import sys\nwhile True:\n    sys.stderr.write('y' * 10000)\n",
                                 "import os\nwhile True:\n    os.write(1, b'z' * 65536)\n",
                                 "print('x' * (100 * 1024 * 1024))\n"])
def test_output_flood_is_capped(src):
    with Contained(script_limit()):
        r = run_program(src, "", LIM)
        assert r.status == "output_limit", r.status
        assert len(r.stdout) <= LIM.max_output_bytes and len(r.stderr) <= LIM.max_stderr_bytes + 65536


@pytest.mark.timeout(60)
def test_output_flood_in_tests_mode():
    src = "while True:\n    print('spam' * 1000)\n"
    with Contained(script_limit()):
        r = run_tests(src, F_UNITS, entry=["f"], limits=LIM)
        assert not r.passed and r.status == "output_limit"


@pytest.mark.timeout(60)
def test_disk_filling_is_bounded():
    src = dedent("""
        n = 0
        try:
            with open('big', 'wb') as f:
                while True:
                    f.write(b'0' * (1 << 20)); n += 1
        except Exception as e:
            print(type(e).__name__, n)
        for i in range(100000):
            try:
                open(f'f{i}', 'w').close()
            except Exception as e:
                print(type(e).__name__, i); break
    """)
    with Contained(script_limit()):
        r = run_program(src, "", LIM)
        assert r.status in ("ok", "error", "killed", "timeout")


# ----------------------------------------------------------------------------------------------------------------------
# Attacks on the trainer and the host
# ----------------------------------------------------------------------------------------------------------------------

KILLERS = [
    "import os\nos.kill(os.getppid(), 9)\n",
    "import os\nos.killpg(os.getpgid(0), 9)\n",
    "import os\nos.kill(-1, 9)\n",
    "import os\nfor p in os.listdir('/proc'):\n    if p.isdigit() and int(p) != os.getpid():\n"
    "        try:\n            os.kill(int(p), 9)\n        except OSError:\n            pass\n",
    "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\n",
]


@pytest.mark.timeout(120)
def test_killing_parents_costs_only_its_own_run(iso):
    if iso.level == "rlimits-only":
        pytest.skip("without a separate uid the program runs as the trainer's user and can signal it")
    canary = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with SandboxPool(4) as pool, Contained(2 * script_limit()):
            jobs = [pool.submit(run_program, k, "", LIM) for k in KILLERS]
            jobs += [pool.submit(run_tests, GOOD_F, F_UNITS, entry=["f"], limits=LIM) for _ in range(3)]
            jobs += [pool.submit(run_tests, k + GOOD_F, F_UNITS, entry=["f"], limits=LIM) for k in KILLERS]
            results = [j.result() for j in jobs]
        good = results[len(KILLERS):len(KILLERS) + 3]
        assert all(r.passed for r in good), good  # neighbours running at the same time are unaffected
        assert canary.poll() is None, "a process outside the sandbox was killed"
        assert os.getppid() > 1
    finally:
        canary.kill()
        canary.wait()


@pytest.mark.timeout(60)
def test_writes_outside_its_dir_do_not_land(iso):
    tag = secrets.token_hex(8)
    targets = [os.path.join(TMP, f"pwned-{tag}"), f"/var/tmp/pwned-{tag}", f"/dev/shm/pwned-{tag}"]
    if iso.uid_drop or iso.namespaces:
        targets += [f"/etc/pwned-{tag}", f"/root/pwned-{tag}", os.path.join(os.getcwd(), f"pwned-{tag}")]
    src = "import os\nfor p in %r:\n    try:\n        open(p, 'w').write('x')\n        print('wrote', p)\n" \
          "    except OSError as e:\n        print('refused', p, e.errno)\n" % (targets,)
    if iso.level == "rlimits-only":
        pytest.skip("without a separate uid or namespaces the program can write wherever the trainer can")
    with Contained(script_limit()):
        r = run_program(src, "", LIM)
        assert r.status == "ok"
    try:
        for p in targets:
            if p.startswith(("/var/tmp", "/dev/shm", TMP)) and not iso.namespaces:
                continue  # world-writable dirs are only hidden with a private root
            assert not os.path.exists(p), f"{p} was written from the sandbox"
    finally:
        for p in targets:
            if os.path.exists(p):
                os.unlink(p)


@pytest.mark.timeout(60)
def test_private_working_dir_and_env():
    src = "import os\nopen('x.txt', 'w').write('hi')\nprint(os.getcwd() == os.environ['HOME'] == " \
          "os.environ['TMPDIR'], open('x.txt').read())\n"
    r = run_program(src, "", LIM)
    assert r.stdout == "True hi\n"
    r2 = run_program("import os\nprint(sorted(os.listdir('.')))\n", "", LIM)
    assert r2.stdout == "[]\n"  # nothing from the previous run


@pytest.mark.timeout(60)
def test_cannot_read_secret_files(iso):
    if iso.level == "rlimits-only":
        pytest.skip("without a separate uid the program can read what the trainer can")
    secret = secrets.token_hex(16)
    fd, path = tempfile.mkstemp(prefix="inferl-secret-")
    os.write(fd, secret.encode())
    os.close(fd)
    os.chmod(path, 0o600)
    here = os.path.abspath(__file__)
    src = dedent(f"""
        for p in [{path!r}, {here!r}, '/etc/shadow', '/proc/1/environ']:
            try:
                print(open(p).read()[:100])
            except Exception as e:
                print('refused', type(e).__name__)
    """)
    try:
        r = run_program(src, "", LIM)
        assert secret not in r.stdout
        if iso.namespaces:
            assert "Hostile programs" not in r.stdout  # the repository is not even visible
    finally:
        os.unlink(path)


@pytest.mark.timeout(60)
def test_no_network(iso):
    if not iso.network_isolated:
        pytest.skip(f"no network namespace at isolation level {iso.level}")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    srv.setblocking(False)
    port = srv.getsockname()[1]
    src = dedent(f"""
        import socket
        for host in ('127.0.0.1', 'localhost', '::1'):
            try:
                socket.create_connection((host, {port}), timeout=1)
                print('CONNECTED', host)
            except OSError as e:
                print('refused', host, e)
        print([n for _, n in socket.if_nameindex()])
    """)
    try:
        with Contained(script_limit()):
            r = run_program(src, "", LIM)
        assert "CONNECTED" not in r.stdout, r.stdout
        with pytest.raises(BlockingIOError):
            srv.accept()
    finally:
        srv.close()


# ----------------------------------------------------------------------------------------------------------------------
# Attacks on the verdict
# ----------------------------------------------------------------------------------------------------------------------

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


@pytest.mark.timeout(120)
@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "in-process"])
@pytest.mark.parametrize("src", EXITS)
def test_exiting_before_the_tests_fails(src, isolate):
    with Contained(script_limit()):
        r = run_tests(src + ("" if "def f" in src else BAD_F), F_UNITS, entry=["f"], isolate_calls=isolate,
                      limits=LIM)
    assert not r.passed


ALWAYS_EQUAL = [
    # the classic: an object equal to everything
    "class A:\n    def __eq__(self, o):\n        return True\n    __ne__ = lambda s, o: False\n"
    "    __hash__ = object.__hash__\ndef f(x):\n    return A()\n",
    # a subclass of int that claims equality
    "class I(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\ndef f(x):\n    return I(0)\n",
    # arithmetic that always lands within tolerance, for `abs(f(x) - y) < eps` tests
    "class Z:\n    def __sub__(self, o):\n        return 0\n    __rsub__ = __sub__\n    def __eq__(self, o):\n"
    "        return True\n    __hash__ = object.__hash__\ndef f(x):\n    return Z()\n",
    # a str subclass for string tests
    "class S(str):\n    def __eq__(self, o):\n        return True\n    __hash__ = str.__hash__\ndef f(x):\n    return S('')\n",
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "in-process"])
@pytest.mark.parametrize("src", ALWAYS_EQUAL)
def test_always_equal_objects_fail(src, isolate):
    units = F_UNITS + ["assert abs(f(2) - 3) < 1e-9", "assert f(3) in [4]", "assert not (f(5) != 6)"]
    r = run_tests(src, units, entry=["f"], isolate_calls=isolate, limits=LIM)
    assert not r.passed, r


PATCHERS = [
    "import builtins\nbuiltins.print = lambda *a, **k: None\n",
    "import sys\nsys.stdout.write = lambda *a: 0\nsys.stderr.write = lambda *a: 0\n",
    "import builtins\nbuiltins.AssertionError = type('E', (BaseException,), {})\n",
    "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.len = lambda x: 0\nbuiltins.isinstance = lambda *a: True\n",
    "import math\nmath.isclose = lambda *a, **k: True\n",
    "import operator\noperator.eq = lambda a, b: True\n",
    "abs = lambda x: 0\nisclose = lambda *a, **k: True\n",
    "import builtins\nbuiltins.exec = lambda *a, **k: None\nbuiltins.compile = lambda *a, **k: None\n",
    "import os\nos.write = lambda fd, b: len(b)\nos._exit = lambda c: None\n",
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "in-process"])
@pytest.mark.parametrize("patch", PATCHERS)
def test_patched_builtins_do_not_change_the_verdict(patch, isolate):
    units = F_UNITS + ["import math\nassert math.isclose(f(0.5), 1.5)", "assert abs(f(2) - 3) < 1e-9"]
    bad = run_tests(patch + BAD_F, units, entry=["f"], isolate_calls=isolate, limits=LIM)
    assert not bad.passed, bad
    good = run_tests(patch + GOOD_F, units, entry=["f"], isolate_calls=isolate, limits=LIM)
    assert good.passed, good  # ... and a correct solution still passes


FORGERS = [
    # guessed markers on stdout/stderr
    "print('PASSED')\nprint('All tests passed')\nprint('END 3 1')\nimport sys\nsys.stderr.write('END 3 1\\n')\n",
    # guessed records on every file descriptor, then a clean exit
    "import os\nfor fd in range(3, 256):\n    try:\n        os.write(fd, b'END 3 1\\nU 0 1\\nP 0\\n')\n"
    "    except OSError:\n        pass\nos._exit(0)\n",
    # read every inherited fd looking for the nonce, replay what is found, exit
    "import os, re\nfound = b''\nfor fd in range(3, 256):\n    try:\n        os.set_blocking(fd, False)\n"
    "        found += os.read(fd, 65536)\n    except OSError:\n        pass\n"
    "for tok in set(re.findall(rb'[0-9a-f]{32}', found)):\n    for fd in range(1, 256):\n        try:\n"
    "            os.write(fd, tok + b' END 3 1\\n')\n        except OSError:\n            pass\nos._exit(0)\n",
    # introspection: frames, gc, signal-handler frames, /proc/self/mem
    "import sys, os\ntry:\n    f = sys._getframe()\n    while f:\n        for v in list(f.f_locals.values()):\n"
    "            if isinstance(v, str) and len(v) == 32:\n                os.write(3, (v + ' END 3 1\\n').encode())\n"
    "        f = f.f_back\nexcept Exception:\n    pass\nos._exit(0)\n",
    "import gc, os, re\ntry:\n    for o in gc.get_objects():\n        for s in (o.values() if isinstance(o, dict) else o if"
    " isinstance(o, (list, tuple)) else []):\n            if isinstance(s, str) and re.fullmatch('[0-9a-f]{32}', s):\n"
    "                for fd in range(3, 64):\n                    try:\n                        os.write(fd, (s + ' END 3 1\\n')"
    ".encode())\n                    except OSError:\n                        pass\nexcept Exception:\n    pass\nos._exit(0)\n",
    "import signal, os\ndef h(s, frame):\n    while frame:\n        frame = frame.f_back\nsignal.signal(signal.SIGUSR1, h)\n"
    "os.kill(os.getpid(), signal.SIGUSR1)\nos._exit(0)\n",
    "import os\ntry:\n    open('/proc/self/mem', 'rb')\n    print('OPENED')\nexcept Exception:\n    pass\nos._exit(0)\n",
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "in-process"])
@pytest.mark.parametrize("src", FORGERS)
def test_forged_pass_markers_fail(src, isolate):
    with Contained(script_limit()):
        r = run_tests(src + BAD_F, F_UNITS, entry=["f"], isolate_calls=isolate, limits=LIM)
    assert not r.passed, r
    assert "OPENED" not in r.stdout


@pytest.mark.timeout(60)
def test_tests_and_expected_values_are_not_in_the_candidate_process():
    """Isolated calls: the candidate's process is forked before the tests are read, so it cannot look them up."""
    src = dedent("""
        import gc
        def f(x):
            hits = [o for o in gc.get_objects() if isinstance(o, str) and 'assert f(' in o]
            return len(hits)
    """)
    r = run_tests(src, ["assert f(1) == 0"], entry=["f"], limits=LIM)
    assert r.passed, r


@pytest.mark.timeout(60)
def test_pool_map_keeps_order_and_runs_in_parallel():
    """Each job waits at a barrier for all four: the map only completes if four programs run at once."""
    barrier = threading.Barrier(4, timeout=30)

    def job(p):
        barrier.wait()
        return run_program(p, "", LIM).stdout

    progs = [f"print({i})" for i in range(4)]
    with SandboxPool(4) as pool:
        out = pool.map(job, progs)
    assert out == [f"{i}\n" for i in range(4)]


@pytest.mark.timeout(60)
def test_early_stop_skips_remaining_cases():
    seen = []
    rs = run_cases("print(input())", ["a", "b", "c", "d"], LIM, on_case=lambda i, r: seen.append(i) or i < 1)
    assert rs[0].stdout == "a\n" and rs[1].stdout == "b\n" and rs[3].status == "skipped"


@pytest.mark.timeout(120)
def test_degraded_level_still_contains_basic_abuse(monkeypatch):
    """rlimits-only (what a non-root user without user namespaces gets): hangs, floods and fake exits still fail."""
    monkeypatch.setattr(sandbox, "_iso", sandbox.Isolation("rlimits-only", False, False, False))
    with Contained(script_limit()):
        assert run_program("while True:\n    pass\n", "", LIM).status == "timeout"
    with Contained(script_limit()):
        assert run_program("while True:\n    print('x' * 1000)\n", "", LIM).status == "output_limit"
    before = _sandbox_leftovers()
    for src in EXITS[:3] + ALWAYS_EQUAL[:1]:
        assert not run_tests(src + ("" if "def f" in src else BAD_F), F_UNITS, entry=["f"], limits=LIM).passed
    assert run_tests(GOOD_F, F_UNITS, entry=["f"], limits=LIM).passed
    assert _sandbox_leftovers() <= before  # its temporary working directories are removed
