"""PPO with the value head learns the demo task (configs/ppo/demo.yaml, shortened to 200 RL steps): slow, CI runs
it."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest

from app.cli import InferlCLI
from datamodules.datamodule import PromptDataModule
from modules.module import InferlModule

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "ppo" / "demo.yaml"


class ValPassAt1(L.Callback):
    """val/pass@1 of every validation, the sanity pass before RL included."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        self.values.append(float(pl_module.eval_results["metrics"]["val/pass@1"]))


@pytest.mark.slow
def test_ppo_raises_val_pass_at_1_on_the_demo(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["inferl"])  # pytest's own arguments are not the CLI's
    cli = InferlCLI(InferlModule, PromptDataModule, run=False, auto_configure_optimizers=False,
                    save_config_callback=None, args=[
        "--config", str(CONFIG), "--trainer.max_steps", "200", "--trainer.val_check_interval", "200",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--checkpoint.dirpath", str(tmp_path)])
    curve = ValPassAt1()
    cli.trainer.callbacks.append(curve)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert len(curve.values) == 2  # before RL (after the warm start) and at step 200
    assert curve.values[1] > curve.values[0] + 0.1, curve.values
    assert cli.model.value_head.proj.weight.abs().sum() > 0
