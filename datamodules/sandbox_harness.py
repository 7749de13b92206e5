"""Tests mode of the sandbox child (imported by datamodules/sandbox_child.py before it confines itself; standard
library only, never imported by the trainer).

The job: a trusted `prelude` (e.g. the HumanEval prompt, whose helpers the tests call), the candidate's source, a test
`setup` and test `units` (code strings run in order in one test namespace), and the `entry` names that the tests call
on the candidate. Every `assert` in setup and units is rewritten to report its outcome, so the parent learns the
outcome of the first assertion evaluated (the visible example), how many assertions passed, and whether all passed.

Records go to the parent's channel as lines `<nonce> <TAG> ...`; the parent ignores lines without the nonce:
    N <n_asserts> <n_units>    once, before the candidate runs
    P <k> / X <k>              assertion k passed / failed for the first time
    FAIL <msg>                 the first failed assertion (where)
    ERR <msg>                  the first errors (candidate failed to load, an exception in a test)
    TIMEOUT                    isolated calls: the candidate's process did not answer within timeout_s
    U <i> <0|1>                unit i done, passed or not
    END <units_run> <0|1>      all done; 1 = every unit ran and every assertion held

Isolated calls (default): the candidate module lives in a forked process that has neither the record channel nor the
secret part of the job (tests, expected values, nonce) and answers calls with plain data (marshal, exact built-in
types only, type-checked here). The tests run here against those values, so the candidate cannot forge a record,
exit early with success, patch the tests' builtins, or return an object that equals everything.

In-process (fallback for tests that build the candidate's own classes): the candidate runs in this process. Defences:
tests run in their own namespace with a pristine copy of the builtins and snapshots of the modules they import;
values returned by entry calls must be built-in data (converted to exact types, so overridden __eq__ & co. are never
called); comparisons in asserts go through `_inferl_cmp`; an audit hook refuses frame and gc introspection, ctypes,
tracing, code construction, signal handlers and /proc. Residual risk: native-level memory access (e.g. numpy stride
tricks, crafted bytecode through marshal) could still find the nonce or patch the harness.
"""

import ast
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
_OPS = None  # filled lazily from operator


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
        return "match", (v.span(), (v.group(0),) + v.groups(), v.groupdict())
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
    elif t is dict and type(new) is dict:
        arg.clear()
        arg.update(new)
    elif t is set and type(new) is set:
        arg.clear()
        arg.update(new)
    elif t is bytearray and type(new) is bytes:
        arg[:] = new


# ----------------------------------------------------------------------------------------------------------------------
# Assertion rewriting
# ----------------------------------------------------------------------------------------------------------------------

_CMP_NAMES = {ast.Eq: "eq", ast.NotEq: "ne", ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt", ast.GtE: "ge",
              ast.In: "in", ast.NotIn: "not in"}


class _Rewriter(ast.NodeTransformer):
    """`assert E` -> try: _inferl_r = E' except BaseException as e: _inferl_r = _inferl_exc(k, e); _inferl_chk(k, r).
    Strict mode also wraps calls of entry names in _inferl_g(...) and comparisons in _inferl_cmp(...)."""

    def __init__(self, strict, wrap):
        self.strict, self.wrap, self.k = strict, frozenset(wrap), 0
        self.where = []  # (filename, line) of assertion k
        self._file = ""

    def rewrite(self, source, filename):
        self._file = filename
        tree = self.visit(ast.parse(source, filename))
        return compile(ast.fix_missing_locations(tree), filename, "exec")

    def visit_Call(self, node):
        self.generic_visit(node)
        if self.strict and isinstance(node.func, ast.Name) and node.func.id in self.wrap:
            return ast.copy_location(ast.Call(ast.Name("_inferl_g", ast.Load()), [node], []), node)
        return node

    def _truth(self, e):
        if isinstance(e, ast.Compare) and len(e.ops) == 1 and type(e.ops[0]) in _CMP_NAMES:
            return ast.Call(ast.Name("_inferl_cmp", ast.Load()),
                            [e.left, ast.Constant(_CMP_NAMES[type(e.ops[0])]), e.comparators[0]], [])
        if isinstance(e, ast.BoolOp):
            return ast.BoolOp(e.op, [self._truth(v) for v in e.values])
        if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.Not):
            return ast.UnaryOp(ast.Not(), self._truth(e.operand))
        return ast.Call(ast.Name("_inferl_truth", ast.Load()), [e], [])

    def visit_Assert(self, node):
        self.generic_visit(node)
        k = self.k
        self.k += 1
        self.where.append(f"{self._file} line {node.lineno}")
        test = self._truth(node.test) if self.strict else node.test
        r = ast.Name("_inferl_r", ast.Store())
        stmts = [
            ast.Try(body=[ast.Assign([r], test)],
                    handlers=[ast.ExceptHandler(
                        ast.Name("BaseException", ast.Load()), "_inferl_e",
                        [ast.Assign([ast.Name("_inferl_r", ast.Store())],
                                    ast.Call(ast.Name("_inferl_exc", ast.Load()),
                                             [ast.Constant(k), ast.Name("_inferl_e", ast.Load())], []))])],
                    orelse=[], finalbody=[]),
            ast.Expr(ast.Call(ast.Name("_inferl_chk", ast.Load()),
                              [ast.Constant(k), ast.Name("_inferl_r", ast.Load())], [])),
        ]
        return [ast.copy_location(s, node) for s in stmts]


