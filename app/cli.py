"""`inferl fit --config configs/demo.yaml`: LightningCLI over InferlModule and PromptDataModule (+ `inferl export`)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from typing import NoReturn

from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from app.export import ExportSubcommand
from callbacks.progress import StepProgressBar
from callbacks.run_guard import RunGuard
from datamodules.datamodule import PromptDataModule
from datamodules.records import DataError
from modules.errors import ConfigError, RunStopped
from modules.module import InferlModule
from modules.objective import single_objective
from modules.run_folder import check_checkpoint_file, launched_as_rank_zero, prepare_fit_folder, slurm_requeue_resumes


class ConciseArgumentParser(LightningArgumentParser):
    """A parser whose errors are one explanation and a pointer to --help, not a page of usage."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        sys.stderr.write(f"inferl: error: {message.strip()}\n(run `{prog} --help` for the accepted keys)\n")
        sys.exit(2)


class InferlCLI(ExportSubcommand, LightningCLI):
    """LightningCLI with a checkpoint section that keeps `last.ckpt` (so `--ckpt_path last` resumes), and an
    `export` subcommand that writes a checkpoint's policy as a Hugging Face model folder (app/export.py)."""

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        # Lightning then overwrites the model's arguments with the checkpoint's hyperparameters: right when resuming
        # fit, wrong for evaluating a checkpoint with other settings (`inferl test --model.evaluation.samples 32`):
        # keep this run's `model.evaluation` for before_instantiate_classes
        subcommand = self.config.get("subcommand")
        self.evaluation = None if subcommand in (None, "fit", "export") else self.config[subcommand]["model"].get(
            "evaluation")
        if subcommand is not None and self.config[subcommand].get("ckpt_path"):
            check_checkpoint_file(self.config[subcommand]["ckpt_path"])  # an empty file: one line, not an EOFError

    def before_instantiate_classes(self) -> None:
        if self.evaluation is not None:
            self.config[self.config["subcommand"]]["model"]["evaluation"] = self.evaluation

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(RunGuard, "guard")  # divergence, signals, collapse (callbacks/run_guard.py)
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.every_n_train_steps": 50,
                             "checkpoint.save_top_k": -1, "checkpoint.filename": "step{step:06d}",
                             "checkpoint.auto_insert_metric_name": False})

    def before_fit(self) -> None:
        # checks that write nothing come before the logger makes its version folder; then claim the checkpoint
        # folder (lock, one run's files only, `last` = its last.ckpt, unfinished saves removed): modules/run_folder.py
        single_objective(self.trainer.callbacks, self.model.group.size)
        settings = self.config_init["fit"]
        self.run_lock, settings["ckpt_path"] = prepare_fit_folder(
            getattr(self.trainer.checkpoint_callback, "dirpath", None), settings.get("ckpt_path"),
            launched_as_rank_zero(), slurm_requeue_resumes(self.trainer.default_root_dir))

    def after_fit(self) -> None:
        if self.run_lock is not None:
            self.run_lock.release()

    def after_instantiate_classes(self) -> None:
        # Lightning's default bar would read "Epoch 0/-2" on the endless prompt stream (callbacks/progress.py)
        bar = getattr(getattr(self, "trainer", None), "progress_bar_callback", None)  # no trainer: parse-only
        if type(bar) is RichProgressBar:
            callbacks = self.trainer.callbacks
            callbacks[callbacks.index(bar)] = StepProgressBar(refresh_rate=bar.refresh_rate, theme=bar.theme)


def quiet_known_warnings() -> None:
    """Hide what Lightning prints that a user of inferl cannot act on, each by its exact message and origin."""
    # manual optimization saves after the optimizer step on purpose: `last` resumes from the updated weights
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization", category=UserWarning,
                            module=r"lightning\.pytorch\.callbacks\.model_checkpoint")
    # Lightning 2.6's own use of a torch pytree class that torch 2.13 deprecates; nothing of ours
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
    # the frozen reference model stays in eval mode on purpose (no dropout in its log-probs); the policy trains
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training",
                            category=PossibleUserWarning)
    # the checkpoint folder always holds this run's lock file (modules/run_folder.py checks what else is there)
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty", category=UserWarning,
                            module=r"lightning\.pytorch\.callbacks\.model_checkpoint")
    # an advertisement for a cloud logging service, printed at every start
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡 Tip: For seamless cloud logging"))


def main(args: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_known_warnings()
    try:
        InferlCLI(InferlModule, PromptDataModule, args=args, parser_class=ConciseArgumentParser,
                  save_config_kwargs={"overwrite": True},
                  trainer_defaults={"log_every_n_steps": 1, "plugins": [
                      {"class_path": "modules.checkpoint_io.AtomicCheckpointIO"}]}, auto_configure_optimizers=False)
    except RunStopped as error:  # diverged, or stopped by a signal after saving: say so, exit non-zero
        print(f"inferl: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except SIGTERMException:  # Lightning's own stop (exit code 0), before callbacks.RunGuard handles signals
        print("inferl: stopped by SIGTERM before the first training step; nothing to save", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except (DataError, ConfigError) as error:
        # bad data or settings: one line that says what and how to fix it, not a traceback
        print(f"inferl: error: {error}", file=sys.stderr)
        sys.exit(2)
