"""Tests mode of the sandbox child (imported by child.py before it confines itself; standard
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

from remote import _oneline, _Remote
from strict import _harden, _module_snapshots, _strict_helpers

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
        test_sources = [secret.get("setup") or "", *secret["units"]]
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
        snaps, by_real = _module_snapshots(_module_names([*test_sources, secret.get("prelude") or ""]))
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
