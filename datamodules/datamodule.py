"""The DataModule: training prompts as an endless stream, validation prompts in order, and verification."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import lightning as L

from datamodules.records import PromptRecord, Verdict
from datamodules.stream import PromptStream
from datamodules.tasks.base import Task


class PaddingBatch(list):
    """A batch that exists only so that every rank runs the same number of evaluation steps (sharded generation
    needs all ranks in each decode step): it is rolled out when another rank samples, and never counted."""


class RecordBatches:
    """Records in order, in batches (a list would read to Lightning as several dataloaders); padded with
    `PaddingBatch`es of `filler` up to `num_batches`, so that every rank has as many batches."""

    def __init__(self, records: Sequence[PromptRecord], batch_size: int, num_batches: int | None = None,
                 filler: PromptRecord | None = None) -> None:
        self.batches = [list(records[i: i + batch_size]) for i in range(0, len(records), batch_size)]
        while num_batches is not None and filler is not None and len(self.batches) < num_batches:
            self.batches.append(PaddingBatch([filler]))

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def rank_batches(records: Sequence[PromptRecord], batch_size: int, rank: int, world_size: int) -> RecordBatches:
    """Rank `rank`'s share of `records` (every world_size-th one: each record is on exactly one rank) in batches,
    padded to rank 0's number of batches (rank 0 has the most records) so that every rank runs as many steps."""
    most = -(-len(records) // world_size)
    return RecordBatches(records[rank::world_size], batch_size, num_batches=-(-most // batch_size),
                         filler=records[0] if records else None)


class PromptDataModule(L.LightningDataModule):
    """Prompts and verifiers for RL fine-tuning.

    Args:
        train: the training task (prompt records + verifier), chosen by `class_path`.
        val: the validation task; defaults to none (no validation).
        batch_size: prompts per training step per device (each is sampled `model.group_size` times).
        val_batch_size: prompts per validation batch per device.
        val_limit: use only the first `val_limit` validation records (None = all).
        shuffle: shuffle training prompts (a new permutation each pass over the data).
        seed: the shuffling seed.
    """

    def __init__(self, train: Task, val: Task | None = None, batch_size: int = 8, val_batch_size: int = 16,
                 val_limit: int | None = None, shuffle: bool = True, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1 or val_batch_size < 1:
            raise ValueError("data.batch_size and data.val_batch_size must be >= 1")
        self.train_task = train
        self.val_task = val
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.val_limit = val_limit
        self.shuffle = shuffle
        self.seed = seed

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> PromptStream:
        rank, world = self._rank_and_world()
        return PromptStream(self.train_task.records, self.batch_size, seed=self.seed, shuffle=self.shuffle,
                            rank=rank, world_size=world)

    def val_dataloader(self) -> RecordBatches:
        rank, world = self._rank_and_world()
        records = self.val_task.records[: self.val_limit] if self.val_task is not None else []
        return rank_batches(records, self.val_batch_size, rank, world)

    test_dataloader = val_dataloader
    predict_dataloader = val_dataloader

    def verify(self, records: Sequence[PromptRecord], completions: Sequence[str],
               stage: Literal["train", "val"] = "train") -> list[Verdict]:
        """Verdicts for the completions of `records` from the task of `stage`."""
        task = self.train_task if stage == "train" else (self.val_task or self.train_task)
        return task.verify_batch(records, completions)
