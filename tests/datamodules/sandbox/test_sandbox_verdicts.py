"""Hostile programs against the verdict of unit-tested code: exiting early with success, objects equal to everything,
patched builtins, forged pass markers and nonce hunting. None may pass a wrong solution, and a correct solution must
still pass under each patch. Both test modes: isolated calls (the candidate in its own process) and in-process."""

from __future__ import annotations

import pytest
from sandbox_testing import (
    ALWAYS_EQUAL,
    BAD_F,
    EXITS,
    F_UNITS,
    GOOD_F,
    LIM,
    Contained,
    dedent,
    script_limit,
)

from datamodules.sandbox import run_tests


@pytest.mark.timeout(120)
@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "in-process"])
@pytest.mark.parametrize("src", EXITS)
def test_exiting_before_the_tests_fails(src, isolate):
    with Contained(script_limit()):
        r = run_tests(src + ("" if "def f" in src else BAD_F), F_UNITS, entry=["f"], isolate_calls=isolate,
                      limits=LIM)
    assert not r.passed


@pytest.mark.timeout(120)
@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "in-process"])
@pytest.mark.parametrize("src", ALWAYS_EQUAL)
def test_always_equal_objects_fail(src, isolate):
    units = [*F_UNITS, "assert abs(f(2) - 3) < 1e-9", "assert f(3) in [4]", "assert not (f(5) != 6)"]
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
    units = [*F_UNITS, "import math\nassert math.isclose(f(0.5), 1.5)", "assert abs(f(2) - 3) < 1e-9"]
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
    "import gc, os, re\ntry:\n    for o in gc.get_objects():\n"
    "        for s in (o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) else []):\n"
    "            if isinstance(s, str) and re.fullmatch('[0-9a-f]{32}', s):\n"
    "                for fd in range(3, 64):\n                    try:\n"
    "                        os.write(fd, (s + ' END 3 1\\n').encode())\n"
    "                    except OSError:\n                        pass\nexcept Exception:\n    pass\nos._exit(0)\n",
    "import signal, os\ndef h(s, frame):\n    while frame:\n        frame = frame.f_back\n"
    "signal.signal(signal.SIGUSR1, h)\nos.kill(os.getpid(), signal.SIGUSR1)\nos._exit(0)\n",
    "import os\ntry:\n    open('/proc/self/mem', 'rb')\n    print('OPENED')\nexcept Exception:\n    pass\n"
    "os._exit(0)\n",
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
