"""Fit end to end on a tiny model: the policy learns, the reference stays frozen, resume is exact, metrics land
in TensorBoard."""

from __future__ import annotations

import glob

import lightning as L
import pytest
import torch
from fit_helpers import PromptLog, tiny_data, tiny_module, tiny_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks import MeanReward, SampleTable, SupervisedWarmStart
from datamodules.datamodule import RecordBatches
from datamodules.types import PromptRecord
from modules import ConfigError, KLSettings, TinyPolicy, UpdateSettings


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def test_fit_changes_policy_and_not_reference():
    module = tiny_module(kl=KLSettings(coef=0.1))
    policy_before, reference_before = snapshot(module.policy), snapshot(module.reference)
    tiny_trainer(3).fit(module, datamodule=tiny_data())
    changed = [n for n, v in module.policy.state_dict().items() if not torch.equal(v, policy_before[n])]
    assert len(changed) > len(policy_before) // 2
    for name, value in module.reference.state_dict().items():
        assert torch.equal(value, reference_before[name]), name
    assert not any(p.requires_grad for p in module.reference.parameters())


def test_no_reference_model_without_kl():
    assert tiny_module(kl=KLSettings(coef=0.0)).reference is None


def test_fit_needs_exactly_one_objective():
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, callbacks=[MeanReward(), MeanReward(normalize="group_std")])
    with pytest.raises(ConfigError, match="exactly one objective"):
        trainer.fit(tiny_module(), datamodule=tiny_data())
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False)
    with pytest.raises(ConfigError, match="found: none"):
        trainer.fit(tiny_module(), datamodule=tiny_data())


def test_resume_from_last_is_bit_identical(tmp_path):
    steps = 6
    straight_log = PromptLog()
    straight = tiny_module(update=UpdateSettings(ppo_epochs=2, minibatches=2))
    tiny_trainer(steps, [straight_log]).fit(straight, datamodule=tiny_data())

    first_log, checkpoint = PromptLog(), ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    first = tiny_module(update=UpdateSettings(ppo_epochs=2, minibatches=2))
    tiny_trainer(steps // 2, [first_log, checkpoint], enable_checkpointing=True).fit(first, datamodule=tiny_data())
    second_log = PromptLog()
    # a different init: the weights must come from the checkpoint
    other_init = TinyPolicy(hidden_size=32, num_layers=2, intermediate_size=64, seed=99)
    resumed = tiny_module(policy=other_init, update=UpdateSettings(ppo_epochs=2, minibatches=2))
    tiny_trainer(steps, [second_log, ModelCheckpoint(dirpath=tmp_path, save_last=True)],
                 enable_checkpointing=True).fit(resumed, datamodule=tiny_data(), ckpt_path=str(tmp_path / "last.ckpt"))

    assert first_log.ids + second_log.ids == straight_log.ids
    for name, value in straight.policy.state_dict().items():
        assert torch.equal(value, resumed.policy.state_dict()[name]), name
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())


def test_tensorboard_has_design_metric_names(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = tiny_trainer(4, [SampleTable(every_n_steps=2)], logger=logger, log_every_n_steps=1,
                           limit_val_batches=None, val_check_interval=2, check_val_every_n_epoch=None,
                           num_sanity_val_steps=-1)
    trainer.fit(tiny_module(kl=KLSettings(coef=0.05)), datamodule=tiny_data())
    events = EventAccumulator(glob.glob(f"{logger.log_dir}/events.out.tfevents*")[0],
                              size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {"train/reward_mean", "train/pass@1", "train/pass@k", "train/maj@k", "train/adv_zero_frac", "train/kl",
                "train/entropy", "train/clip_frac", "train/loss", "train/response_len", "train/truncated_frac",
                "train/verify_errors", "time/rollout_s", "time/verify_s", "time/update_s", "perf/gen_tokens_per_s",
                "val/pass@1", "val/pass@k", "val/maj@k", "val/response_len", "objective/k"}
    assert expected <= scalars, expected - scalars
    assert [e.step for e in events.Scalars("val/pass@1")] == [0, 1, 3]  # step 0 from the sanity pass, then every 2
    assert len(events.Scalars("train/reward_mean")) == 4
    assert "samples/text_summary" in events.Tags()["tensors"]


def test_micro_batches_sorted_by_length_give_the_minibatch_update():
    # plain SGD: Adam's first steps amplify float-rounding differences of near-zero gradients to full lr steps
    whole, micro = (tiny_module(optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
                                update=UpdateSettings(ppo_epochs=2, minibatches=2, micro_batch_size=size),
                                kl=KLSettings(coef=0.1)) for size in (None, 3))
    warmed = []
    for module in (whole, micro):  # a warm start first, so that some samples are right and the weights are not 0
        tiny_trainer(1, [SupervisedWarmStart(steps=40, lr=1e-2), Snapshot(warmed)]).fit(
            module, datamodule=tiny_data(batch_size=8))  # 8 prompts: some groups mixed, so the update is not zero
    for name, value in whole.policy.state_dict().items():
        assert torch.allclose(value, micro.policy.state_dict()[name], atol=1e-5), name
    assert not torch.equal(whole.policy.state_dict()["lm_head.weight"], warmed[0]["lm_head.weight"])


class Snapshot(L.Callback):
    """Keeps the policy's weights as they are when RL starts (after the warm start)."""

    def __init__(self, into: list) -> None:
        self.into = into

    def on_train_start(self, trainer, pl_module) -> None:
        self.into.append(snapshot(pl_module.policy))


def test_a_padding_batch_is_not_evaluated():
    module = tiny_module()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    filler = PromptRecord(id="0", prompt="1+1=", reference="2")
    trainer.validate(module, dataloaders=RecordBatches([], 1, num_batches=2, filler=filler))
    assert module.eval_results is None  # two batches ran, nothing was counted
