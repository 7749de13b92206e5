"""Task adapters: each turns a dataset into prompt records and a verifier.

`load_task(name, path)` builds one by name; in YAML, choose a task class by `class_path`
(e.g. `datamodules.tasks.GSM8K`, `datamodules.tasks.HumanEval`). See docs/tasks.md.
"""

from __future__ import annotations

from datamodules.tasks.arithmetic import Arithmetic
from datamodules.tasks.base import Task, read_rows, safe_verify
from datamodules.tasks.chat_arithmetic import ChatArithmetic
from datamodules.tasks.code_tasks import MBPP, HumanEval
from datamodules.tasks.math_tasks import GSM8K, MATH
from datamodules.tasks.stdio_tasks import StdioCode

TASKS: dict[str, type[Task]] = {"arithmetic": Arithmetic, "gsm8k": GSM8K, "math": MATH, "humaneval": HumanEval,
                                "mbpp": MBPP, "stdio": StdioCode}

__all__ = ["GSM8K", "MATH", "MBPP", "TASKS", "Arithmetic", "ChatArithmetic", "HumanEval", "StdioCode", "Task",
           "load_task", "read_rows", "safe_verify"]


def load_task(name: str, path: str | None = None, **kwargs) -> Task:
    """Build the task called `name` ("gsm8k", "math", "humaneval", "mbpp", "stdio" or "arithmetic") from the data
    at `path` (a local JSON Lines file, or a hub dataset name); extra keyword arguments go to its class."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    if path is None and name != "arithmetic":
        raise ValueError(f"task {name!r} needs a data path, e.g. load_task({name!r}, '../shared/data/...jsonl')")
    return TASKS[name](path=path, **kwargs) if path is not None else TASKS[name](**kwargs)
