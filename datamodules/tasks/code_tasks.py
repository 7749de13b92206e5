"""Code tasks: HumanEval, MBPP and stdin/stdout problems (CodeContests, APPS; in stdio_tasks.py), verified by running
the completion in the sandbox (datamodules/sandbox/) against the dataset's tests.

Verdicts (all three tasks):
    reward  1.0 if every test passes, else 0.0 (`reward="fraction"`: the fraction of test assertions or cases passed).
    answer  None (code has no answer to vote on).
    score   the visible example: 1.0 if the first test passes, else 0.0. HumanEval: the first assertion evaluated in
            `check` (its docstring examples are not machine-readable; the first assertion plays their role);
            MBPP: test_list[0], the test shown in the prompt; stdin/stdout: the first sample (APPS sample_io[0],
            CodeContests' first test, which is the statement's example).
    error   why the program could not be judged or crashed: no code found, syntax error, exception, timeout, output
            cap, sandbox failure. None when the program ran and merely gave wrong answers.
"""

from __future__ import annotations

import ast
import os

from datamodules.records import DataError, require
from datamodules.sandbox import SandboxLimits, SandboxPool, run_tests
from datamodules.tasks.base import read_rows
from datamodules.tasks.code_common import (
    CODE_START,
    CodeTask,
    defines,
    extract_code,
    free_and_called_names,
    stdlib_modules,
    trim_trailing_prose,
)
from datamodules.tasks.stdio_tasks import StdioCode, outputs_match
from datamodules.types import PromptRecord, Verdict

__all__ = ["MBPP", "HumanEval", "StdioCode", "extract_code", "humaneval_program", "outputs_match"]


def humaneval_program(prompt: str, completion: str, entry_point: str) -> str:
    """The program for a HumanEval completion, whichever way the model wrote it: a full function (fenced or not,
    after prose or not) is appended to the prompt, so the prompt's imports and helpers stay defined and the
    completion's definition wins; a body continuing the prompt is appended as is (re-indented if the model put it
    at column 0), without trailing lines of prose that would keep it from compiling."""
    code = extract_code(completion, entry_point)
    if defines(code, entry_point):
        return prompt.rstrip("\n") + "\n\n" + code
    lines = code.split("\n")
    first = next((ln for ln in lines if ln.strip()), "")
    if first and not first[0].isspace() and not CODE_START.match(first):
        code = "\n".join(("    " + ln) if ln.strip() else ln for ln in lines)
    return prompt + trim_trailing_prose(code, prefix=prompt)


# ----------------------------------------------------------------------------------------------------------------------
# HumanEval
# ----------------------------------------------------------------------------------------------------------------------

HUMANEVAL_INSTRUCTION = ("Complete the following Python function. Reply with the complete function, signature "
                         "included, in a single ```python code block.")


