"""Prompt streams, task adapters and verifiers."""

from datamodules.datamodule import PromptDataModule, RecordBatches
from datamodules.records import DataError, PromptRecord, Verdict, load_records, read_jsonl
from datamodules.stream import PromptStream

__all__ = ["DataError", "PromptDataModule", "PromptRecord", "PromptStream", "RecordBatches", "Verdict",
           "load_records", "read_jsonl"]
