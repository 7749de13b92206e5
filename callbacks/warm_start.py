"""Supervised warm start: a short phase of teacher forcing on the task's reference completions before RL.

RL from a randomly initialised model has no reward signal to climb; the demo uses this to reach a policy
that is sometimes right, from which RL can then learn. It runs once, at the start of a fresh fit (never
when resuming from a checkpoint, whose weights already include it).
"""

from __future__ import annotations

import logging

import lightning as L
import torch

from modules.logprobs import token_logprobs
from modules.padding import left_pad, right_pad

log = logging.getLogger(__name__)


class SupervisedWarmStart(L.Callback):
    """Teacher-force the policy on `reference_completion`s of the training task for `steps` steps.

    Args:
        steps: optimizer steps of the supervised phase.
        lr: AdamW learning rate of the phase (its optimizer is discarded afterwards).
        batch_size: sequences per step.
        seed: which records are drawn.
    """

    def __init__(self, steps: int = 100, lr: float = 1e-3, batch_size: int = 32, seed: int = 0) -> None:
        if steps < 0 or batch_size < 1:
            raise ValueError("SupervisedWarmStart: steps must be >= 0 and batch_size >= 1")
        self.steps = steps
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is not None or self.steps == 0:
            return
        task = trainer.datamodule.train_task
        pairs = [(r, task.reference_completion(r)) for r in task.records]
        pairs = [(r, c) for r, c in pairs if c is not None]
        if not pairs:
            raise ValueError(f"SupervisedWarmStart: task {type(task).__name__} has no reference completions; "
                             "remove the callback or use a task that has them")
        policy, tokenizer = pl_module.policy, pl_module.tokenizer
        optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=self.lr)
        generator = torch.Generator().manual_seed(self.seed)
        device = next(policy.parameters()).device
        policy.train()
        for step in range(self.steps):
            chosen = torch.randint(len(pairs), (self.batch_size,), generator=generator).tolist()
            prompts = [pl_module.encode_prompt(pairs[i][0]) for i in chosen]
            completions = [[*tokenizer(pairs[i][1], add_special_tokens=False).input_ids, tokenizer.eos_token_id]
                           for i in chosen]
            prompt_ids, prompt_mask = left_pad(prompts, tokenizer.pad_token_id, device)
            completion_ids, completion_mask = right_pad(completions, tokenizer.pad_token_id, device)
            logprobs, _ = token_logprobs(policy, prompt_ids, prompt_mask, completion_ids, completion_mask)
            loss = -(logprobs * completion_mask).sum() / completion_mask.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % 50 == 0 or step == self.steps - 1:
                log.info("warm start step %d/%d: loss %.4f", step + 1, self.steps, loss.item())
        if hasattr(pl_module, "reset_reference"):  # the KL anchors to the warm-started policy, not the random one
            pl_module.reset_reference()
        if trainer.logger is not None:
            trainer.logger.log_metrics({"warmstart/loss": loss.item()}, step=0)

