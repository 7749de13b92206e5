"""Tiny, fast building blocks for fit tests: the demo task on a 2-layer, 32-wide Llama."""

from __future__ import annotations

import lightning as L
import torch

from callbacks import MeanReward
from datamodules import PromptDataModule
from datamodules.tasks import Arithmetic
from modules import EvalSettings, GroupSettings, InferlModule, SamplingParams, TinyPolicy


class PromptLog(L.Callback):
    """Records the prompt ids of every training batch (what the run consumed)."""

    def __init__(self) -> None:
        self.ids: list[list[str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.ids.append([record.id for record in batch])


def tiny_module(**kwargs) -> InferlModule:
    settings = dict(policy=TinyPolicy(hidden_size=32, num_layers=2, intermediate_size=64, seed=0),
                    group=GroupSettings(size=4, sampling=SamplingParams(max_new_tokens=5)),
                    evaluation=EvalSettings(samples=4, pass_k=2),
                    optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2))
    settings.update(kwargs)
    return InferlModule(**settings)


def tiny_data(**kwargs) -> PromptDataModule:
    settings = dict(train=Arithmetic(num_records=40, digits=1, seed=1), val=Arithmetic(num_records=8, digits=1, seed=2),
                    batch_size=4, val_batch_size=8)
    settings.update(kwargs)
    return PromptDataModule(**settings)


def tiny_trainer(max_steps: int, callbacks: list | None = None, **kwargs) -> L.Trainer:
    settings = dict(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                    limit_val_batches=0)
    settings.update(kwargs)
    return L.Trainer(callbacks=[MeanReward(), *(callbacks or [])], **settings)


def strategy_for(name: str):
    """The Lightning strategy a test script names: "fsdp" (inferl's FSDP2), "ddp", or "auto" for anything else."""
    if name == "fsdp":
        from modules.sharding import FSDP2Strategy

        return FSDP2Strategy()
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy()
    return "auto"
