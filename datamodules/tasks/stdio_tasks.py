"""Programs judged on their output: stdin/stdout problems (CodeContests, APPS) and APPS' call-based problems (a
function called with each test's arguments). See code_tasks.py for the verdict fields."""

from __future__ import annotations

import ast
import os
import re
from typing import Any

from datamodules.records import DataError, require
from datamodules.sandbox import ExecResult, SandboxLimits, SandboxPool, run_cases, run_tests
from datamodules.tasks.base import read_rows
from datamodules.tasks.code_common import CodeTask, extract_code, last_line
from datamodules.types import PromptRecord, Verdict

STDIO_INSTRUCTION = ("Write a Python 3 program that reads the input from standard input and prints the answer to "
                     "standard output. Reply with the program in a single ```python code block.")
CALL_INSTRUCTION = ("Write a Python 3 function with exactly this signature:\n\n```python\n{starter}\n```\n\nReply "
                    "with the code in a single ```python code block.")
_LISTIFY = ("def _inferl_listify(v):\n"
            "    if isinstance(v, (list, tuple)):\n        return [_inferl_listify(x) for x in v]\n"
            "    if isinstance(v, dict):\n        return {k: _inferl_listify(x) for k, x in v.items()}\n"
            "    return v\n"
            "def _inferl_any(expected, *calls):\n"
            "    error = None\n"
            "    for call in calls:\n"
            "        try:\n"
            "            if _inferl_listify(call()) == _inferl_listify(expected):\n"
            "                return True\n"
            "        except Exception as e:\n"
            "            error = e\n"
            "    if error is not None:\n"
            "        raise error\n"
            "    return False\n")
# statements that accept YES/yes/Yes alike
_ANY_CASE = re.compile(r"in any (?:letter )?case|any register|case[- ]insensitive|(?:upper|lower)[- ]?case or (?:upper|"
                       r"lower)[- ]?case|in (?:upper|lower)case or (?:upper|lower)case", re.IGNORECASE)


def outputs_match(got: str, expected: str, float_tol: float | None = 1e-6, ignore_case: bool = False) -> bool:
    """Whitespace-insensitive comparison, token by token (so line breaks and trailing spaces do not matter); with
    float_tol, a token that is a decimal number in the expected output also matches within that absolute or
    relative tolerance; with ignore_case, letters compare case-insensitively (for "print YES or NO in any case")."""
    if ignore_case:
        got, expected = got.casefold(), expected.casefold()
    a, b = got.split(), expected.split()
    if a == b:
        return True
    if len(a) != len(b) or float_tol is None:
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        if not any(c in y for c in ".eE"):
            return False
        try:
            fx, fy = float(x), float(y)
        except ValueError:
            return False
        if not abs(fx - fy) <= float_tol * max(1.0, abs(fy)):
            return False
    return True


def _parse_arg(line: str) -> Any:
    try:
        return ast.literal_eval(line)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return line


def starter_signature(starter: str) -> tuple[str | None, str, int | None]:
    """(class name or None, function name, number of parameters without `self`, or None if unknown) of an APPS
    starter_code such as `def f(a, b):` or `class Solution:\n    def f(self, a):`; ValueError without a def."""
    m = re.search(r"def\s+(\w+)\s*\(", starter)
    if not m:
        raise ValueError("no function definition")
    cls = re.search(r"^\s*class\s+(\w+)", starter, re.MULTILINE)
    lines = starter.rstrip().split("\n")
    indent = lines[-1][:len(lines[-1]) - len(lines[-1].lstrip())]
    try:
        tree = ast.parse(starter.rstrip() + "\n" + indent + "    pass\n")
    except SyntaxError:
        return (cls.group(1) if cls else None), m.group(1), None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == m.group(1):
            a = node.args
            if a.vararg is not None or a.kwarg is not None:
                return (cls.group(1) if cls else None), node.name, None
            n = len(a.posonlyargs) + len(a.args) - (1 if cls else 0)
            return (cls.group(1) if cls else None), node.name, n
    return (cls.group(1) if cls else None), m.group(1), None


def call_readings(arg_text: str, n_params: int | None = None) -> list[list[Any]]:
    """The argument lists a call-based APPS test input can mean. The input is one line per argument, a Python
    literal each, but strings are written bare, so `1234` may be the int or the string (a PIN): a line that reads as
    a number is also tried as a string. A one-parameter function gets the whole input as its one argument (an empty
    input is the empty string). Returns the literal reading first, then the one with numbers as strings, if any."""
    lines = arg_text.split("\n") if arg_text != "" else []
    if n_params == 1 and len(lines) != 1:
        lines = [arg_text]
    parsed = [_parse_arg(a) for a in lines]
    readings = [parsed]
    ambiguous = {i for i, (a, v) in enumerate(zip(lines, parsed)) if type(v) in (int, float) and a.strip() == a}
    if ambiguous:
        readings.append([lines[i] if i in ambiguous else v for i, v in enumerate(parsed)])
    return readings


