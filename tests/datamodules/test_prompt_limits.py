"""Prompts too long for the model (the probe's 3,000-character prompt over the demo model's 256 positions) are
dropped at setup, each named with its id, file and line, or refused with one error, as data.on_long_prompt says."""

from __future__ import annotations

import json
import logging

import lightning as L
import pytest

from callbacks import MeanReward, SupervisedWarmStart
from datamodules import DataError, PromptDataModule, PromptRecord
from datamodules.prompt_limits import MAX_NAMED, PromptLimit, drop_long_prompts
from datamodules.tasks import Arithmetic
from modules import InferlModule, SamplingParams, TinyPolicy
from modules.hparams import EvalSettings, GroupSettings

LIMIT = PromptLimit(10, "data.max_prompt_tokens=10")


def records(lengths: list[int]) -> list[PromptRecord]:
    return [PromptRecord(id=f"r{i}", prompt="1" * n, source=f"d.jsonl:{i + 1}") for i, n in enumerate(lengths)]


def test_long_prompts_are_dropped_and_each_named(caplog):
    with caplog.at_level(logging.WARNING, logger="datamodules.prompt_limits"):
        kept = drop_long_prompts(records([3, 11, 10, 40]), lambda r: len(r.prompt), LIMIT, "drop", "training")
    assert [r.id for r in kept] == ["r0", "r2"]
    assert [r.getMessage() for r in caplog.records] == [
        "inferl: dropped training record 'r1' (d.jsonl:2): the prompt is 11 tokens, over data.max_prompt_tokens=10",
        "inferl: dropped training record 'r3' (d.jsonl:4): the prompt is 40 tokens, over data.max_prompt_tokens=10",
        "inferl: dropped 2 of 4 training records with prompts over data.max_prompt_tokens=10 (data.on_long_prompt: "
        "drop)"]


def test_many_drops_name_the_first_few_then_count(caplog):
    with caplog.at_level(logging.WARNING, logger="datamodules.prompt_limits"):
        kept = drop_long_prompts(records([1] + [99] * 50), lambda r: len(r.prompt), LIMIT, "drop", "training")
    assert len(kept) == 1 and len(caplog.records) == MAX_NAMED + 1
    assert "dropped 50 of 51" in caplog.records[-1].getMessage()


def test_on_long_prompt_error_refuses_the_data_naming_the_first_long_record():
    with pytest.raises(DataError, match=r"^record 'r1' \(d.jsonl:2\): the prompt is 11 tokens, over "
                                        r"data.max_prompt_tokens=10; .* data.on_long_prompt: drop"):
        drop_long_prompts(records([3, 11, 40]), lambda r: len(r.prompt), LIMIT, "error", "training")


def test_nothing_left_is_an_error():
    with pytest.raises(DataError, match="every one of the 2 validation records has a prompt over"):
        drop_long_prompts(records([11, 12]), lambda r: len(r.prompt), LIMIT, "drop", "validation")


def test_the_tightest_limit_wins():
    assert PromptLimit.tightest(None, None, 8) is None
    assert PromptLimit.tightest(100, 256, 8) == PromptLimit(100, "data.max_prompt_tokens=100")
    assert PromptLimit.tightest(None, 256, 8) == PromptLimit(248, "the model's 256 positions minus max_new_tokens=8")
    with pytest.raises(DataError, match="no room is left for a prompt"):
        PromptLimit.tightest(None, 256, 256)


def data_file(tmp_path, long_chars: int = 3000):
    """Eight demo-style records, the fifth a prompt of `long_chars` digits (the demo tokenizer knows digits)."""
    path = tmp_path / "data.jsonl"
    rows = [{"id": f"q{i}", "prompt": f"Q: {i}+1=?\nA: ", "reference": str(i + 1)} for i in range(8)]
    rows[4] = {"id": "long", "prompt": "Q: " + "7" * long_chars + "+1=?\nA: ", "reference": "8"}
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def fit(tmp_path, **data_settings) -> tuple[L.Trainer, PromptDataModule]:
    L.seed_everything(0, verbose=False)
    module = InferlModule(policy=TinyPolicy(hidden_size=32, num_layers=1),
                          group=GroupSettings(size=2, sampling=SamplingParams(max_new_tokens=4)),
                          evaluation=EvalSettings(samples=2, pass_k=1))
    task = Arithmetic(path=str(data_file(tmp_path)))
    data = PromptDataModule(train=task, val=task, batch_size=4, val_batch_size=8, **data_settings)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        callbacks=[MeanReward(), SupervisedWarmStart(steps=2, batch_size=64)],
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    return trainer, data


def test_a_prompt_over_the_models_positions_is_dropped_before_anything_runs(tmp_path, caplog):
    """Today the 3,000-character prompt goes into the warm start's batches of 64 (minutes, 7 GB)."""
    with caplog.at_level(logging.WARNING, logger="datamodules.prompt_limits"):
        trainer, data = fit(tmp_path)
    assert trainer.global_step == 1
    assert [r.id for r in data.train_task.records] == ["q0", "q1", "q2", "q3", "q5", "q6", "q7"]
    assert (f"inferl: dropped training record 'long' ({tmp_path / 'data.jsonl'}:5): the prompt is 3011 tokens, over "
            f"the model's 256 positions minus max_new_tokens=4") in caplog.text


def test_on_long_prompt_error_stops_at_setup_with_file_and_line(tmp_path):
    with pytest.raises(DataError, match=rf"^record 'long' \({tmp_path / 'data.jsonl'}:5\): the prompt is 3011 tokens"):
        fit(tmp_path, on_long_prompt="error")


def test_max_prompt_tokens_is_a_data_setting(tmp_path):
    _, data = fit(tmp_path, max_prompt_tokens=12)
    assert len(data.train_task.records) == 7  # "Q: 5+1=?\nA: " is 11 tokens; the long one is not


def test_settings_are_checked():
    task = Arithmetic(num_records=4)
    with pytest.raises(ValueError, match=r"data\.on_long_prompt must be 'drop' or 'error'"):
        PromptDataModule(train=task, on_long_prompt="skip")
    with pytest.raises(ValueError, match=r"data\.max_prompt_tokens must be >= 1"):
        PromptDataModule(train=task, max_prompt_tokens=0)