def _free_names(sources):
    loads, stores = set(), set()
    for src in sources:
        for n in ast.walk(ast.parse(src)):
            if isinstance(n, ast.Name):
                (loads if isinstance(n.ctx, ast.Load) else stores).add(n.id)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                stores.add(n.name)
            elif isinstance(n, (ast.Import, ast.ImportFrom)):
                for a in n.names:
                    stores.add((a.asname or a.name).split(".")[0])
            elif isinstance(n, ast.arg):
                stores.add(n.arg)
    return loads - stores - set(builtins.__dict__)


def _module_names(sources):
    """Top-level modules the test code imports or uses by a bare standard-library module name (`math.isclose`)."""
    names = set()
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    for src in sources:
        for n in ast.walk(ast.parse(src)):
            if isinstance(n, ast.Import):
                names.update(a.name for a in n.names)
            elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
                names.add(n.module)
            elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in stdlib:
                names.add(n.value.id)
    return names


# ----------------------------------------------------------------------------------------------------------------------
# In-process defences
# ----------------------------------------------------------------------------------------------------------------------

def _strict_helpers(B):
    """Comparison helpers for in-process tests. B is a pristine copy of the builtins, taken before candidate code ran;
    everything here is bound now, so later patches of builtins or modules do not reach it."""
    import collections
    import datetime
    import decimal
    import itertools
    import operator
    import re
    import types
    _type, _issub, _bool, _len = B["type"], B["issubclass"], B["bool"], B["len"]
    _list, _tuple, _set, _fset, _dict, _int, _float, _complex, _str, _bytes, _barr = (
        list, tuple, set, frozenset, dict, int, float, complex, str, bytes, bytearray)
    flags_of = type.__dict__["__flags__"].__get__
    module_of = type.__dict__["__module__"].__get__
    int_copy, float_copy, str_copy = int.__int__, float.__float__, str.__str__
    items, list_iter, tuple_iter, set_iter, fset_iter = (dict.items, list.__iter__, tuple.__iter__, set.__iter__,
                                                         frozenset.__iter__)
    real, imag = complex.real.__get__, complex.imag.__get__
    scalars = frozenset(_SCALARS + (decimal.Decimal, datetime.date, datetime.datetime, datetime.time,
                                    datetime.timedelta))
    trusted = frozenset([types.GeneratorType, map, filter, zip, enumerate, reversed, range, collections.deque,
                         type(re.compile("")), type(re.match("", "")), types.FunctionType, types.BuiltinFunctionType,
                         itertools.chain, itertools.count, itertools.islice, itertools.product, itertools.permutations,
                         itertools.combinations, type(iter([])), type(iter(())), type(iter(set())), type(iter("")),
                         type(iter({})), type(iter({}.values())), type(iter({}.items())), type(iter(range(0))),
                         type({}.keys()), type({}.values()), type({}.items())])
    ops = {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le, "gt": operator.gt,
           "ge": operator.ge, "in": lambda a, b: a in b, "not in": lambda a, b: a not in b}
    fail = (False, None)

    def norm(x, depth=0):
        t = _type(x)
        if t in scalars:
            return True, x
        if depth > 100:
            return fail
        if t is _barr:
            return True, _barr(x)
        for base, it, build in ((_list, list_iter, None), (_tuple, tuple_iter, _tuple), (_set, set_iter, _set),
                                (_fset, fset_iter, _fset)):
            if t is base or _issub(t, base):
                out = []
                for e in it(x):
                    ok, v = norm(e, depth + 1)
                    if not ok:
                        return fail
                    out.append(v)
                return True, (out if build is None else build(out))
        if t is _dict or _issub(t, _dict):
            out = {}
            for k, v in items(x):
                ok1, nk = norm(k, depth + 1)
                ok2, nv = norm(v, depth + 1)
                if not (ok1 and ok2):
                    return fail
                out[nk] = nv
            return True, out
        if _issub(t, _int):
            return True, int_copy(x)
        if _issub(t, _float):
            return True, float_copy(x)
        if _issub(t, _str):
            return True, str_copy(x)
        if _issub(t, _complex):
            return True, _complex(real(x), imag(x))
        if _issub(t, _bytes):
            return True, _bytes(memoryview(x))
        if module_of(t) == "numpy" and not flags_of(t) & (1 << 9):  # a numpy type defined in C, not a subclass
            return norm(x.tolist(), depth + 1)
        return fail

    def g(v):
        ok, n = norm(v)
        if ok:
            return n
        if _type(v) in trusted:
            return v
        raise TypeError(f"the function returned a {_type(v).__name__} object; only built-in data types can be "
                        f"checked")

    def cmp(a, op, b):
        oka, na = norm(a)
        okb, nb = norm(b)
        if oka and okb:
            return _bool(ops[op](na, nb))
        if not oka and not okb:
            if _type(a) in trusted or _type(a) in scalars or _type(b) in trusted:
                return _bool(ops[op](a, b))
            return _bool(ops[op](a, b))  # both are the candidate's own objects: its comparison decides (residual)
        if op in ("ne", "not in"):
            return True
        return False  # an opaque object is never equal to, ordered with, or inside built-in data

    def truth(v):
        ok, n = norm(v)
        if ok:
            return _bool(n)
        return _bool(v) if _type(v) in trusted else False

    return g, cmp, truth