class HumanEval(CodeTask):
    """HumanEval (openai/human-eval JSONL: task_id, prompt, canonical_solution, test, entry_point).

    chat=True: one user message with an instruction and the prompt in a code block; chat=False: the raw prompt, the
    completion continuing the function body. Either way the verifier accepts a body or a whole function, fenced or
    not. The prompt runs as trusted code in the test process (its helpers, e.g. `poly`, are the tests'); the
    candidate's function is called in its own process with plain data.

    Args:
        path: a HumanEval JSON Lines file (e.g. ../shared/data/humaneval/HumanEval.jsonl), or a hub dataset name
            (e.g. openai/openai_humaneval) when the `datasets` package is installed and online.
        chat: chat `messages` (instruction + prompt) or the raw prompt for base models.
        limits: sandbox limits per program (SandboxLimits: timeout_s, memory_mb, ...).
        reward: "all" (1.0 when every assertion holds) or "fraction" (the share of assertions that hold).
        pool: the sandbox worker pool (default: one shared pool, a worker per CPU core).
        instruction: the chat instruction put before the prompt.
        hub_split, hub_config: the split and configuration to load when `path` is a hub name.
        verify_timeout_s, max_record_bytes: the `Task` settings (None: 30 s per completion, 8 MiB per line).
    """

    name = "humaneval"

    def __init__(self, path: str | os.PathLike, chat: bool = True, limits: SandboxLimits | None = None,
                 reward: str = "all", pool: SandboxPool | None = None, instruction: str = HUMANEVAL_INSTRUCTION,
                 hub_split: str = "test", hub_config: str | None = None,
                 verify_timeout_s: float | None = None, max_record_bytes: int | None = None) -> None:
        super().__init__(chat, limits, reward, pool, verify_timeout_s, max_record_bytes)
        path = os.fspath(path)
        for lineno, row in read_rows(path, hub_split, hub_config, self.max_record_bytes):
            task_id = require(row, "task_id", path, lineno)
            prompt = require(row, "prompt", path, lineno)
            entry = require(row, "entry_point", path, lineno)
            test = require(row, "test", path, lineno)
            if "def check(" not in test:
                raise DataError(f"{path}:{lineno}: field 'test' has no `def check(candidate)`")
            text = f"{instruction}\n\n```python\n{prompt.rstrip()}\n```" if chat else prompt
            self.records.append(PromptRecord(
                id=task_id, task=self.name, **self._message(text), source=f"{path}:{lineno}",
                reference={"prompt": prompt, "test": test, "entry_point": entry,
                           "canonical_solution": row.get("canonical_solution")},
                meta={"entry_point": entry}))
        if not self.records:
            raise DataError(f"{path}: the file has no records")

    def program(self, record: PromptRecord, completion: str) -> str:
        ref = record.reference
        return humaneval_program(ref["prompt"], completion, ref["entry_point"])

    def verify(self, record: PromptRecord, completion: str) -> Verdict:
        ref = record.reference
        if not completion.strip():
            return self._no_code()
        res = run_tests(self.program(record, completion), [f"check({ref['entry_point']})"], prelude=ref["prompt"],
                        setup=ref["test"], entry=[ref["entry_point"]], soft=self.reward == "fraction",
                        limits=self.limits)
        return self._verdict(res)

    def reference_completion(self, record: PromptRecord) -> str | None:
        ref = record.reference
        if ref.get("canonical_solution") is None:
            return None
        if self.chat:
            return f"```python\n{ref['prompt'].rstrip()}\n{ref['canonical_solution'].rstrip()}\n```"
        return ref["canonical_solution"]


# ----------------------------------------------------------------------------------------------------------------------
# MBPP
# ----------------------------------------------------------------------------------------------------------------------

MBPP_SPLITS = {"test": range(11, 511), "train": range(511, 975), "prompt": range(1, 11), "fewshot": range(1, 11)}


