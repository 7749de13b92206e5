"""In-process defences of the sandbox's tests mode (the fallback for tests that build the candidate's own classes;
imported by harness.py before the child confines itself; standard library only).

The candidate runs in the test process here. Tests run in their own namespace with a pristine copy of the builtins
and snapshots of the modules they import; values returned by entry calls must be built-in data (converted to exact
types, so overridden __eq__ & co. are never called); comparisons in asserts go through `_inferl_cmp`; an audit hook
refuses frame and gc introspection, ctypes, tracing, code construction, signal handlers and /proc. Residual risk:
native-level memory access (e.g. numpy stride tricks, crafted bytecode through marshal) could still find the nonce or
patch the harness.
"""

import sys

from remote import _SCALARS


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
    scalars = frozenset((*_SCALARS, decimal.Decimal, datetime.date, datetime.datetime, datetime.time,
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
        # an opaque object is never equal to, ordered with, or inside built-in data
        return op in ("ne", "not in")

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
