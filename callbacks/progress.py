"""The console progress bar of a training run: Lightning's RichProgressBar, labelled for runs that max_steps ends."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """RichProgressBar for training on an endless prompt stream: Lightning counts the whole run as epoch 0 of
    max_epochs = -1 and the bar would read "Epoch 0/-2"; this one reads "Training" (its total is Lightning's own:
    the steps left until max_steps)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.labelled: object = None  # the bar whose description this callback set

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self.label(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.label(trainer)  # the bar is re-made after a mid-epoch resume

    def label(self, trainer: L.Trainer) -> None:
        bar = self.train_progress_bar_id
        if trainer.max_epochs != -1 or self.progress is None or bar is None or bar == self.labelled:
            return
        style = self.theme.description
        self.progress.update(bar, description=f"[{style}]Training" if style else "Training")
        self.labelled = bar
