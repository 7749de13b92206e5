"""Run untrusted Python programs (model-written code) without letting them touch the run.

Every program runs in a fresh interpreter (child.py) that confines itself before any untrusted
code runs. What confinement is possible is detected once per process (`isolation_level()`), from strongest to weakest:

    namespaces+uid  (root)      new pid, net, mount, ipc and uts namespaces; a private root (a size-limited tmpfs with
                                read-only binds of /usr, /etc and the Python installation: the host's /tmp, /home,
                                /root, the repository and the datasets are not visible); runs as a dedicated uid per
                                concurrent slot; no network (only a down loopback); the pid namespace dies with it.
    userns          (non-root)  the same inside an unprivileged user namespace, capabilities dropped.
    uid-only        (root)      no namespaces: a dedicated uid (cannot write outside its directory, read 0600 files or
                                signal your processes); network and world-readable files stay reachable.
    rlimits-only                only rlimits, a process group and a temporary directory: the program can read your
                                files, use the network and signal your processes. Logged at WARNING.

At every level: its own session/process group, killed as a whole at the wall-clock limit; RLIMIT_CPU, RLIMIT_AS,
RLIMIT_NPROC (counted per uid, so it binds only with a dedicated uid or a user namespace), RLIMIT_FSIZE,
RLIMIT_NOFILE; no_new_privs; non-dumpable harness; a private working dir (HOME, TMPDIR, cwd) that is gone afterwards;
stdout/stderr read with caps (a flood is killed, never buffered whole).

Verdicts are decided here, in the parent, never from an exit code: stdin/stdout programs are compared with their
expected output here (the child never sees it); unit-test programs report through a separate channel where only lines
carrying a random per-run nonce count, and the candidate runs in a process that has neither that channel nor the
nonce (see harness.py for the in-process fallback and its residual risks).

Files: pool.py (limits, results, isolation detection, verdicts, the pool), launch.py (starting one child and reading
it with caps), child.py (the child: confinement, stdin/stdout cases), harness.py (the child's tests mode), remote.py
(the candidate's process for isolated calls), strict.py (the in-process defences). child.py, harness.py, remote.py and
strict.py run in the child as plain scripts (standard library only, importing each other by bare name), never in the
trainer.
"""

from datamodules.sandbox.pool import (
    ExecResult,
    Isolation,
    SandboxLimits,
    SandboxPool,
    TestResult,
    default_pool,
    isolation_level,
    run_cases,
    run_program,
    run_tests,
)

__all__ = ["ExecResult", "Isolation", "SandboxLimits", "SandboxPool", "TestResult", "default_pool", "isolation_level",
           "run_cases", "run_program", "run_tests"]
