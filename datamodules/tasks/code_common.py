"""What the code tasks share: pulling the code out of a model's completion, and the task base class that runs
completions in the sandbox pool and turns sandbox results into verdicts (see code_tasks.py for the verdict fields)."""

from __future__ import annotations

import ast
import builtins
import logging
import re
import sys
from collections.abc import Sequence
from typing import Any

from datamodules.sandbox import SandboxLimits, SandboxPool, TestResult, default_pool, isolation_level
from datamodules.tasks.base import Task, safe_verify
from datamodules.types import PromptRecord, Verdict

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|```|\Z)", re.DOTALL)
CODE_START = re.compile(r"^(?:def |class |import |from |@|async def |if __name__)", re.MULTILINE)
_PY_LANGS = ("", "python", "py", "python3", "py3", "pycon")


# ----------------------------------------------------------------------------------------------------------------------
# Completion handling
# ----------------------------------------------------------------------------------------------------------------------

def extract_code(text: str, entry: str | None = None) -> str:
    """The code in a model's completion: the ```python fenced block (the one defining `entry` if several; an unclosed
    fence runs to the end); else the text as is when it compiles (a raw completion); else the text from the first
    line that starts code (`def`, `class`, `import`, ...), without trailing lines of prose; else the text as is."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    if blocks:
        py = [b for lang, b in blocks if lang in _PY_LANGS] or [b for _, b in blocks]
        if entry:
            pat = re.compile(rf"^\s*(?:async\s+)?def\s+{re.escape(entry)}\s*\(", re.MULTILINE)
            for b in py:
                if pat.search(b):
                    return b.rstrip() + "\n"
        defining = [b for b in py if re.search(r"^\s*(?:def|class)\s", b, re.MULTILINE)]
        return (defining or py)[0].rstrip() + "\n"
    if compiles(text):
        return text
    m = CODE_START.search(text)
    if m:  # prose before the code (cut it), and maybe after it (trim it)
        return trim_trailing_prose(text[m.start():])
    return text


def compiles(src: str) -> bool:
    """Whether `src` is valid Python (compiled only, never run)."""
    try:
        compile(src, "<completion>", "exec", dont_inherit=True)
        return True
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return False


def defines(code: str, name: str) -> bool:
    """Whether `code` defines a top-level function `name`."""
    return re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def trim_trailing_prose(code: str, prefix: str = "", max_cuts: int = 64) -> str:
    """`code` without the trailing lines that keep `prefix + code` from compiling (prose a model wrote after its
    code), or `code` unchanged when it compiles or no cut of at most `max_cuts` lines makes it compile."""
    if compiles(prefix + code):
        return code
    lines = code.rstrip("\n").split("\n")
    for cut in range(len(lines) - 1, max(len(lines) - 1 - max_cuts, 0), -1):
        candidate = "\n".join(lines[:cut]) + "\n"
        if candidate.strip() and compiles(prefix + candidate):
            return candidate
    return code


def stdlib_modules() -> frozenset[str]:
    return frozenset(getattr(sys, "stdlib_module_names", ()))


def free_and_called_names(src: str) -> tuple[set[str], set[str]]:
    """(free names loaded, names called as functions) in test code."""
    loads, stores, called = set(), set(), set()
    for n in ast.walk(ast.parse(src)):
        if isinstance(n, ast.Name):
            (loads if isinstance(n.ctx, ast.Load) else stores).add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stores.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            stores.update((a.asname or a.name).split(".")[0] for a in n.names)
        elif isinstance(n, ast.arg):
            stores.add(n.arg)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
            called.add(n.func.id)
    return loads - stores - set(dir(builtins)), called


class CodeTask(Task):
    """Common parts: limits, the worker pool, reward mode, and turning sandbox results into verdicts."""

    def __init__(self, chat: bool = True, limits: SandboxLimits | None = None, reward: str = "all",
                 pool: SandboxPool | None = None, verify_timeout_s: float | None = None,
                 max_record_bytes: int | None = None) -> None:
        self.set_limits(verify_timeout_s, max_record_bytes)
        if reward not in ("all", "fraction"):
            raise ValueError(f"reward={reward!r}: use 'all' (1 if every test passes) or 'fraction' (share passed)")
        self.chat = chat
        self.limits = limits or SandboxLimits()
        self.reward = reward
        self._pool = pool
        self.records: list[PromptRecord] = []

    @property
    def pool(self) -> SandboxPool:
        return self._pool or default_pool()

    def verify_batch(self, records: Sequence[PromptRecord], completions: Sequence[str]) -> list[Verdict]:
        """Verify in parallel on the sandbox pool (each completion runs in its own sandboxed process)."""
        if len(records) != len(completions):
            raise ValueError(f"verify_batch: {len(records)} records but {len(completions)} completions")
        announce_isolation()
        return self.pool.map(lambda rc: safe_verify(self.verify, rc[0], rc[1]), list(zip(records, completions)))

    def _message(self, text: str) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": text}]} if self.chat else {"prompt": text}

    def _verdict(self, res: TestResult) -> Verdict:
        reward = 1.0 if res.passed else (res.fraction if self.reward == "fraction" else 0.0)
        return Verdict(reward=reward, answer=None, score=1.0 if res.first_passed else 0.0,
                       error=None if res.passed else res.error)

    @staticmethod
    def _no_code() -> Verdict:
        return Verdict(reward=0.0, answer=None, score=0.0, error="no code in the completion")



_announced = False


def announce_isolation() -> None:
    """Say once per process, where a training run shows it (Lightning's console logger), which sandbox isolation
    level is active; a degraded level is also logged at WARNING by datamodules.sandbox itself."""
    global _announced
    if not _announced:
        _announced = True
        logging.getLogger("lightning.pytorch").info("inferl: code sandbox isolation %s", isolation_level().describe())


def last_line(text: str) -> str:
    """The last non-blank line of `text` (e.g. a traceback's exception line), at most 300 characters."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "non-zero exit status"


__all__ = ["CodeTask", "announce_isolation", "compiles", "defines", "extract_code", "free_and_called_names",
           "last_line", "stdlib_modules", "trim_trailing_prose"]
