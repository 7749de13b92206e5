"""Hostile programs against the code sandbox: resource abuse and attacks on the trainer and the host. Each must be
contained: the test process (and a canary) alive, the machine responsive, nothing left behind on the host, done within
its limit plus a small margin. Attacks on the verdict are in test_sandbox_verdicts.py."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from sandbox_testing import (
    ALWAYS_EQUAL,
    BAD_F,
    EXITS,
    F_UNITS,
    GOOD_F,
    LIM,
    MEM_LIM,
    TMP,
    Contained,
    dedent,
    sandbox_leftovers,
    sandbox_processes,
    script_limit,
    slot_uid_base,
)

from datamodules.sandbox import SandboxPool, isolation_level, run_cases, run_program, run_tests
from datamodules.sandbox import pool as sandbox_pool


@pytest.fixture(scope="module")
def iso():
    return isolation_level()


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
        real_probe = sandbox_pool._probe  # as on a host without namespaces or root: the stronger levels cannot start
        monkeypatch.setattr(sandbox_pool, "_probe", lambda cfg: (False, {"why": "unshare: Operation not permitted"})
                            if cfg["ns"] or cfg["uid_drop"] else real_probe(cfg))
        with caplog.at_level(logging.INFO, logger="datamodules.sandbox"):
            degraded = isolation_level(refresh=True)
        assert degraded.level == "rlimits-only" and not degraded.network_isolated
        warning = next(r for r in caplog.records if "degraded" in r.getMessage())
        assert warning.levelno == logging.WARNING
        text = warning.getMessage()
        assert "rlimits-only" in text and "network isolation" in text and "Operation not permitted" in text
        assert "bwrap=" in text and "unshare=" in text  # which tools the host has, for the diagnosis
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
    hangs = ("def f(x):\n    while True:\n        pass\n", "import time\ntime.sleep(60)\ndef f(x):\n    return x + 1\n")
    for src in hangs:
        with Contained(script_limit()):
            r = run_tests(src, F_UNITS, entry=["f"], limits=LIM)
            assert not r.passed and r.status == "timeout"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("src", [
    "import os\nwhile True:\n    os.fork()\n",
    "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "import os\nwhile True:\n    try:\n        if os.fork() == 0:\n            os.setsid()\n"
    "    except OSError:\n        pass\n",
    "import subprocess, sys\nwhile True:\n    try:\n"
    "        subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(100)'])\n"
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
    with Contained(MEM_LIM.startup_s + MEM_LIM.timeout_s):  # the memory limit binds, not the clock
        r = run_program(src, "", MEM_LIM)
        assert r.status in ("error", "killed") and "allocated" not in r.stdout
        assert "MemoryError" in r.stderr or r.status == "killed"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "in-process"])
def test_memory_bomb_in_tests_mode_fails_cleanly(isolate):
    src = "def f(x):\n    big = bytearray(10 * 1024 ** 3)\n    return x + 1\n"
    with Contained(MEM_LIM.startup_s + MEM_LIM.timeout_s):
        r = run_tests(src, F_UNITS, entry=["f"], isolate_calls=isolate, limits=MEM_LIM)
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


@pytest.mark.timeout(90)
def test_a_program_dies_with_a_trainer_killed_mid_run(iso):
    """The wall-clock limit is the trainer's to enforce and a sleep uses no CPU: if the trainer is SIGKILLed while a
    program runs, the program must go too (PR_SET_PDEATHSIG down the chain), not sleep on forever."""
    if not iso.uid_drop:
        pytest.skip(f"at isolation level {iso.level} the program's processes cannot be told apart from ours")
    trainer = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; from datamodules.sandbox import run_program, SandboxLimits\n"
         "print(os.getpid(), flush=True)\nrun_program('import time\\nprint(1, flush=True)\\ntime.sleep(600)', '', "
         "SandboxLimits(timeout_s=300))"],
        stdout=subprocess.PIPE, text=True, cwd=str(Path(__file__).resolve().parents[3]))
    try:
        lo = slot_uid_base(int(trainer.stdout.readline()))
        deadline = time.monotonic() + 30
        while not sandbox_processes(lo) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sandbox_processes(lo), "the sleeping program never started"
    finally:
        trainer.kill()
        trainer.wait()
    deadline = time.monotonic() + 10
    while sandbox_processes(lo) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sandbox_processes(lo), "the program outlived its trainer"


@pytest.mark.timeout(60)
def test_writes_outside_its_dir_do_not_land(iso):
    tag = secrets.token_hex(8)
    targets = [os.path.join(TMP, f"pwned-{tag}"), f"/var/tmp/pwned-{tag}", f"/dev/shm/pwned-{tag}"]
    if iso.uid_drop or iso.namespaces:
        targets += [f"/etc/pwned-{tag}", f"/root/pwned-{tag}", os.path.join(os.getcwd(), f"pwned-{tag}")]
    src = f"import os\nfor p in {targets!r}:\n    try:\n        open(p, 'w').write('x')\n        print('wrote', p)\n" \
          "    except OSError as e:\n        print('refused', p, e.errno)\n"
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
    monkeypatch.setattr(sandbox_pool, "_iso", sandbox_pool.Isolation("rlimits-only", False, False, False))
    with Contained(script_limit()):
        assert run_program("while True:\n    pass\n", "", LIM).status == "timeout"
    with Contained(script_limit()):
        assert run_program("while True:\n    print('x' * 1000)\n", "", LIM).status == "output_limit"
    before = sandbox_leftovers()
    for src in EXITS[:3] + ALWAYS_EQUAL[:1]:
        assert not run_tests(src + ("" if "def f" in src else BAD_F), F_UNITS, entry=["f"], limits=LIM).passed
    assert run_tests(GOOD_F, F_UNITS, entry=["f"], limits=LIM).passed
    assert sandbox_leftovers() <= before  # its temporary working directories are removed
