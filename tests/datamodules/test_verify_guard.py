"""The verifier contract (datamodules/verify_guard.py), through the data module's verify path, with custom tasks
whose verifiers misbehave the ways the reliability probe found: NaN/inf rewards, None or a string, a wrong type, an
exception, a call that hangs. Each costs its sample's reward, is counted by kind, and never ends or stalls a run."""

from __future__ import annotations

import logging
import math
import threading
import time

import pytest
import torch

from datamodules import PromptDataModule, PromptRecord, Verdict
from datamodules.tasks import Arithmetic, Task
from modules.groups import to_groups

RELEASE = threading.Event()  # set at the end of each test: hung verifier calls return, their threads end
WAITED_OUT: list[int] = []  # hung calls that ran their whole 60 s: only possible if something waited for them


def hang() -> None:
    """The probe's verify() that sleeps 60 s (released early by RELEASE)."""
    if not RELEASE.wait(60):
        WAITED_OUT.append(1)


@pytest.fixture(autouse=True)
def release_hung_calls():
    RELEASE.clear()
    WAITED_OUT.clear()
    yield
    RELEASE.set()


class Scripted(Task):
    """A custom task whose verify() does what the completion says: "ok", "nan", "inf", "none", "string", "int",
    "answer-int", "raise", "exit", "hang", "float" (a bare number instead of a Verdict)."""

    def __init__(self, verify_timeout_s: float = 30.0) -> None:
        self.set_limits(verify_timeout_s=verify_timeout_s)
        self.records = [PromptRecord(id=f"r{i}", prompt="p", reference="x", source=f"data.jsonl:{i + 1}")
                        for i in range(4)]

    def verify(self, record, completion):
        if completion == "raise":
            raise RuntimeError("bug in the reward function")
        if completion == "exit":
            raise SystemExit(3)
        if completion == "hang":
            hang()
            return Verdict(1.0)
        return {"ok": Verdict(1.0, answer="x", score=0.5), "nan": Verdict(math.nan), "inf": Verdict(-math.inf),
                "none": Verdict(None), "string": Verdict("1.0"), "int": Verdict(1),
                "score-nan": Verdict(1.0, score=math.nan), "answer-int": Verdict(1.0, answer=7),
                "float": 1.0}[completion]


def verify(task, completions, stage="train"):
    data = PromptDataModule(train=task, val=task)
    records = [task.records[0]] * len(completions)
    return data, data.verify(records, completions, stage=stage)


@pytest.mark.parametrize("completion, kind", [
    ("nan", "non_finite"), ("inf", "non_finite"), ("score-nan", "non_finite"),
    ("none", "bad_type"), ("string", "bad_type"), ("answer-int", "bad_type"), ("float", "bad_type"),
    ("raise", "exception"), ("exit", "exception"),
])
def test_a_bad_verdict_costs_its_sample_and_is_counted_by_kind(completion, kind):
    data, verdicts = verify(Scripted(), ["ok", completion, "ok"])
    assert [v.reward for v in verdicts] == [1.0, 0.0, 1.0]
    assert verdicts[0] == Verdict(1.0, answer="x", score=0.5) and verdicts[2].error is None
    assert verdicts[1].error.startswith(f"{kind}: ") and verdicts[1].score is None and verdicts[1].answer is None
    metrics = data.verify_error_metrics("train")
    assert metrics["train/verify_errors"] == 1 and metrics[f"train/verify_errors/{kind}"] == 1
    assert sum(metrics.values()) == 2  # the total and its one kind; then reset:
    assert data.verify_error_metrics("train")["train/verify_errors"] == 0


def test_numbers_are_normalised_to_float():
    _, verdicts = verify(Scripted(), ["int"])
    assert verdicts == [Verdict(1.0)] and type(verdicts[0].reward) is float


def test_a_hanging_verify_is_cut_at_its_time_limit_and_cannot_stall_the_batch():
    task = Scripted(verify_timeout_s=0.3)
    data, verdicts = verify(task, ["hang", "ok", "hang", "hang", "ok", "hang"])
    # returned while the hung calls still hang: nothing waited for them (later calls are not started meanwhile)
    assert not WAITED_OUT and not RELEASE.is_set()
    assert [v.reward for v in verdicts] == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert verdicts[0].error == "timeout: the verifier ran past verify_timeout_s=0.3 s"
    assert "still running past verify_timeout_s" in verdicts[4].error  # refused, not started
    assert data.verify_error_metrics("train")["train/verify_errors/timeout"] == 5
    RELEASE.set()  # the hung calls return and their threads end: verification goes on as before
    deadline, rewards = time.monotonic() + 5, []
    while rewards != [1.0, 1.0] and time.monotonic() < deadline:
        time.sleep(0.05)
        rewards = [v.reward for v in data.verify([task.records[0]] * 2, ["ok", "ok"])]
    assert rewards == [1.0, 1.0]


