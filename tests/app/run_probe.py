"""A callback for `inferl fit` subprocesses in tests (on PYTHONPATH there): it records each training step's prompt
ids and loss as JSON lines, and can send a signal to its own process while a given step runs."""

from __future__ import annotations

import json
import os
import signal

import lightning as L


class StepProbe(L.Callback):
    """Appends {step, ids, loss} to `path` after every training step; sends `signal_name` to this process at the
    start of training step `signal_at` (1-based; 0 = never), so the run is interrupted in the middle of that step."""

    def __init__(self, path: str, signal_at: int = 0, signal_name: str = "SIGTERM") -> None:
        self.path, self.signal_at, self.signal_name = path, signal_at, signal_name
        self.ids: list[str] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.ids = [record.id for record in batch]
        if trainer.global_step + 1 == self.signal_at:
            os.kill(os.getpid(), getattr(signal, self.signal_name))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        row = {"step": trainer.global_step, "ids": self.ids, "loss": float(trainer.callback_metrics["train/loss"])}
        with open(self.path, "a") as file:
            file.write(json.dumps(row) + "\n")
