"""A text table of training samples (prompt, completion, reward) in TensorBoard every N steps."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger


def markdown_cell(text: str, limit: int = 400) -> str:
    text = text if len(text) <= limit else text[:limit] + " …"
    return text.replace("|", "\\|").replace("\n", "<br>")


class SampleTable(L.Callback):
    """Log the latest step's samples as a markdown table under the text tag `samples`.

    Args:
        every_n_steps: log at steps 0, N, 2N, ...
        prompts: how many prompts to show (all their samples are shown).
        max_chars: cut prompts and completions longer than this.
    """

    def __init__(self, every_n_steps: int = 10, prompts: int = 2, max_chars: int = 400) -> None:
        if every_n_steps < 1:
            raise ValueError(f"SampleTable: every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.prompts = prompts
        self.max_chars = max_chars

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step = trainer.global_step - 1  # the step that just ran
        rollout = getattr(pl_module, "last_rollout", None)
        if rollout is None or step % self.every_n_steps or trainer.global_rank != 0:
            return
        rows = ["| prompt | completion | reward | answer | error |", "|---|---|---|---|---|"]
        for b, record in enumerate(rollout.records[: self.prompts]):
            prompt = record.prompt if record.prompt is not None else str(record.messages)
            for j in range(rollout.group_size):
                i = b * rollout.group_size + j
                verdict = rollout.verdicts[i]
                rows.append(f"| {markdown_cell(prompt, self.max_chars) if j == 0 else ''} | "
                            f"{markdown_cell(rollout.texts[i], self.max_chars)} | {verdict.reward:g} | "
                            f"{verdict.answer or ''} | {markdown_cell(verdict.error or '', 120)} |")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("samples", "\n".join(rows), global_step=step)