_BLOCKED_IMPORTS = frozenset({"_signal", "signal", "ctypes", "_ctypes", "_testcapi", "_testinternalcapi",
                              "_testbuffer", "_testmultiphase", "_xxsubinterpreters", "_xxinterpchannels", "gc"})
_FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back", "f_locals", "f_globals"})


def _harden():
    """Before in-process candidate code: no signal handlers (they receive frames), no ctypes/gc/frames/tracing."""
    for name in list(sys.modules):
        if name.split(".")[0] in _BLOCKED_IMPORTS:
            del sys.modules[name]
    blocked_prefix = ("ctypes.", "gc.get_", "sys._current_", "sys.set", "code.__new__", "function.__new__",
                      "cpython.", "sys._getframe", "sys.addaudithook")
    refuse = PermissionError

    def hook(event, args):
        if event == "import":
            if args and str.split(args[0], ".")[0] in _BLOCKED_IMPORTS:
                raise ImportError(f"import of {args[0]} is disabled in the sandbox")
        elif event == "object.__getattr__":
            if len(args) > 1 and args[1] in _FRAME_ATTRS:
                raise AttributeError(f"{args[1]} is disabled in the sandbox")
        elif event == "open":
            p = args[0] if args else None
            if type(p) is bytes:
                p = p.decode("utf-8", "replace")
            if type(p) is str and (p.startswith("/proc") or p.startswith("/dev/mem")):
                raise refuse("/proc is not readable in the sandbox")
        elif event.startswith(blocked_prefix):
            if event == "sys._getframe":
                raise ValueError("frame introspection is disabled in the sandbox")
            if event == "sys.setrecursionlimit" or event == "sys.setswitchinterval":
                return
            raise refuse(f"{event} is disabled in the sandbox")

    sys.addaudithook(hook)


