"""Prompt batches as an endless, shuffled, rank-sharded stream that resumes mid-epoch exactly."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from datamodules.types import PromptRecord


class PromptStream:
    """Yields lists of `batch_size` records forever: epoch e visits all records in a permutation drawn from
    `seed + e`; each global batch of batch_size x world_size records is split across ranks without overlap.

    Lightning restores loaders that have `state_dict`/`load_state_dict`, but it keeps one batch prefetched,
    so the position saved is the number of batches handed out minus the one in flight.
    """

    def __init__(self, records: Sequence[PromptRecord], batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.records = records
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.start = 0  # global batch index the next iteration starts from
        self.handed_out = 0

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.records)))
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(len(self.records), generator=generator).tolist()

    def batch_indices(self, batch: int) -> list[int]:
        """Record indices of global batch `batch` for this rank (crossing epoch boundaries as needed)."""
        size = len(self.records)
        first = (batch * self.world_size + self.rank) * self.batch_size
        indices, cached_epoch, order = [], -1, []
        for position in range(first, first + self.batch_size):
            epoch = position // size
            if epoch != cached_epoch:
                cached_epoch, order = epoch, self._order(epoch)
            indices.append(order[position % size])
        return indices

    def __iter__(self) -> Iterator[list[PromptRecord]]:
        batch = self.start
        self.handed_out = 0
        while True:
            self.handed_out += 1
            yield [self.records[i] for i in self.batch_indices(batch)]
            batch += 1

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.start + max(self.handed_out - 1, 0), "seed": self.seed,
                "world_size": self.world_size, "num_records": len(self.records)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("num_records") != len(self.records) or state.get("world_size") != self.world_size:
            raise ValueError(
                f"cannot resume the prompt stream exactly: the checkpoint was written with "
                f"{state.get('num_records')} records on {state.get('world_size')} ranks, this run has "
                f"{len(self.records)} records on {self.world_size}; resume with the same data and world size")
        self.start = int(state["batches"])
        self.handed_out = 0
