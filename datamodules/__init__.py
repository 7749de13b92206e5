"""Prompt streams, task adapters and verifiers.

The shared types are in datamodules/types.py; the verifiers in datamodules/math/ and datamodules/sandbox/ (which
depend on nothing else of the project); the task adapters in datamodules/tasks/. Names are imported on first use
(PEP 562) so that a verifier worker process importing `datamodules.math.answers` does not load lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {"PromptDataModule": "datamodules.datamodule", "RecordBatches": "datamodules.datamodule",
            "DataError": "datamodules.records", "load_records": "datamodules.records",
            "read_jsonl": "datamodules.records", "PromptRecord": "datamodules.types", "Verdict": "datamodules.types",
            "PromptStream": "datamodules.stream"}

__all__ = ["DataError", "PromptDataModule", "PromptRecord", "PromptStream", "RecordBatches", "Verdict",
           "load_records", "read_jsonl"]

if TYPE_CHECKING:
    from datamodules.datamodule import PromptDataModule, RecordBatches
    from datamodules.records import DataError, load_records, read_jsonl
    from datamodules.stream import PromptStream
    from datamodules.types import PromptRecord, Verdict


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