def _module_snapshots(names):
    """Read-only-by-copy stand-ins for the modules the tests use, taken before candidate code runs."""
    import importlib
    import types
    snaps, by_real = {}, {}
    for name in sorted(names):
        try:
            mod = importlib.import_module(name)
        except BaseException:  # noqa: BLE001
            continue
        proxy = types.ModuleType(name)
        proxy.__dict__.update(mod.__dict__)
        snaps[name] = by_real[id(mod)] = proxy
    return snaps, by_real


# ----------------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------------

def run(pub, out_fd, sec_fd):
    """Run the tests job; returns the exit code. `pub` has the candidate's source and settings; the secret part (nonce,
    prelude, setup, units, entry names) is read from sec_fd only after the candidate's process has been forked."""
    os_write, os_exit = os.write, os._exit
    # The in-process path runs candidate code in this process: everything used after it is bound here, first.
    _exec, _enumerate, _int, _id, _type, _list, _set = exec, enumerate, int, id, type, list, set
    try:
        cand_code, load_error = compile(pub["source"], "solution.py", "exec"), None
    except BaseException as e:  # noqa: BLE001
        cand_code, load_error = None, f"the solution does not compile: {_oneline(e)}"
    isolate = pub["isolate_calls"]
    remote = _Remote(cand_code, close=(out_fd, sec_fd)) if isolate and cand_code is not None else None
    chunks = []
    while True:
        b = os.read(sec_fd, 1 << 16)
        if not b:
            break
        chunks.append(b)
    os.close(sec_fd)
    secret = marshal.loads(b"".join(chunks))
    del chunks
    nonce = secret.pop("nonce")
    soft = bool(secret.get("soft"))

    def emit(text, _nonce=nonce):
        try:
            os_write(out_fd, (_nonce + " " + text + "\n").encode("utf-8", "replace"))
        except OSError:
            pass
    del nonce

    entry = list(secret.get("entry") or [])
    rw = _Rewriter(strict=not isolate, wrap=set(entry) | {"candidate"})
    try:
        setup_code = rw.rewrite(secret.get("setup") or "", "<test setup>")
        unit_codes = [rw.rewrite(u, f"<test {i}>") for i, u in enumerate(secret["units"])]
        prelude_code = compile(secret.get("prelude") or "", "<prelude>", "exec")
        test_sources = [secret.get("setup") or ""] + list(secret["units"])
        free = _free_names(test_sources)
    except BaseException as e:  # noqa: BLE001
        emit("HARNESS " + _oneline(e))
        return 0
    n_units = len(unit_codes)
    where = rw.where
    emit(f"N {rw.k} {n_units}")

    passed, failed, nfail, errors, fails = set(), set(), [0], [0], [0]

    def note_error(msg):
        if errors[0] < 3:
            errors[0] += 1
            emit("ERR " + msg)

    def chk(k, r, _strict=not isolate):
        if (r is True) if _strict else r:
            if k not in passed:
                passed.add(k)
                emit(f"P {k}")
            return
        if k not in failed:
            failed.add(k)
            emit(f"X {k}")
            if fails[0] == 0:
                fails[0] = 1
                emit(f"FAIL assertion failed ({where[k]})")
        nfail[0] += 1
        if not soft:
            raise AssertionError(f"test assertion #{k} failed")

    def exc(k, e):
        if k not in failed:
            failed.add(k)
            emit(f"X {k}")
            note_error(f"{_oneline(e)} ({where[k]})")
        nfail[0] += 1
        if not soft:
            raise e
        return False

    prelude_ns = {"__name__": "__prelude__", "__builtins__": builtins}
    if isolate:
        try:
            exec(prelude_code, prelude_ns)
        except BaseException as e:  # noqa: BLE001
            emit("HARNESS prelude failed: " + _oneline(e))
            return 0
        test_ns = {"__name__": "__tests__", "__builtins__": builtins}
        test_ns.update({k: v for k, v in prelude_ns.items() if not k.startswith("__")})
        stdlib = getattr(sys, "stdlib_module_names", frozenset())
        for name in sorted(free | set(entry)):
            if name in entry or name not in prelude_ns:
                if name not in entry and name in stdlib:
                    try:
                        test_ns[name] = __import__(name)
                        continue
                    except ImportError:
                        pass
                test_ns[name] = _proxy(remote, name)
        if load_error is None and remote is not None:
            import time
            remote.deadline = time.monotonic() + float(pub["limits"]["timeout_s"])
            err = remote.wait_ready()
            if err:
                load_error = f"the solution failed to load: {err}"
    else:
        B = dict(builtins.__dict__)
        snaps, by_real = _module_snapshots(_module_names(test_sources + [secret.get("prelude") or ""]))
        real_import = B["__import__"]

        def test_import(name, globals=None, locals=None, fromlist=(), level=0):
            if level == 0:
                if fromlist:
                    if name in snaps:
                        return snaps[name]
                else:
                    top = name.partition(".")[0]
                    if top in snaps and (name == top or name in snaps):
                        return snaps[top]
            return real_import(name, globals, locals, fromlist, level)

        test_builtins = dict(B)
        test_builtins["__import__"] = test_import
        g, cmp, truth = _strict_helpers(B)
        prelude_ns["__builtins__"] = test_builtins
        try:
            exec(prelude_code, prelude_ns)
        except BaseException as e:  # noqa: BLE001
            emit("HARNESS prelude failed: " + _oneline(e))
            return 0
        module_type = type(sys)
        for k, v in list(prelude_ns.items()):
            if type(v) is module_type and v.__name__ in snaps:
                prelude_ns[k] = snaps[v.__name__]
        cand_ns = {"__name__": "solution", "__builtins__": builtins, "__file__": "solution.py"}
        _harden()
        if load_error is None:
            try:
                _exec(cand_code, cand_ns)
            except BaseException as e:  # noqa: BLE001
                load_error = f"the solution failed to load: {_oneline(e)}"
        keep = _set(entry)
        test_ns = {}
        for k in _list(cand_ns):
            if _type(k) is str and (k not in B or k in keep) and not k.startswith("__"):
                v = cand_ns[k]
                if _type(v) is module_type:  # the solution's `import math` stands in for the test's: use the snapshot
                    v = by_real.get(_id(v), v)
                test_ns[k] = v
        test_ns.update({k: v for k, v in prelude_ns.items() if not k.startswith("__") and k not in keep})
        test_ns.update({k: v for k, v in snaps.items() if k in free})
        test_ns.update({"__name__": "__tests__", "__builtins__": test_builtins, "_inferl_g": g,
                        "_inferl_cmp": cmp, "_inferl_truth": truth})
    test_ns["_inferl_chk"] = chk
    test_ns["_inferl_exc"] = exc

    if load_error is not None:
        if remote is not None and remote.timed_out:
            emit("TIMEOUT")
        note_error(load_error)
        emit("END 0 0")
        return _finish(remote, os_exit)
    all_ok, units_run = True, 0
    try:
        _exec(setup_code, test_ns)
        setup_ok = True
    except BaseException as e:  # noqa: BLE001
        note_error("test setup: " + _oneline(e))
        setup_ok = all_ok = False
    if setup_ok:
        for i, code in _enumerate(unit_codes):
            before = nfail[0]
            try:
                _exec(code, test_ns)
                ok = nfail[0] == before
            except BaseException as e:  # noqa: BLE001 - SystemExit from the candidate fails the unit, nothing more
                ok = False
                if _type(e) is not AssertionError or nfail[0] == before:
                    note_error(f"test {i}: {_oneline(e)}")
            units_run += 1
            emit(f"U {i} {_int(ok)}")
            if not ok:
                all_ok = False
                if not soft:
                    break
    if remote is not None and remote.timed_out:
        emit("TIMEOUT")
    emit(f"END {units_run} {_int(all_ok and nfail[0] == 0 and units_run == n_units)}")
    return _finish(remote, os_exit)


def _finish(remote, os_exit):
    if remote is not None:
        remote.close()
    os_exit(0)


def _proxy(remote, name):
    def call(*args, **kwargs):
        if remote is None:
            raise RuntimeError("the solution did not compile")
        return remote.call(name, args, kwargs)
    call.__name__ = call.__qualname__ = name
    return call
