"""The DataModule: training prompts as an endless stream, validation prompts in order, and verification under the
verifier contract (datamodules/verify_guard.py); prompts too long for the model are dropped or refused at setup
(datamodules/prompt_limits.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import lightning as L

from datamodules.prompt_limits import LongPromptAction, PromptLimit, drop_long_prompts
from datamodules.stream import PromptStream
from datamodules.tasks.base import Task
from datamodules.types import PromptRecord, Verdict
from datamodules.verify_guard import VerifyGuard


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
        batch_size: prompts per training step per device (each is sampled `model.group.size` times).
        val_batch_size: prompts per validation batch per device.
        val_limit: use only the first `val_limit` validation records (None = all).
        shuffle: shuffle training prompts (a new permutation each pass over the data).
        seed: the shuffling seed.
        max_prompt_tokens: prompts with more tokens are too long (None: only the model's own limit, its positions
            minus max_new_tokens, applies).
        on_long_prompt: what to do with a too-long prompt, found once at setup: "drop" it (each named in the log
            with its id, file and line, then counted) or "error" (refuse the data, naming the first one).
    """

    def __init__(self, train: Task, val: Task | None = None, batch_size: int = 8, val_batch_size: int = 16,
                 val_limit: int | None = None, shuffle: bool = True, seed: int = 0,
                 max_prompt_tokens: int | None = None, on_long_prompt: LongPromptAction = "drop") -> None:
        super().__init__()
        if batch_size < 1 or val_batch_size < 1:
            raise ValueError("data.batch_size and data.val_batch_size must be >= 1")
        if max_prompt_tokens is not None and max_prompt_tokens < 1:
            raise ValueError(f"data.max_prompt_tokens must be >= 1 or null, got {max_prompt_tokens}")
        if on_long_prompt not in ("drop", "error"):
            raise ValueError(f"data.on_long_prompt must be 'drop' or 'error', got {on_long_prompt!r}")
        self.max_prompt_tokens = max_prompt_tokens
        self.on_long_prompt = on_long_prompt
        self.guard = VerifyGuard()
        self._length_checked: dict[int, PromptLimit] = {}  # id(task) -> the limit its records were checked against
        self.train_task = train
        self.val_task = val
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.val_limit = val_limit
        self.shuffle = shuffle
        self.seed = seed

    def setup(self, stage: str) -> None:
        """Leave out (or refuse) prompts too long for the model, once per task and limit. The model says how many
        positions it has and the longest completion through `sequence_limits()` and a prompt's tokens through
        `encode_prompt(record)` (InferlModule has both); without `encode_prompt` nothing is checked."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        count_tokens = getattr(module, "encode_prompt", None)
        if count_tokens is None:
            return
        context, max_new_tokens = getattr(module, "sequence_limits", lambda: (None, 0))()
        limit = PromptLimit.tightest(self.max_prompt_tokens, context, max_new_tokens)
        if limit is None:
            return
        announce = self.trainer.global_rank == 0  # every rank checks the same data; one says so
        for task, what in ((self.train_task, "training"), (self.val_task, "validation")):
            if task is None or self._length_checked.get(id(task)) == limit:
                continue
            task.records = drop_long_prompts(task.records, lambda r: len(count_tokens(r)), limit,
                                             self.on_long_prompt, what, announce=announce)
            self._length_checked[id(task)] = limit

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

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # prompt records: the module tokenizes them and moves the token ids inside the step

    def verify(self, records: Sequence[PromptRecord], completions: Sequence[str],
               stage: Literal["train", "val"] = "train") -> list[Verdict]:
        """Verdicts for the completions of `records` from the task of `stage`, under the verifier contract: an
        exception, a call past the task's `verify_timeout_s`, a non-finite or non-numeric reward or a wrong type
        costs that sample its reward (0, `error` set) and is counted (see `verify_error_metrics`)."""
        task = self.train_task if stage == "train" else (self.val_task or self.train_task)
        return self.guard.verify(task, records, completions, stage)

    def verify_error_metrics(self, stage: Literal["train", "val"]) -> dict[str, float]:
        """`<stage>/verify_errors` (verdicts with an error, the task's own included) and
        `<stage>/verify_errors/<kind>` (contract failures: exception, timeout, non_finite, bad_type) since the last
        call for `stage`, which resets them: log them once per training step, or once per validation."""
        return self.guard.take_counts(stage)
