"""TensorBoard extras for fit: a custom-scalars layout (the curves grouped as one reads them), histograms of the
training rewards and objective weights every N steps, and the validation solve-rate histogram."""

from __future__ import annotations

import itertools

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger


def layout() -> dict[str, dict[str, list]]:
    """The custom-scalars layout: category -> chart title -> ["Multiline", [tag regexes]]."""
    return {
        "estimates by k": {
            "val pass@k (each k)": ["Multiline", [r"val/pass@\d+"]],
            "val maj@k (each k)": ["Multiline", [r"val/maj@\d+"]],
            "val bon@k (each k), bom@k": ["Multiline", [r"val/bon@\d+", r"val/bom@k"]],
            "val pass^k (each k)": ["Multiline", [r"val/pass\^\d+"]],
            "train pass@1, pass@k, pass^k, maj@k": ["Multiline", [r"train/pass@(1|k)", r"train/pass\^k",
                                                                   r"train/maj@k"]],
        },
        "training": {
            "reward": ["Multiline", [r"train/reward_mean"]],
            "KL to reference": ["Multiline", [r"train/kl"]],
            "entropy": ["Multiline", [r"train/entropy"]],
            "loss, clip fraction, groups without signal": ["Multiline", [r"train/loss", r"train/clip_frac",
                                                                          r"train/adv_zero_frac"]],
            "response length": ["Multiline", [r"(train|val)/response_len"]],
            "truncated, verify errors": ["Multiline", [r"(train|val)/truncated_frac", r"train/verify_errors"]],
        },
        "timing": {
            "seconds per step phase": ["Multiline", [r"time/.*"]],
            "generated tokens per second": ["Multiline", [r"perf/gen_tokens_per_s"]],
        },
    }


def tensorboard(trainer: L.Trainer):
    """The SummaryWriter of the trainer's TensorBoardLogger, or None (other loggers, or not rank 0)."""
    if trainer.global_rank != 0:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class TensorBoardExtras(L.Callback):
    """Custom-scalars layout at fit start; histograms `train/rewards` and `train/weights` every N steps and
    `val/solve_rate` after each validation (the fraction of a prompt's n samples that are right, per prompt).

    Args:
        every_n_steps: log the training histograms at steps 0, N, 2N, ...
    """

    def __init__(self, every_n_steps: int = 10) -> None:
        if every_n_steps < 1:
            raise ValueError(f"TensorBoardExtras: every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard(trainer)
        if writer is not None:
            writer.add_custom_scalars(layout())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step = trainer.global_step - 1  # the step that just ran
        rollout = getattr(pl_module, "last_rollout", None)
        writer = tensorboard(trainer)
        if writer is None or rollout is None or step % self.every_n_steps:
            return
        writer.add_histogram("train/rewards", torch.tensor([v.reward for v in rollout.verdicts]), global_step=step)
        if rollout.weights is not None:
            writer.add_histogram("train/weights", rollout.weights.float().cpu(), global_step=step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = getattr(pl_module, "eval_results", None)
        writer = tensorboard(trainer)
        if writer is None or results is None or results["stage"] != "val":
            return
        histogram = results["solve_rate_histogram"]
        edges, counts = histogram["edges"], histogram["counts"]
        if sum(counts) == 0:
            return
        centers = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
        total = sum(counts)
        mean = sum(c * x for c, x in zip(counts, centers))
        writer.add_histogram_raw("val/solve_rate", min=edges[0], max=edges[-1], num=total, sum=mean,
                                 sum_squares=sum(c * x * x for c, x in zip(counts, centers)),
                                 bucket_limits=edges[1:], bucket_counts=counts, global_step=results["step"])
