"""Data types that cross package boundaries: a prompt record, a verifier's verdict, and the JSONL reader
that turns a bad row into an error naming its file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


class DataError(ValueError):
    """A data file or row is unusable. The message names the file (and line) and how to fix it."""


@dataclass
class PromptRecord:
    """One prompt and what its verifier needs.

    Exactly one of `prompt` (raw text, fed to the model as is) and `messages` (chat turns, rendered with the
    tokenizer's chat template and a generation prompt) is set. `reference` is what the verifier compares
    against (a gold answer, unit tests, expected outputs); `meta` holds task-specific extras.
    """

    id: str
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    reference: Any = None
    task: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError(f"record {self.id!r}: give exactly one of `prompt` and `messages`")


@dataclass
class Verdict:
    """A verifier's judgement of one completion.

    reward: the training reward (1.0/0.0 for pass/fail tasks, real-valued otherwise).
    answer: the parsed, normalised final answer; equal strings are equivalent answers (used for voting);
        None when nothing could be parsed (it never votes).
    score: a cheaper verifier's score, used by best-of-N selection (e.g. visible example tests for code).
    error: why verification failed (parse error, timeout, crash); the reward is then 0 unless set otherwise.
    """

    reward: float
    answer: str | None = None
    score: float | None = None
    error: str | None = None


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a missing file or a bad line raises DataError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file; check the data path in your config (it is read relative to "
                        f"the working directory {os.getcwd()})")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def require(obj: dict[str, Any], key: str, path: str, lineno: int, kind: type | tuple[type, ...] = str) -> Any:
    """obj[key], checked for presence and type; otherwise a DataError naming the file, line and key."""
    if key not in obj:
        raise DataError(f"{path}:{lineno}: missing field {key!r} (fields present: {sorted(obj)})")
    value = obj[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{path}:{lineno}: field {key!r} should be {names}, got {type(value).__name__}")
    return value


def load_records(path: str | os.PathLike, task: str = "") -> list[PromptRecord]:
    """Read records in inferl's own schema: {"id", "prompt" | "messages", "reference", "task"?, "meta"?}."""
    path = os.fspath(path)
    records = []
    for lineno, obj in read_jsonl(path):
        has_prompt, has_messages = "prompt" in obj, "messages" in obj
        if has_prompt == has_messages:
            raise DataError(f"{path}:{lineno}: give exactly one of 'prompt' (text) and 'messages' (chat turns)")
        if has_messages:
            messages = require(obj, "messages", path, lineno, list)
            if not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
                raise DataError(f"{path}:{lineno}: 'messages' must be a list of {{'role': ..., 'content': ...}}")
        records.append(PromptRecord(
            id=str(obj.get("id", f"{os.path.basename(path)}:{lineno}")),
            prompt=require(obj, "prompt", path, lineno) if has_prompt else None,
            messages=obj.get("messages"),
            reference=obj.get("reference"),
            task=str(obj.get("task", task)),
            meta=obj.get("meta", {}),
        ))
    if not records:
        raise DataError(f"{path}: the file has no records")
    return records
