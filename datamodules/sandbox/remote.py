"""The candidate's side of the sandbox's tests mode with isolated calls (imported by harness.py
before the child confines itself; standard library only).

The candidate module lives in a forked process that has neither the record channel nor the secret part of the job
(tests, expected values, nonce) and answers calls over a pipe with plain data (marshal frames, exact built-in types
only); `_Remote` is the test process's end, which type-checks every reply before the tests see it.
"""

import builtins
import marshal
import os
import sys

FRAME_CAP = 64 << 20
_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_CONTAINERS = (list, tuple, dict, set, frozenset)
_MUTABLE = (list, dict, set, bytearray)
_TYPE_TAG = "\x00inferl:type"  # built-in classes passed as arguments (e.g. `remove_datatype(t, int)`) travel by name


def _enc_arg(v):
    if type(v) is type and builtins.__dict__.get(v.__name__) is v:
        return (_TYPE_TAG, v.__name__)
    return v


def _dec_arg(v):
    if type(v) is tuple and len(v) == 2 and v[0] == _TYPE_TAG and type(v[1]) is str:
        t = builtins.__dict__.get(v[1])
        if type(t) is type:
            return t
    return v
# I/O helpers bind their functions as defaults (evaluated at import, before any candidate code) so that a candidate
# patching os.write & co. in its own process cannot break the call channel of a correct solution.
def _read_exact(fd, n, read=os.read):
    chunks, got = [], 0
    while got < n:
        b = read(fd, min(n - got, 1 << 20))
        if not b:
            return None
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _send(fd, obj, write=os.write, dumps=marshal.dumps):
    data = dumps(obj)
    data = len(data).to_bytes(4, "little") + data
    view = memoryview(data)
    while view:
        view = view[write(fd, view):]


def _recv(fd, cap=FRAME_CAP, loads=marshal.loads):
    head = _read_exact(fd, 4)
    if head is None:
        return None
    n = int.from_bytes(head, "little")
    if n > cap:
        raise ValueError(f"reply of {n} bytes exceeds the {cap}-byte cap")
    data = _read_exact(fd, n)
    if data is None:
        return None
    return loads(data)


def _oneline(e):
    try:
        text = f"{type(e).__name__}: {e}"
    except BaseException:  # noqa: BLE001
        text = "exception"
    return text.replace("\r", " ").replace("\n", " ")[:500]


def _close_fds_except(keep):
    prev = -1
    for fd in sorted(keep):
        if fd > prev + 1:  # os.closerange(a, b) with b <= a closes everything on some Python versions
            os.closerange(prev + 1, fd)
        prev = fd
    os.closerange(prev + 1, 1 << 16)


# ----------------------------------------------------------------------------------------------------------------------
# Candidate process (isolated calls)
# ----------------------------------------------------------------------------------------------------------------------

def _to_plain(v, depth=0):
    """Exact built-in copy of v (candidate side; the harness checks the result again)."""
    t = type(v)
    if t in _SCALARS:
        return v
    if depth > 200:
        raise TypeError("value nested too deeply")
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    if isinstance(v, dict):
        return {_to_plain(k, depth + 1): _to_plain(x, depth + 1) for k, x in dict.items(v)}
    for base in (list, tuple, set, frozenset):
        if isinstance(v, base):
            return base(_to_plain(x, depth + 1) for x in base.__iter__(v))
    np = sys.modules.get("numpy")
    if np is not None and isinstance(v, (np.generic, np.ndarray)):
        return _to_plain(v.tolist(), depth + 1)
    raise TypeError(f"the function returned a {t.__name__} object; only built-in data types can be checked")


def _to_wire(v):
    import itertools
    import re
    import types
    t = type(v)
    if t is range:
        return "range", (v.start, v.stop, v.step)
    if t is re.Match:
        return "match", (v.span(), (v.group(0), *v.groups()), v.groupdict())
    if isinstance(v, (types.GeneratorType, map, filter, zip, enumerate, reversed, itertools.chain)) or (
            t.__module__ in ("builtins", "itertools") and hasattr(t, "__next__")):
        items = list(itertools.islice(v, 10_000_001))
        if len(items) > 10_000_000:
            raise TypeError("iterator too long")
        return "iter", _to_plain(items)
    return "v", _to_plain(v)


def _serve(code, req_r, resp_w):
    ns = {"__name__": "solution", "__builtins__": builtins, "__file__": "solution.py"}
    saved = dict(builtins.__dict__)
    restore = builtins.__dict__.update  # our own helpers below need the real builtins back after candidate code
    try:
        exec(code, ns)
    except BaseException as e:  # noqa: BLE001 - SystemExit at import time is a failure too
        restore(saved)
        _send(resp_w, ("load_error", _oneline(e)))
        return
    restore(saved)
    _send(resp_w, ("ready",))
    while True:
        msg = _recv(req_r)
        if msg is None:
            return
        _, name, args, kwargs, mut_idx = msg
        args = tuple(_dec_arg(a) for a in args)
        kwargs = {k: _dec_arg(v) for k, v in kwargs.items()}
        fn = ns.get(name)
        if fn is None or not callable(fn):
            _send(resp_w, ("exc", "NameError", f"the solution does not define a function {name!r}"))
            continue
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001
            restore(saved)
            try:
                text = str(e)[:500]
            except BaseException:  # noqa: BLE001
                text = ""
            _send(resp_w, ("exc", type(e).__name__, text))
            continue
        restore(saved)
        try:
            kind, wire = _to_wire(result)
            muts = [_to_plain(args[i]) for i in mut_idx]
            _send(resp_w, ("ok", kind, wire, muts))
        except BaseException as e:  # noqa: BLE001
            _send(resp_w, ("exc", "TypeError", str(e)[:500]))