class BatchVerifier(Scripted):
    """A custom task with its own verify_batch (one call per batch), misbehaving as told by the first completion."""

    def verify_batch(self, records, completions):
        if completions[0] == "short":
            return [Verdict(1.0)]
        if completions[0] == "hang":
            hang()
        return [self.verify(r, c) for r, c in zip(records, completions)]


def test_a_batch_verifier_is_held_to_the_contract_too():
    task = BatchVerifier(verify_timeout_s=0.2)
    _, verdicts = verify(task, ["ok", "nan", "float"])
    assert [v.error.split(":")[0] if v.error else None for v in verdicts] == [None, "non_finite", "bad_type"]
    _, verdicts = verify(task, ["ok", "raise"])  # the whole batch raised: no verdict to keep
    assert all(v.error == "exception: RuntimeError: bug in the reward function" for v in verdicts)
    _, verdicts = verify(task, ["short", "ok"])
    assert all(v.error == "bad_type: verify_batch returned 1 items for 2 completions" for v in verdicts)
    _, verdicts = verify(task, ["hang", "ok"])  # the batch's limit: 0.2 s per completion
    assert not WAITED_OUT and all(v.error.startswith("timeout: ") for v in verdicts)


def test_the_first_failure_of_each_kind_is_logged_once_with_record_and_place(caplog):
    with caplog.at_level(logging.WARNING, logger="datamodules.verify_guard"):
        data, _ = verify(Scripted(), ["nan", "nan", "raise", "raise", "none"])
        data.verify([Scripted().records[0]], ["nan"], stage="val")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("inferl: verifier of task Scripted failed the contract on record r0 (data.jsonl:1): "
                               "non_finite: Verdict.reward is nan")
    assert "RuntimeError: bug in the reward function" in lines[1] and "train/verify_errors/exception" in lines[1]
    assert data.verify_error_metrics("val")["val/verify_errors/non_finite"] == 1


def test_bad_rewards_never_reach_groups():
    """Today's failure: Verdict(reward=None) reached modules/groups.py and ended the run with a TypeError."""
    _, verdicts = verify(Scripted(), ["none", "nan", "string", "ok"])
    groups = to_groups(verdicts, torch.ones(4), group_size=2)
    assert groups.rewards.tolist() == [[0.0, 0.0], [0.0, 1.0]]
    with pytest.raises(ValueError, match=r"verdict 1 \(prompt 0, sample 1\) has reward None; verify through"):
        to_groups([Verdict(1.0), Verdict(None)], torch.ones(2), group_size=2)  # around the guard: a clear error


class FlakyArithmetic(Arithmetic):
    """The demo's task with a reward function that fails every way in turn (and hangs on one call in eight)."""

    calls = 0

    def verify(self, record, completion):
        type(self).calls += 1
        mode = type(self).calls % 8
        if mode == 1:
            return Verdict(math.nan)
        if mode == 2:
            return Verdict(None)
        if mode == 3:
            raise ValueError("reward function bug")
        if mode == 4:
            hang()
        return super().verify(record, completion)


@pytest.mark.slow
def test_training_with_a_faulty_verifier_runs_to_the_end_and_logs_each_kind(tmp_path):
    """Today this run ends at the first step (`rewards contains NaN or inf`)."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from callbacks import MeanReward
    from modules import InferlModule, SamplingParams, TinyPolicy
    from modules.hparams import EvalSettings, GroupSettings

    L.seed_everything(0, verbose=False)
    module = InferlModule(policy=TinyPolicy(hidden_size=32, num_layers=1),
                          group=GroupSettings(size=4, sampling=SamplingParams(max_new_tokens=4)),
                          evaluation=EvalSettings(samples=4, pass_k=2))
    task = FlakyArithmetic(num_records=16, digits=1, verify_timeout_s=0.5)
    logger = TensorBoardLogger(save_dir=str(tmp_path), name="run", version=0)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=logger, callbacks=[MeanReward()],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, val_check_interval=3, check_val_every_n_epoch=None,
                        limit_val_batches=1, log_every_n_steps=1)
    trainer.fit(module, datamodule=PromptDataModule(train=task, val=task, batch_size=2, val_batch_size=4))
    assert trainer.global_step == 3 and not WAITED_OUT  # no step waited out a hung call
    events = EventAccumulator(str(logger.log_dir), size_guidance={"scalars": 0})
    events.Reload()

    def last(tag):
        return events.Scalars(tag)[-1].value

    for kind in ("non_finite", "bad_type", "exception", "timeout"):
        assert sum(e.value for e in events.Scalars(f"train/verify_errors/{kind}")) > 0, kind
        assert f"val/verify_errors/{kind}" in events.Tags()["scalars"]
    assert last("val/verify_errors") > 0
    assert all(math.isfinite(e.value) for e in events.Scalars("train/loss"))