class StdioCode(CodeTask):
    """Programs judged on their output: CodeContests ({problem, tests: {inputs, outputs}}) and APPS ({id,
    description, test_list: [{input, output}], sample_io, starter_code, ...}); the format is detected per row.

    stdin/stdout problems: the program runs once per test input (each case in a fresh forked process with its own
    time limit); its output is compared with the expected output here, in the trainer, by `outputs_match`.
    APPS problems with a starter_code are call-based: the function is called with each test's input lines (a Python
    literal each, else the raw string) and its return value compared with the expected value (tuples as lists).
    max_tests caps the number of test cases per problem (None: all). Cases are skipped after the first failure
    unless reward="fraction". Statements that accept "YES"/"yes" alike ("in any case") compare case-insensitively.
    Problems that accept any of several correct outputs ("print any of them") are compared with the one expected
    output, as the data has no checker: a different correct answer scores 0 (never the other way round).

    Args:
        path: a CodeContests or APPS JSON Lines file (e.g. ../shared/data/codecontests/test.jsonl), or a hub name.
        chat: chat `messages` or a raw prompt.
        limits: sandbox limits: timeout_s per test case, max_total_s for all cases of one program, memory, ...
        reward: "all" (1.0 when every graded case passes) or "fraction" (the share of graded cases that pass).
        pool: the sandbox worker pool (default: one shared pool, a worker per CPU core).
        max_tests: at most this many graded test cases per problem (None: all).
        float_tol: absolute/relative tolerance for decimal numbers in the expected output (None: exact tokens).
        hub_split, hub_config: the split and configuration to load when `path` is a hub name.
        verify_timeout_s, max_record_bytes: the `Task` settings (None: 30 s per completion, 8 MiB per line).
    """

    name = "stdio"

    def __init__(self, path: str | os.PathLike, chat: bool = True, limits: SandboxLimits | None = None,
                 reward: str = "all", pool: SandboxPool | None = None, max_tests: int | None = None,
                 float_tol: float | None = 1e-6, hub_split: str = "test", hub_config: str | None = None,
                 verify_timeout_s: float | None = None, max_record_bytes: int | None = None) -> None:
        super().__init__(chat, limits, reward, pool, verify_timeout_s, max_record_bytes)
        self.float_tol = float_tol
        path = os.fspath(path)
        base = os.path.splitext(os.path.basename(path))[0]
        seen: dict[str, int] = {}
        for lineno, row in read_rows(path, hub_split, hub_config, self.max_record_bytes):
            if "problem" in row and "tests" in row:
                rec = self._codecontests(row, path, lineno, base)
            elif "description" in row and "test_list" in row:
                rec = self._apps(row, path, lineno, base)
            else:
                raise DataError(f"{path}:{lineno}: unknown format: expected CodeContests fields 'problem' and "
                                f"'tests', or APPS fields 'description' and 'test_list'; got {sorted(row)}")
            if max_tests is not None:
                rec.reference["inputs"] = rec.reference["inputs"][:max(1, max_tests) + rec.reference["extra"]]
                rec.reference["outputs"] = rec.reference["outputs"][:len(rec.reference["inputs"])]
            rec.source = f"{path}:{lineno}"
            seen[rec.id] = seen.get(rec.id, 0) + 1
            if seen[rec.id] > 1:  # the APPS subset repeats some problems: keep them, with distinct ids
                rec.id = f"{rec.id}#{seen[rec.id]}"
            self.records.append(rec)
        if not self.records:
            raise DataError(f"{path}: the file has no records")

    def _codecontests(self, row, path, lineno, base) -> PromptRecord:
        problem = require(row, "problem", path, lineno)
        tests = require(row, "tests", path, lineno, dict)
        inputs, outputs = tests.get("inputs"), tests.get("outputs")
        if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs) or not inputs:
            raise DataError(f"{path}:{lineno}: 'tests' needs equally long non-empty lists 'inputs' and 'outputs'")
        if not all(isinstance(x, str) for x in inputs + outputs):
            raise DataError(f"{path}:{lineno}: 'tests' inputs and outputs should all be strings (stdin and stdout)")
        m = re.search(r"Time Limit: \{'seconds': (\d+)", problem)
        rid = str(row.get("name") or row.get("id") or f"{base}/{lineno}")
        return PromptRecord(
            id=rid, task=self.name, **self._message(f"{problem.strip()}\n\n{STDIO_INSTRUCTION}"),
            reference={"kind": "stdio", "inputs": list(inputs), "outputs": list(outputs), "extra": 0,
                       "ignore_case": bool(_ANY_CASE.search(problem))},
            meta={"source": "codecontests", "time_limit_s": int(m.group(1)) if m else None})

    def _apps(self, row, path, lineno, base) -> PromptRecord:
        desc = require(row, "description", path, lineno)
        tests = require(row, "test_list", path, lineno, list)
        samples = row.get("sample_io") or []
        for t in list(tests) + list(samples):
            if not (isinstance(t, dict) and "input" in t and "output" in t):
                raise DataError(f"{path}:{lineno}: each test needs 'input' and 'output'")
        if not tests:
            raise DataError(f"{path}:{lineno}: 'test_list' is empty")
        visible = samples[:1] if samples and samples[0] not in tests else []
        cases = visible + tests
        starter = (row.get("starter_code") or "").strip()
        rid = f"apps/{row.get('id', lineno)}"
        meta = {"source": "apps", "difficulty": row.get("difficulty")}
        if starter:
            try:
                cls, fn, n_params = starter_signature(starter)
            except ValueError:
                raise DataError(f"{path}:{lineno}: starter_code has no function definition: {starter[:80]!r}") from None
            # a method (LeetCode style) is called on an instance of the candidate's class, in the test process
            # (isolated calls return plain data only); a function is called in the candidate's own process
            callee = f"{cls}().{fn}" if cls else fn
            units = []
            for t in cases:
                out = t["output"]
                expected = out[0] if isinstance(out, list) and len(out) == 1 else out
                calls = [f"{callee}({', '.join(repr(a) for a in args)})"
                         for args in call_readings(str(t["input"]), n_params)]
                if len(calls) == 1 or cls:  # in-process: only rewritten assertions compare (never _inferl_any)
                    units.append(f"assert _inferl_listify({calls[0]}) == _inferl_listify({expected!r})")
                else:
                    units.append(f"assert _inferl_any({expected!r}, {', '.join('lambda: ' + c for c in calls)})")
            text = f"{desc.strip()}\n\n{CALL_INSTRUCTION.format(starter=starter)}"
            return PromptRecord(id=rid, task=self.name, **self._message(text), meta=dict(meta, fn=fn),
                                reference={"kind": "call", "fn": fn, "units": units, "extra": len(visible),
                                           "entry": [] if cls else [fn], "isolate_calls": cls is None,
                                           "inputs": cases, "outputs": [t["output"] for t in cases]})
        outs = ["".join(o) if isinstance(o, list) and all(isinstance(x, str) for x in o) else str(o)
                for o in (t["output"] for t in cases)]
        return PromptRecord(id=rid, task=self.name, **self._message(f"{desc.strip()}\n\n{STDIO_INSTRUCTION}"),
                            reference={"kind": "stdio", "inputs": [str(t["input"]) for t in cases], "outputs": outs,
                                       "extra": len(visible), "ignore_case": bool(_ANY_CASE.search(desc))},
                            meta=meta)

    def verify(self, record: PromptRecord, completion: str) -> Verdict:
        ref = record.reference
        code = extract_code(completion, ref.get("fn"))
        if not code.strip():
            return self._no_code()
        if ref["kind"] == "call":
            units = ref["units"][:len(ref["inputs"])]
            # soft: every unit runs, so the graded ones (after the visible sample, if it is extra) are all known
            res = run_tests(code, units, prelude=_LISTIFY, entry=ref.get("entry", [ref["fn"]]),
                            isolate_calls=ref.get("isolate_calls", True), soft=True, limits=self.limits)
            graded = res.unit_results[ref["extra"]:]
            n_ok = sum(r is True for r in graded)
            passed = bool(graded) and n_ok == len(graded) and res.status in ("passed", "failed")
            reward = 1.0 if passed else (n_ok / len(graded) if self.reward == "fraction" and graded else 0.0)
            return Verdict(reward=reward, answer=None, score=1.0 if res.unit_results[0] else 0.0,
                           error=None if passed else res.error)
        return self._verify_stdio(ref, code)

    def _verify_stdio(self, ref: dict[str, Any], code: str) -> Verdict:
        inputs, outputs, extra = ref["inputs"], ref["outputs"], ref["extra"]
        ok: dict[int, bool] = {}

        def on_case(i: int, r: ExecResult) -> bool:
            ok[i] = r.ok and outputs_match(r.stdout, outputs[i], self.float_tol, ref.get("ignore_case", False))
            return ok[i] or self.reward == "fraction" or i < extra  # stop at the first graded failure
        results = run_cases(code, inputs, self.limits, on_case=on_case)
        graded = range(extra, len(inputs))
        n_ok = sum(ok.get(i, False) for i in graded)
        passed = n_ok == len(graded)
        reward = 1.0 if passed else (n_ok / len(graded) if self.reward == "fraction" and graded else 0.0)
        error = None
        for r in results:
            if r.status not in ("ok", "skipped"):
                error = r.status if r.status != "error" else ("program crashed: " + last_line(r.stderr))
                break
        if passed:
            error = None
        return Verdict(reward=reward, answer=None, score=1.0 if ok.get(0) else 0.0, error=error)


__all__ = ["StdioCode", "outputs_match"]
