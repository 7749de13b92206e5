"""Child side of inferl's code sandbox (see pool.py for the parent side, __init__.py for the design notes).

Run by the parent as a script in a fresh interpreter: `python -S -s -B child.py PUB SEC OUT`, where PUB, SEC
and OUT are inherited pipe fds: PUB carries the public part of the job (sandbox settings, the candidate's source,
stdin of each case), SEC the secret part (the per-run nonce, the tests and their expected values), and OUT is the
record channel back to the parent. Only the standard library is imported here.

The process first confines itself (namespaces, private root, rlimits, unprivileged uid; see `_enter`) and only then
touches untrusted code. Wherever possible untrusted code runs in a *forked child* that never holds OUT nor sees SEC:
  - script mode (stdin/stdout programs): one fork per case; the parent compares the outputs.
  - tests mode with isolated calls (HumanEval, MBPP, APPS call-based): a fork runs the candidate module and serves
    calls over a pipe; this process runs the (trusted) tests and gets plain data back (marshal, type-checked), so the
    candidate can neither forge a record nor return an object that compares equal to everything.
  - tests mode in-process (fallback for tests that construct the candidate's own classes): candidate and tests share
    this process; the nonce, stricter comparisons and an audit hook defend it, with documented residual risk.
"""

import os
import sys

# Linux constants (stable ABI).
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_NODIRATIME, MS_NOATIME, MS_RELATIME = 2048, 1024, 1 << 21
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
SETUP_FAILED = 71  # exit code when confinement could not be established
MAX_JOB_BYTES = 1 << 30


class _SetupError(Exception):
    pass


def _read_all(fd, cap=MAX_JOB_BYTES):
    chunks, n = [], 0
    while True:
        b = os.read(fd, 1 << 16)
        if not b:
            return b"".join(chunks)
        n += len(b)
        if n > cap:
            raise _SetupError("job too large")
        chunks.append(b)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _libc():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    return ctypes, libc


