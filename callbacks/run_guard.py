"""The run's guard (added by `inferl fit` under the `guard` key): it stops a diverged run before anything of it is
saved, saves a resumable checkpoint when SIGTERM or SIGINT asks the run to stop, and warns when the policy
collapses. docs/reliability.md says what each guarantees and which test shows it."""

from __future__ import annotations

import os
import signal
import threading
import warnings

import lightning as L
import torch

from modules.errors import DivergenceError, SignalStop
from modules.finite import nonfinite_names, summarize

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunGuard(L.Callback):
    """Checks every training step, before any checkpoint callback saves it, and stops the run on trouble.

    - Divergence: a non-finite `train/loss`, gradient or weight ends the run at that step with
      `modules.errors.DivergenceError` (one line naming the step, what was non-finite and the last good checkpoint;
      `inferl` exits 1). Nothing of the diverged step is saved.
    - Signals: from the first training step on, SIGTERM and SIGINT are noted instead of ending the process; at the
      end of the step in progress (or of the next step, when they arrive during validation) the run saves
      `last.ckpt` in the checkpoint folder and stops with `modules.errors.SignalStop` (`inferl` exits 143 for
      SIGTERM, 130 for SIGINT). A second SIGINT ends the run at once without saving. Resuming with
      `--ckpt_path last` continues exactly (same prompts, same samples, same losses).
    - Collapse: a warning when `train/entropy` stays below `collapse_entropy` with `train/reward_mean` 0 for
      `collapse_steps` steps in a row (the policy repeats one wrong answer and gets no learning signal).

    Args:
        collapse_steps: consecutive collapsed steps before the warning; 0 turns the warning off.
        collapse_entropy: mean token entropy (nats) under which a step counts as collapsed.
    """

    def __init__(self, collapse_steps: int = 50, collapse_entropy: float = 0.01) -> None:
        if collapse_steps < 0 or collapse_entropy < 0:
            raise ValueError(f"guard.collapse_steps ({collapse_steps}) and guard.collapse_entropy "
                             f"({collapse_entropy}) must be >= 0")
        self.collapse_steps = collapse_steps
        self.collapse_entropy = collapse_entropy
        self.collapsed_since: int | None = None
        self.warned = False
        self.requested: int | None = None  # the signal that asked the run to stop
        self.previous_handlers: dict[int, object] = {}
        self.last_saved_step: int | None = None

    # ------------------------------------------------------------------------------------------- hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.last_saved_step = trainer.global_step if trainer.ckpt_path else None
        if threading.current_thread() is threading.main_thread():  # Python handles signals in the main thread
            # replaces Lightning's SIGTERM handler, whose flag stops the run without saving, mid-validation too
            self.previous_handlers = {signum: signal.signal(signum, self.note_signal) for signum in STOP_SIGNALS}

    def note_signal(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.requested == signal.SIGINT:
            raise KeyboardInterrupt  # pressed twice: stop now
        self.requested = self.requested or signum

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        self.check_finite(trainer, pl_module)
        self.check_collapse(trainer)
        self.stop_if_asked(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.last_saved_step = checkpoint.get("global_step", trainer.global_step)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.restore_handlers()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.restore_handlers()

    def restore_handlers(self) -> None:
        for signum, handler in self.previous_handlers.items():
            signal.signal(signum, handler)
        self.previous_handlers = {}

    # ------------------------------------------------------------------------------------------- checks
    def check_finite(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        problems = []
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None and not bool(torch.isfinite(loss).all()):
            problems.append(f"loss ({float(loss)})")
        trainable = [(name, p) for name, p in pl_module.named_parameters() if p.requires_grad]
        # with a loss scaler (fp16) an inf gradient is expected now and then: the scaler skips that update
        if getattr(trainer.precision_plugin, "scaler", None) is None:
            grads = nonfinite_names((name, p.grad) for name, p in trainable)
            if grads:
                problems.append(f"gradients ({summarize(grads)})")
        weights = nonfinite_names(trainable)
        if weights:
            problems.append(f"weights ({summarize(weights)})")
        diverged = bool(problems)
        if trainer.world_size > 1:  # every rank stops at the same step
            diverged = trainer.strategy.reduce_boolean_decision(diverged, all=False)
        if diverged:
            found = ", ".join(problems) or "values on another rank"
            raise DivergenceError(
                f"training diverged at step {trainer.global_step}: non-finite {found}; stopped before saving it "
                f"({self.last_good(trainer)}); lower model.optimizer.init_args.lr, set model.update.max_grad_norm, or "
                "look for NaN/inf rewards")

    def last_good(self, trainer: L.Trainer) -> str:
        if self.last_saved_step is None:
            return "no checkpoint of this run was written yet"
        callback = trainer.checkpoint_callback
        path = getattr(callback, "last_model_path", "") or trainer.ckpt_path
        return f"the last good checkpoint is {path} (step {self.last_saved_step})"

    def check_collapse(self, trainer: L.Trainer) -> None:
        if not self.collapse_steps or self.warned:
            return
        entropy, reward = (trainer.callback_metrics.get(key) for key in ("train/entropy", "train/reward_mean"))
        if entropy is None or reward is None:
            return
        self.collapsed_since = collapse_start(self.collapsed_since, trainer.global_step, float(entropy),
                                              float(reward), self.collapse_entropy)
        if self.collapsed_since is None:
            return
        if trainer.global_step - self.collapsed_since + 1 >= self.collapse_steps and trainer.is_global_zero:
            self.warned = True
            warnings.warn(
                f"policy collapse: train/entropy < {self.collapse_entropy} and train/reward_mean = 0 for "
                f"{self.collapse_steps} steps (since step {self.collapsed_since}): the policy repeats answers that "
                "always fail and gets no learning signal; lower model.optimizer.init_args.lr or resume from an "
                "earlier checkpoint (guard.collapse_steps: 0 turns this warning off)", stacklevel=1)

    def stop_if_asked(self, trainer: L.Trainer) -> None:
        requested = self.requested or (signal.SIGTERM if trainer.received_sigterm else None)
        if trainer.world_size > 1:  # every rank saves and stops at the same step
            if not trainer.strategy.reduce_boolean_decision(requested is not None, all=False):
                return
            requested = requested or signal.SIGTERM
        if requested is None:
            return
        callback = trainer.checkpoint_callback
        if callback is not None:
            path = callback.format_checkpoint_name({}, callback.CHECKPOINT_NAME_LAST)
            callback.last_model_path = path  # part of the saved state: the resumed run keeps writing last.ckpt
        else:
            path = os.path.join(trainer.default_root_dir, "last.ckpt")
        trainer.save_checkpoint(path)
        name = signal.Signals(requested).name
        raise SignalStop(f"stopped by {name} after step {trainer.global_step}: saved {path}; continue with "
                         "--ckpt_path last", requested)


def collapse_start(start: int | None, step: int, entropy: float, reward: float, max_entropy: float) -> int | None:
    """The step at which the current run of collapsed steps (mean token entropy below `max_entropy` and mean
    reward 0) began, given the previous one `start`; None when `step` itself is not collapsed."""
    if entropy >= max_entropy or reward != 0:
        return None
    return step if start is None else start
