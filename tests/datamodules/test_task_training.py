"""Two RL steps on each real task with a tiny byte-level model: the plumbing from records through the sampler, the
verifier (sandbox or math workers) and the update to the logged metrics. Rewards are near zero (the model is random);
what is tested is that every task trains, and that an exception inside a verifier is counted in train/verify_errors
instead of crashing the run."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
from data_paths import data_file
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks import MeanReward
from datamodules import PromptDataModule
from datamodules.tasks import GSM8K, MBPP, load_task
from modules import EvalSettings, GroupSettings, InferlModule, SamplingParams, TinyPolicy

TASKS = {
    "gsm8k": ("gsm8k", "test.jsonl"),
    "math": ("math", "math500.jsonl"),
    "humaneval": ("humaneval", "HumanEval.jsonl"),
    "mbpp": ("mbpp", "mbpp.jsonl"),
    "stdio": ("codecontests", "test.jsonl"),
}


def shortest(task, n: int = 4):
    """Keep the task's `n` records with the shortest prompts (fast, and well inside the tiny model's context)."""
    def length(r):
        return len(r.prompt or "".join(m["content"] for m in r.messages))
    task.records = sorted(task.records, key=length)[:n]
    return task


def fit_two_steps(task, tmp_path: Path) -> tuple[L.Trainer, InferlModule, Path]:
    L.seed_everything(0, verbose=False)
    module = InferlModule(policy=TinyPolicy(alphabet=None, hidden_size=32, num_layers=1, max_position_embeddings=4096),
                          group=GroupSettings(size=2, sampling=SamplingParams(max_new_tokens=16)),
                          evaluation=EvalSettings(samples=2, pass_k=1))
    logger = TensorBoardLogger(save_dir=str(tmp_path), name="run", version=0)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=logger, callbacks=[MeanReward()],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=1)
    trainer.fit(module, datamodule=PromptDataModule(train=task, val=None, batch_size=2))
    return trainer, module, Path(logger.log_dir)


def scalars(log_dir: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    assert tag in events.Tags()["scalars"], f"{tag} not logged; logged: {sorted(events.Tags()['scalars'])}"
    return [e.value for e in events.Scalars(tag)]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_two_rl_steps_on_each_real_task(name, tmp_path):
    task = shortest(load_task(name, data_file(*TASKS[name])))
    trainer, module, log_dir = fit_two_steps(task, tmp_path)
    assert trainer.global_step == 2
    rollout = module.last_rollout
    assert rollout is not None and len(rollout.texts) == len(rollout.verdicts) == 2 * 2
    assert {r.id for r in rollout.records} <= {r.id for r in task.records}
    assert all(0.0 <= v.reward <= 1.0 for v in rollout.verdicts)
    if name in ("humaneval", "mbpp", "stdio"):
        assert all(v.score is not None for v in rollout.verdicts)  # what best-of-N selects with
    rewards = scalars(log_dir, "train/reward_mean")
    assert len(rewards) == 2 and all(math.isfinite(x) for x in rewards)
    assert all(math.isfinite(x) for x in scalars(log_dir, "train/loss"))
    assert len(scalars(log_dir, "train/verify_errors")) == 2
    assert scalars(log_dir, "time/verify_s")[-1] > 0


class RaisingMBPP(MBPP):
    """MBPP whose verifier crashes on every other completion (a bug in a reward function)."""

    calls = 0

    def verify(self, record, completion):
        type(self).calls += 1
        if type(self).calls % 2:
            raise RuntimeError("bug in the reward function")
        return super().verify(record, completion)


class BrokenGSM8K(GSM8K):
    """GSM8K whose records lost their gold answers: the math verifier fails on each of them."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for record in self.records:
            record.reference = None


@pytest.mark.parametrize("make,expected", [
    (lambda: RaisingMBPP(data_file("mbpp", "mbpp.jsonl"), split="prompt"), "RuntimeError: bug in the reward function"),
    (lambda: BrokenGSM8K(data_file("gsm8k", "test.jsonl"), limit=8), "TypeError"),
], ids=["code-verifier-raises", "math-verifier-fails"])
def test_verifier_exceptions_are_counted_not_fatal(make, expected, tmp_path):
    task = shortest(make())
    trainer, module, log_dir = fit_two_steps(task, tmp_path)
    assert trainer.global_step == 2  # the run finished
    errors = scalars(log_dir, "train/verify_errors")
    assert len(errors) == 2 and all(e > 0 for e in errors), errors
    verdicts = module.last_rollout.verdicts
    assert sum(expected in (v.error or "") for v in verdicts) > 0, verdicts  # the exception became a verdict ...
    assert errors[-1] == sum(v.error is not None for v in verdicts)  # ... counted in the logged metric
    assert float(trainer.callback_metrics["train/verify_errors"]) == errors[-1]
    assert all(v.reward == 0.0 for v in verdicts if v.error)