class MBPP(CodeTask):
    """MBPP, full (task_id, text, code, test_list, test_setup_code, challenge_test_list) or sanitized (task_id,
    prompt, code, test_imports, test_list) JSONL; the format is detected per row from its fields.

    split: "test" (task ids 11-510), "train" (511-974), "prompt"/"fewshot" (1-10) or None for all rows.
    show_tests: how many tests the prompt shows (the standard MBPP prompt shows them; the first is the visible one).
    The program is `code + test_setup_code + tests`; the tests call the solution's functions in a separate process
    with plain data, except for tasks whose tests use the solution's own classes (e.g. 367, 601, 927), which run
    in-process (see datamodules/sandbox/harness.py for what that weakens).

    Args:
        path: mbpp.jsonl or sanitized-mbpp.jsonl (e.g. ../shared/data/mbpp/mbpp.jsonl), or a hub dataset name.
        chat: chat `messages` (the standard MBPP instruction) or a raw docstring-style prompt for base models.
        split: which task ids to keep (see above); None keeps every row of the file.
        show_tests: how many of the tests the prompt shows (at least 1).
        include_challenge: also run `challenge_test_list` (full MBPP only).
        limits, reward, pool: as for HumanEval.
        hub_split, hub_config: the split and configuration to load when `path` is a hub name.
        verify_timeout_s, max_record_bytes: the `Task` settings (None: 30 s per completion, 8 MiB per line).
    """

    name = "mbpp"

    def __init__(self, path: str | os.PathLike, chat: bool = True, split: str | None = None, show_tests: int = 3,
                 include_challenge: bool = False, limits: SandboxLimits | None = None, reward: str = "all",
                 pool: SandboxPool | None = None, hub_split: str = "test", hub_config: str | None = None,
                 verify_timeout_s: float | None = None, max_record_bytes: int | None = None) -> None:
        super().__init__(chat, limits, reward, pool, verify_timeout_s, max_record_bytes)
        if split is not None and split not in MBPP_SPLITS:
            raise ValueError(f"split={split!r}: use one of {sorted(MBPP_SPLITS)} or None for all tasks")
        path = os.fspath(path)
        ids = MBPP_SPLITS[split] if split else None
        for lineno, row in read_rows(path, hub_split, hub_config, self.max_record_bytes):
            task_id = require(row, "task_id", path, lineno, int)
            if ids is not None and task_id not in ids:
                continue
            code = require(row, "code", path, lineno).replace("\r\n", "\n")
            tests = [t.replace("\r\n", "\n") for t in require(row, "test_list", path, lineno, list)]
            if not tests or not all(isinstance(t, str) for t in tests):
                raise DataError(f"{path}:{lineno}: field 'test_list' should be a non-empty list of strings")
            if "text" in row:
                text = require(row, "text", path, lineno)
                setup = (row.get("test_setup_code") or "").replace("\r\n", "\n")
                if include_challenge:
                    tests += [t.replace("\r\n", "\n") for t in row.get("challenge_test_list") or []]
            elif "prompt" in row:
                text = require(row, "prompt", path, lineno)
                setup = "\n".join(require(row, "test_imports", path, lineno, list))
            else:
                raise DataError(f"{path}:{lineno}: neither MBPP format: need 'text' (mbpp.jsonl) or 'prompt' "
                                f"(sanitized-mbpp.jsonl); fields present: {sorted(row)}")
            try:
                entry, isolate = self._entry(code, setup, tests)
            except SyntaxError as e:
                raise DataError(f"{path}:{lineno}: reference code or tests do not parse ({e})") from None
            shown = "\n".join(tests[:max(1, show_tests)])
            if chat:
                msg = (f"You are an expert Python programmer, and here is your task: {text} Your code should pass "
                       f"these tests:\n\n{shown}\n\nReply with the code in a single ```python code block.")
            else:
                msg = f'"""\n{text}\n{shown}\n"""\n'
            self.records.append(PromptRecord(
                id=f"mbpp/{task_id}", task=self.name, **self._message(msg), source=f"{path}:{lineno}",
                reference={"code": code, "tests": tests, "setup": setup, "entry": entry, "isolate_calls": isolate},
                meta={"task_id": task_id}))
        if not self.records:
            raise DataError(f"{path}: no records{f' in split {split!r}' if split else ''}")

    @staticmethod
    def _entry(code: str, setup: str, tests: list[str]) -> tuple[list[str], bool]:
        """The functions the tests call on the solution, and whether the tests need only those (isolated calls)."""
        tree = ast.parse(code)
        funcs = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        free, called = free_and_called_names(setup + "\n" + "\n".join(tests))
        entry = sorted(called & funcs) or sorted(free - stdlib_modules())
        isolate = not setup.strip() or all(ln.startswith(("import ", "from ")) for ln in setup.splitlines()
                                           if ln.strip())
        isolate = isolate and (free - stdlib_modules()) <= funcs
        return entry, isolate

    def verify(self, record: PromptRecord, completion: str) -> Verdict:
        ref = record.reference
        code = extract_code(completion, ref["entry"][0] if ref["entry"] else None)
        if not code.strip():
            return self._no_code()
        res = run_tests(code, ref["tests"], setup=ref["setup"], entry=ref["entry"], isolate_calls=ref["isolate_calls"],
                        soft=self.reward == "fraction", limits=self.limits)
        return self._verdict(res)

    def reference_completion(self, record: PromptRecord) -> str | None:
        code = record.reference["code"]
        return f"```python\n{code.rstrip()}\n```" if self.chat else code

