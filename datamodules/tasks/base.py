"""The task interface: prompt records plus the verifier that scores completions for them."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from datamodules.records import MAX_RECORD_BYTES, DataError, read_jsonl
from datamodules.types import PromptRecord, Verdict
from datamodules.verify_guard import DEFAULT_VERIFY_TIMEOUT_S

log = logging.getLogger(__name__)


class Task:
    """A list of prompt records and a verifier for them.

    Subclasses set `self.records` in `__init__` and implement `verify`. `verify_batch` is what training calls:
    the default runs `verify` in-process and turns an exception into a zero-reward verdict with `error` set,
    so a crashing reward function costs one sample's reward, not the run. Tasks whose verification is slow
    or unsafe (running code, math equivalence with a time limit) override it with a worker pool.

    Whatever a task does, training calls it through the data module's guard (datamodules/verify_guard.py): a
    verdict that is not a `Verdict` with a finite numeric reward, an exception, or a call running past
    `verify_timeout_s` costs that sample its reward (0, `error` set) and is counted, never ends or stalls the run.

    Settings (class attributes; the built-in tasks also take them as arguments):
        verify_timeout_s: the longest one `verify` call may take (a task with its own `verify_batch`: the longest
            a batch may take, per completion in it); longer is a `timeout` verdict.
        max_record_bytes: the longest line read from a data file; a longer one is a DataError naming file and line.
    """

    name: str = "task"
    records: list[PromptRecord]
    verify_timeout_s: float = DEFAULT_VERIFY_TIMEOUT_S
    max_record_bytes: int = MAX_RECORD_BYTES

    def set_limits(self, verify_timeout_s: float | None = None, max_record_bytes: int | None = None) -> None:
        """Set the settings above on this task (None keeps the class default), checked."""
        if verify_timeout_s is not None:
            if not verify_timeout_s > 0:
                raise ValueError(f"{type(self).__name__}: verify_timeout_s must be > 0 seconds, got {verify_timeout_s}")
            self.verify_timeout_s = float(verify_timeout_s)
        if max_record_bytes is not None:
            if max_record_bytes < 1:
                raise ValueError(f"{type(self).__name__}: max_record_bytes must be >= 1, got {max_record_bytes}")
            self.max_record_bytes = int(max_record_bytes)

    def verify(self, record: PromptRecord, completion: str) -> Verdict:
        raise NotImplementedError

    def verify_batch(self, records: Sequence[PromptRecord], completions: Sequence[str]) -> list[Verdict]:
        if len(records) != len(completions):
            raise ValueError(f"verify_batch: {len(records)} records but {len(completions)} completions")
        return [safe_verify(self.verify, r, c) for r, c in zip(records, completions)]

    def reference_completion(self, record: PromptRecord) -> str | None:
        """A correct completion for `record` (used by supervised warm-start), or None if the task has none."""
        return None

    def __len__(self) -> int:
        return len(self.records)


def safe_verify(verify, record: PromptRecord, completion: str) -> Verdict:
    """Call `verify(record, completion)`; an exception becomes Verdict(0.0, error=...) instead of propagating."""
    try:
        verdict = verify(record, completion)
    except Exception as e:
        log.debug("verifier raised on record %s", record.id, exc_info=True)
        return Verdict(reward=0.0, error=f"{type(e).__name__}: {e}")
    if not isinstance(verdict, Verdict):
        return Verdict(reward=0.0, error=f"verifier returned {type(verdict).__name__}, expected Verdict")
    return verdict


_FILE_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet", ".csv", ".txt")


def looks_like_hub_name(path: str) -> bool:
    """True for `owner/name` (or `name`) strings that are not a local path: no file suffix, not starting with
    `.`, `/` or `~`, and nothing at that path on disk."""
    return (not os.path.exists(path) and not path.startswith((".", "/", "~")) and not path.endswith(_FILE_SUFFIXES)
            and path.count("/") <= 1 and bool(path.strip()))


def read_rows(path: str | os.PathLike, hub_split: str = "test", hub_config: str | None = None,
              max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a dataset: a local JSON Lines file, or, when `path` is not a local path but looks like
    a hub name (`openai/gsm8k`) and the `datasets` package is installed, that dataset's `hub_split` (rows numbered
    from 1). A missing local file, a bad line or a failed hub load raises DataError naming the path (and line)."""
    path = os.fspath(path)
    if not looks_like_hub_name(path):
        yield from read_jsonl(path, max_record_bytes)  # a DataError naming the file for a missing file or a bad line
        return
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path}: no such file (and it cannot be loaded as a Hugging Face dataset name: the "
                        f"`datasets` package is not installed); check the data path in your config") from None
    try:
        ds = datasets.load_dataset(path, hub_config, split=hub_split)
    except Exception as e:  # noqa: BLE001 - report both ways we tried
        raise DataError(f"{path}: no such file, and loading it as a Hugging Face dataset (config {hub_config!r}, "
                        f"split {hub_split!r}) failed: {type(e).__name__}: {str(e)[:300]}") from None
    for i, row in enumerate(ds, start=1):
        yield i, dict(row)
