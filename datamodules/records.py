"""Reading prompt records: the JSONL reader that turns a bad row into an error naming its file and line.
The record and verdict types themselves live in datamodules/types.py."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from datamodules.types import PromptRecord


class DataError(ValueError):
    """A data file or row is unusable. The message names the file (and line) and how to fix it."""


#: the longest line read from a data file (bytes); longer lines are refused without being read whole (a prompt this
#: long fits no model's context, and reading it would be what exhausts memory). Tasks take `max_record_bytes`.
MAX_RECORD_BYTES = 8 * 2**20


def read_jsonl(path: str | os.PathLike,
               max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line. A missing file, a line over `max_record_bytes` (found
    after reading at most that many bytes of it), a line that is not UTF-8 or not a JSON object raises DataError
    naming the file and line."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file; check the data path in your config (it is read relative to "
                        f"the working directory {os.getcwd()})")
    if max_record_bytes < 1:
        raise ValueError(f"max_record_bytes must be >= 1, got {max_record_bytes}")
    with open(path, "rb") as f:
        lineno = 0
        while True:
            raw = f.readline(max_record_bytes + 1)  # bounded: never more than the cap (+1 to see the cap passed)
            if not raw:
                return
            lineno += 1
            if len(raw.rstrip(b"\r\n")) > max_record_bytes:
                raise DataError(f"{path}:{lineno}: the line is over max_record_bytes={max_record_bytes} bytes; "
                                f"remove it, or raise the task's max_record_bytes if records this large are meant")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of "
                                f"the line); re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`") from None
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


def load_records(path: str | os.PathLike, task: str = "", needs_reference: bool = False,
                 max_record_bytes: int = MAX_RECORD_BYTES) -> list[PromptRecord]:
    """Read records in inferl's own schema: {"id", "prompt" | "messages", "reference", "task"?, "meta"?}.
    needs_reference: a row without `reference` (or with null) is a DataError naming its file and line (for tasks
    whose verifier compares against it)."""
    path = os.fspath(path)
    records = []
    for lineno, obj in read_jsonl(path, max_record_bytes):
        if needs_reference and obj.get("reference") is None:
            raise DataError(f"{path}:{lineno}: missing field 'reference' (the answer the {task or 'task'} verifier "
                            f"compares with); add it to every row")
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
            source=f"{path}:{lineno}",
        ))
    if not records:
        raise DataError(f"{path}: the file has no records")
    return records