class _Remote:
    """Calls into the candidate's process. Every reply is checked to be plain built-in data before use."""

    def __init__(self, code, close):
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                devnull = os.open("/dev/null", os.O_RDONLY)
                os.dup2(devnull, 0)
                _close_fds_except((0, 1, 2, req_r, resp_w))
                _serve(code, req_r, resp_w)
            finally:
                os._exit(0)
        os.close(req_r)
        os.close(resp_w)
        self.pid, self.req, self.resp = pid, req_w, resp_r
        self.dead = None
        self.deadline = None
        self.timed_out = False

    def _wait(self):
        """Block until the candidate's process has something for us, or its time is up."""
        import select
        import time
        if self.deadline is None:
            return
        left = self.deadline - time.monotonic()
        if left <= 0 or not select.select([self.resp], [], [], left)[0]:
            self.timed_out = True
            self.dead = "the solution timed out"
            raise TimeoutError(self.dead)

    def wait_ready(self):
        try:
            self._wait()
            msg = _recv(self.resp)
        except BaseException as e:  # noqa: BLE001
            msg = ("load_error", f"bad reply: {_oneline(e)}")
        if msg is None:
            msg = ("load_error", "the solution's process exited while loading")
        if type(msg) is not tuple or not msg or msg[0] != "ready":
            self.dead = str(msg[1]) if type(msg) is tuple and len(msg) > 1 and type(msg[1]) is str else "load error"
            return self.dead
        return None

    def call(self, name, args, kwargs):
        if self.dead:
            raise RuntimeError(self.dead)
        mut_idx = [i for i, a in enumerate(args) if type(a) in _MUTABLE]
        try:
            _send(self.req, ("call", name, tuple(_enc_arg(a) for a in args),
                             {k: _enc_arg(v) for k, v in kwargs.items()}, mut_idx))
        except ValueError:
            raise TypeError("an argument cannot be sent to the solution (only built-in data types)") from None
        except OSError:
            self.dead = "the solution's process exited"
            raise RuntimeError(self.dead) from None
        self._wait()
        try:
            msg = _recv(self.resp)
        except BaseException as e:  # noqa: BLE001
            self.dead = f"bad reply from the solution's process: {_oneline(e)}"
            raise RuntimeError(self.dead) from None
        if msg is None:
            self.dead = "the solution's process exited"
            raise RuntimeError(self.dead)
        if type(msg) is not tuple or not msg:
            raise RuntimeError("malformed reply")
        if msg[0] == "ok" and len(msg) == 4 and _is_plain(msg[2]) and type(msg[3]) is list:
            _, kind, value, muts = msg
            if len(muts) == len(mut_idx):
                for i, m in zip(mut_idx, muts):
                    _apply_mutation(args[i], m)
            if kind == "iter" and type(value) is list:
                return iter(value)
            if kind == "range" and type(value) is tuple and len(value) == 3 and all(type(x) is int for x in value):
                return range(*value)
            if kind == "match" and type(value) is tuple and len(value) == 3:
                return _Match(*value)
            if kind == "v":
                return value
            raise RuntimeError("malformed reply")
        if msg[0] == "exc" and len(msg) == 3 and type(msg[1]) is str and type(msg[2]) is str:
            cls = builtins.__dict__.get(msg[1])
            if not (type(cls) is type and issubclass(cls, Exception)):
                cls = RuntimeError
            raise cls(msg[2])
        raise RuntimeError("malformed reply from the solution's process")

    def close(self):
        try:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        except OSError:
            pass


class _Match:
    """Stand-in for a re.Match returned by the candidate (truthy, with group/groups/span/start/end)."""

    def __init__(self, span, groups, groupdict):
        self._span, self._groups, self._dict = tuple(span), tuple(groups), dict(groupdict)

    def __bool__(self):
        return True

    def group(self, *idx):
        if not idx:
            return self._groups[0]
        vals = [self._dict[i] if isinstance(i, str) else self._groups[i] for i in idx]
        return vals[0] if len(vals) == 1 else tuple(vals)

    def __getitem__(self, i):
        return self.group(i)

    def groups(self, default=None):
        return tuple(default if g is None else g for g in self._groups[1:])

    def groupdict(self, default=None):
        return {k: default if g is None else g for k, g in self._dict.items()}

    def span(self, i=0):
        return self._span if i == 0 else (-1, -1)

    def start(self, i=0):
        return self.span(i)[0]

    def end(self, i=0):
        return self.span(i)[1]

    def __repr__(self):
        return f"<re.Match object; span={self._span}, match={self._groups[0]!r}>"


def _is_plain(v, depth=0):
    t = type(v)
    if t in _SCALARS:
        return True
    if depth > 200 or t not in _CONTAINERS:
        return False
    if t is dict:
        return all(_is_plain(k, depth + 1) and _is_plain(x, depth + 1) for k, x in v.items())
    return all(_is_plain(x, depth + 1) for x in v)


def _apply_mutation(arg, new):
    t = type(arg)
    if not _is_plain(new) and t is not bytearray:
        return
    if t is list and type(new) is list:
        arg[:] = new
    elif (t is dict and type(new) is dict) or (t is set and type(new) is set):
        arg.clear()
        arg.update(new)
    elif t is bytearray and type(new) is bytes:
        arg[:] = new
