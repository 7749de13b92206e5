"""Validation batches per rank: every record on exactly one rank, and every rank runs as many batches."""

from __future__ import annotations

import pytest

from datamodules.datamodule import PaddingBatch, rank_batches
from datamodules.types import PromptRecord


def records(n: int) -> list[PromptRecord]:
    return [PromptRecord(id=str(i), prompt=f"{i}+0=", reference=str(i)) for i in range(n)]


@pytest.mark.parametrize("n, batch_size, world", [(3, 1, 2), (5, 2, 2), (7, 2, 3), (1, 4, 2), (8, 2, 2), (0, 2, 2)])
def test_rank_batches_cover_each_record_once_with_equal_batch_counts(n, batch_size, world):
    shares = [list(rank_batches(records(n), batch_size, rank, world)) for rank in range(world)]
    assert len({len(share) for share in shares}) == 1
    real = [record.id for share in shares for batch in share if not isinstance(batch, PaddingBatch) for record in batch]
    assert sorted(real, key=int) == [str(i) for i in range(n)]
    padding = [batch for share in shares for batch in share if isinstance(batch, PaddingBatch)]
    assert all(len(batch) == 1 for batch in padding)