def _check(ctypes, rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise _SetupError(f"{what}: {os.strerror(err)} (errno {err})")


# ----------------------------------------------------------------------------------------------------------------------
# Confinement
# ----------------------------------------------------------------------------------------------------------------------

def _enter(pub, out_fd):
    """Confine this process. Forks once: the outer process waits and relays the exit status; the inner one (pid 1 of a
    new pid namespace when namespaces are on) returns from here confined, as the sandbox user, in its working dir."""
    iso, lim = pub["iso"], pub["limits"]
    stage = "start"
    try:
        ctypes, libc = _libc()
        # die with the trainer: without it, a sleeping program would outlive a trainer killed mid-run (the wall-clock
        # limit is the trainer's to enforce, and a sleep uses no CPU time)
        libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
        if os.getppid() != pub.get("parent", os.getppid()):
            os._exit(SETUP_FAILED)  # the trainer died before the signal was armed
        if iso["ns"]:
            stage = "unshare"
            flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
            uid, gid = os.getuid(), os.getgid()
            if iso["userns"]:
                flags |= CLONE_NEWUSER
            _check(ctypes, libc.unshare(flags), "unshare")
            if iso["userns"]:
                stage = "uid_map"
                for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                    with open(f"/proc/self/{name}", "w") as f:
                        f.write(text)
        outer = os.getpid()
        stage = "fork"
        pid = os.fork()
        if pid:
            _outer(pid, iso)  # never returns
        libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
        if not iso["ns"] and os.getppid() != outer:
            os._exit(SETUP_FAILED)
        if iso["ns"]:
            stage = "root"
            _build_root(ctypes, libc, iso, lim)
        else:
            stage = "workdir"
            os.chdir(iso["workdir"])
        stage = "rlimits"
        _set_rlimits(lim, cpu_s=lim["total_cpu_s"])
        stage = "drop"
        if iso["uid"] is not None:
            os.setgroups([])
            os.setgid(iso["gid"])
            os.setuid(iso["uid"])
        elif iso["userns"]:
            _drop_caps(ctypes, libc)
        _check(ctypes, libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # credential changes clear it; set it again
        home = os.getcwd()
        os.environ.clear()
        os.environ.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "TMP": home,
                           "TEMP": home, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"})
        sys.path[:] = ([p for p in sys.path if p and os.path.isdir(p)]
                       + [p for p in pub["site_dirs"] if os.path.isdir(p)])
        sys.dont_write_bytecode = True
    except BaseException as e:  # noqa: BLE001 - report any failure, never run untrusted code half-confined
        try:
            os.write(out_fd, f"SETUP {stage} {type(e).__name__}: {e}\n".replace("\r", " ").encode()[:4000])
        finally:
            os._exit(SETUP_FAILED)


def _outer(pid, iso):
    """Wait for the inner process; exit with its status (128+signal when killed). Holds no pipe of the job."""
    try:
        os.closerange(0, 1 << 16)
    except OSError:
        pass
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            status = 0
            break
    code = os.waitstatus_to_exitcode(status)
    if not iso["ns"] and iso["uid"] is not None:
        _sweep_uid(iso["uid"], iso["gid"])
    os._exit(code if code >= 0 else 128 - code)


def _sweep_uid(uid, gid):
    """Without a pid namespace: kill whatever the sandbox uid left behind (it may have escaped our process group)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.kill(-1, 9)  # every process of this uid except the caller
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _mount(ctypes, libc, src, target, fstype, flags, data=None):
    def enc(s):
        return None if s is None else s.encode()

    _check(ctypes, libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {target}")


def _makedirs(path):
    os.makedirs(path, mode=0o755, exist_ok=True)


def _build_root(ctypes, libc, iso, lim):
    """A private root: a size-limited tmpfs holding read-only binds of the system and Python dirs, a few device nodes,
    a fresh /proc of our pid namespace and a writable /tmp (the working dir). Host /tmp, /home, /root, /work, ...
    are not visible at all."""
    _mount(ctypes, libc, None, "/", None, MS_REC | MS_PRIVATE)
    root = next(p for p in ("/tmp", "/mnt", "/var/tmp", "/dev/shm") if os.path.isdir(p))
    _mount(ctypes, libc, "tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={int(lim['tmpfs_mb'])}m,nr_inodes=4096,mode=755")
    for kind, path, arg in iso["binds"]:
        dst = root + path
        if kind == "link":
            _makedirs(os.path.dirname(dst))
            os.symlink(arg, dst)
            continue
        if not os.path.exists(path):
            continue
        _makedirs(dst)
        _mount(ctypes, libc, path, dst, None, MS_BIND | MS_REC)
        st = os.statvfs(dst)
        keep = 0
        for f_flag, ms in ((os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME),
                           (os.ST_NODIRATIME, MS_NODIRATIME), (getattr(os, "ST_RELATIME", 4096), MS_RELATIME)):
            if st.f_flag & f_flag:
                keep |= ms
        _mount(ctypes, libc, None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | keep)
    dev = root + "/dev"
    _makedirs(dev)
    for name in ("null", "zero", "full", "random", "urandom"):
        if os.path.exists("/dev/" + name):
            open(f"{dev}/{name}", "w").close()
            _mount(ctypes, libc, "/dev/" + name, f"{dev}/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    for d in (dev + "/shm", root + "/tmp"):
        os.mkdir(d)
    _makedirs(root + "/proc")
    try:
        _mount(ctypes, libc, "proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except _SetupError:
        pass  # some container runtimes refuse a fresh procfs; Python does not need it
    if iso["uid"] is not None:
        for d in (dev + "/shm", root + "/tmp"):
            os.chown(d, iso["uid"], iso["gid"])
        os.chmod(root + "/tmp", 0o700)
        os.chmod(dev + "/shm", 0o700)
    else:
        os.chmod(root + "/tmp", 0o1777)
        os.chmod(dev + "/shm", 0o1777)
    os.chroot(root)
    os.chdir("/tmp")


def _drop_caps(ctypes, libc):
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]  # noqa: RUF012 - ctypes' own protocol

    class Data(ctypes.Structure):
        _fields_ = [  # noqa: RUF012 - ctypes' own protocol
            ("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    hdr, data = Header(0x20080522, 0), (Data * 2)()
    _check(ctypes, libc.capset(ctypes.byref(hdr), data), "capset")


def _set_rlimits(lim, cpu_s):
    import resource as R
    mb = 1 << 20
    cpu = max(1, int(-(-cpu_s // 1)))
    table = [(R.RLIMIT_CPU, cpu, cpu + 1), (R.RLIMIT_AS, int(lim["memory_mb"] * mb), None),
             (R.RLIMIT_FSIZE, int(lim["file_size_mb"] * mb), None), (R.RLIMIT_NOFILE, int(lim["max_open_files"]), None),
             (R.RLIMIT_NPROC, int(lim["max_procs"]), None), (R.RLIMIT_CORE, 0, None)]
    for res, soft, hard in table:
        hard = soft if hard is None else hard
        _cur_soft, cur_hard = R.getrlimit(res)
        if cur_hard != R.RLIM_INFINITY:
            hard = min(hard, cur_hard)
            soft = min(soft, hard)
        R.setrlimit(res, (soft, hard))


# ----------------------------------------------------------------------------------------------------------------------
# Script mode: one forked child per stdin case
# ----------------------------------------------------------------------------------------------------------------------

def _run_script(pub, out_fd):
    import select
    import time
    lim = pub["limits"]
    try:
        code = compile(pub["source"], "solution.py", "exec")
    except BaseException as e:  # noqa: BLE001
        _write_all(out_fd, f"COMPILE {_oneline(e)}\n".encode())
        return 0
    cap = int(lim["max_output_bytes"])
    for i, data in enumerate(pub["inputs"]):
        in_fd = os.memfd_create("stdin")
        _write_all(in_fd, data)
        os.lseek(in_fd, 0, 0)
        r, w = os.pipe()
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                os.dup2(in_fd, 0)
                os.dup2(w, 1)
                _close_fds_except((0, 1, 2))
                _set_rlimits(lim, cpu_s=lim["cpu_s"])
                _exec_main(code)
            except BaseException as e:  # noqa: BLE001
                os.write(2, f"sandbox: case setup failed: {_oneline(e)}\n".encode())
            finally:
                os._exit(1)
        os.close(w)
        os.close(in_fd)
        pidfd = os.pidfd_open(pid)
        out, n, status, exited = [], 0, "ok", None
        deadline = t0 + float(lim["timeout_s"])
        open_out = True
        while exited is None:
            left = deadline - time.monotonic()
            if left <= 0:
                status = "timeout"
                break
            ready, _, _ = select.select([pidfd] + ([r] if open_out else []), [], [], left)
            if r in ready:
                b = os.read(r, 1 << 16)
                if not b:
                    open_out = False
                else:
                    n += len(b)
                    if n > cap:
                        status = "output_limit"
                        break
                    out.append(b)
            if pidfd in ready:
                exited = os.waitpid(pid, 0)[1]
        if exited is None:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        elif open_out:  # the program exited: collect what is still buffered in the pipe
            os.set_blocking(r, False)
            while n <= cap:
                try:
                    b = os.read(r, 1 << 16)
                except BlockingIOError:
                    break
                if not b:
                    break
                n += len(b)
                out.append(b)
            if n > cap:
                status = "output_limit"
        os.close(r)
        os.close(pidfd)
        wall = time.monotonic() - t0
        _kill_stragglers(pub["iso"])
        rc = os.waitstatus_to_exitcode(exited) if exited is not None else None
        payload = b"".join(out)[:cap]
        _write_all(out_fd, f"CASE {i} {status} {rc} {wall:.4f} {len(payload)}\n".encode() + payload)
    return 0


def _exec_main(code):
    """Run the program as __main__ in this (forked) process and exit with its status, like `python solution.py`."""
    import builtins
    rc = 0
    try:
        exec(code, {"__name__": "__main__", "__builtins__": builtins, "__file__": "solution.py"})
    except SystemExit as e:
        c = e.code
        rc = 0 if c is None else (c if isinstance(c, int) else 1)
        if not isinstance(c, (int, type(None))):
            try:
                print(c, file=sys.stderr)
            except BaseException:  # noqa: BLE001
                pass
    except BaseException:  # noqa: BLE001
        rc = 1
        try:
            import traceback
            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    try:
        if "threading" in sys.modules:  # programs that run main() in a thread (deep recursion) must finish
            sys.modules["threading"]._shutdown()
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            rc = rc or 1
    os._exit(rc & 0xFF)


def _close_fds_except(keep):
    top = 1 << 16
    prev = -1
    for fd in sorted(keep):
        if fd > prev + 1:  # os.closerange(a, b) with b <= a closes everything on some Python versions
            os.closerange(prev + 1, fd)
        prev = fd
    os.closerange(prev + 1, top)


def _kill_stragglers(iso):
    """After a case: kill whatever the program left running (background children) and reap zombies. Only where that
    cannot hit anyone else: as pid 1 of our own pid namespace, or as a dedicated uid."""
    if (iso["ns"] and os.getpid() == 1) or iso["uid"] is not None:
        try:
            os.kill(-1, 9)
        except OSError:
            pass
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _oneline(e):
    try:
        text = f"{type(e).__name__}: {e}"
    except BaseException:  # noqa: BLE001
        text = "exception"
    return text.replace("\r", " ").replace("\n", " ")[:1000]


# ----------------------------------------------------------------------------------------------------------------------
# Probe and entry point
# ----------------------------------------------------------------------------------------------------------------------

def _probe(pub, out_fd):
    """Report what the confinement achieved, from the inside."""
    import errno
    import json
    import socket
    info = {"uid": os.getuid(), "pid": os.getpid(), "cwd": os.getcwd()}
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(1.0)
        s.connect(("127.0.0.1", int(pub.get("probe_port", 9))))
        info["net"] = "connected"
    except OSError as e:
        info["net"] = errno.errorcode.get(e.errno, str(e.errno))
    try:
        info["ifaces"] = [n for _, n in socket.if_nameindex()]
    except OSError:
        info["ifaces"] = None
    info["write_outside"] = False
    for target in (pub.get("probe_write"), f"/inferl-probe-{os.getpid()}", f"/etc/inferl-probe-{os.getpid()}"):
        if not target or os.path.dirname(target) == os.getcwd():
            continue
        try:
            with open(target, "w") as f:
                f.write("x")
            if target != pub.get("probe_write"):  # (that one is checked by the parent, on the host)
                info["write_outside"] = True
                os.unlink(target)
        except OSError:
            pass
    info["host_visible"] = bool(pub.get("probe_visible")) and os.path.exists(pub["probe_visible"])
    try:
        import decimal  # noqa: F401 - a module not loaded yet: can the sandbox user read the standard library?
        import heapq  # noqa: F401
        info["stdlib"] = True
    except ImportError:
        info["stdlib"] = False
    _write_all(out_fd, ("PROBE " + json.dumps(info) + "\n").encode())


def main():
    pub_fd, sec_fd, out_fd = (int(a) for a in sys.argv[1:4])
    import marshal
    pub = marshal.loads(_read_all(pub_fd))
    os.close(pub_fd)
    mode = pub["mode"]
    harness = None
    if mode == "tests":
        import harness  # next to this file (with remote.py, strict.py): imported before
        # the root is switched, while this directory is still visible
    elif mode == "probe":
        import errno  # noqa: F401 - the probe's own needs, before a dropped uid may lose the standard library
        import json  # noqa: F401
        import socket  # noqa: F401
    del sys.path[0]  # the script's own directory
    _enter(pub, out_fd)
    if mode == "probe":
        os.close(sec_fd)
        _probe(pub, out_fd)
        os._exit(0)
    if mode == "script":
        os.close(sec_fd)
        os._exit(_run_script(pub, out_fd))
    os._exit(harness.run(pub, out_fd, sec_fd) or 0)


if __name__ == "__main__":
    main()
