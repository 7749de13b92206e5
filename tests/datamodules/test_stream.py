"""The prompt stream: every record once per epoch, ranks disjoint, and an exact resume despite prefetching."""

from __future__ import annotations

import itertools

import pytest

from datamodules import PromptRecord, PromptStream

RECORDS = [PromptRecord(id=str(i), prompt=f"p{i}") for i in range(10)]


def ids(batch):
    return [r.id for r in batch]


def test_epoch_visits_every_record_once_and_reshuffles():
    stream = PromptStream(RECORDS, batch_size=5, seed=3)
    batches = [ids(b) for b in itertools.islice(iter(stream), 4)]
    assert sorted(batches[0] + batches[1]) == sorted(r.id for r in RECORDS)
    assert sorted(batches[2] + batches[3]) == sorted(r.id for r in RECORDS)
    assert batches[0] + batches[1] != batches[2] + batches[3]


def test_ranks_get_disjoint_prompts():
    streams = [PromptStream(RECORDS, batch_size=2, seed=0, rank=r, world_size=2) for r in range(2)]
    first = [ids(next(iter(s))) for s in streams]
    assert not set(first[0]) & set(first[1])


def test_resume_continues_after_the_batch_in_flight():
    stream = PromptStream(RECORDS, batch_size=3, seed=1)
    it = iter(stream)
    consumed = [ids(next(it)) for _ in range(3)]
    next(it)  # Lightning prefetches one batch that is not trained on when the checkpoint is written
    state = stream.state_dict()
    resumed = PromptStream(RECORDS, batch_size=3, seed=1)
    resumed.load_state_dict(state)
    straight = [ids(b) for b in itertools.islice(iter(PromptStream(RECORDS, batch_size=3, seed=1)), 6)]
    assert consumed + [ids(b) for b in itertools.islice(iter(resumed), 3)] == straight


def test_resume_with_other_data_is_refused():
    state = PromptStream(RECORDS, batch_size=3).state_dict()
    with pytest.raises(ValueError, match="same data and world size"):
        PromptStream(RECORDS[:5], batch_size=3).load_state_dict(state)
