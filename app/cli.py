"""`inferl fit --config configs/demo.yaml`: LightningCLI over InferlModule and PromptDataModule (+ `inferl export`)."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from app.export import ExportSubcommand
from datamodules.datamodule import PromptDataModule
from datamodules.records import DataError
from modules.module import ConfigError, InferlModule


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

    #: evaluation settings a validate/test/predict run takes from its own config, not from the checkpoint
    EVAL_KEYS = ("val_samples", "val_sampling", "eval_ks", "pass_k")

    def _parse_ckpt_path(self) -> None:
        # Lightning overwrites the model's arguments with the checkpoint's hyperparameters: right when resuming fit,
        # wrong for evaluating a checkpoint with other sampling settings (e.g. `inferl test --model.val_samples 32`)
        subcommand = self.config.get("subcommand")
        keep = {} if subcommand in (None, "fit") else {
            key: self.config[subcommand]["model"].get(key) for key in self.EVAL_KEYS}
        super()._parse_ckpt_path()
        for key, value in keep.items():
            self.config[subcommand]["model"][key] = value

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.every_n_train_steps": 50,
                             "checkpoint.save_top_k": -1, "checkpoint.filename": "step{step:06d}",
                             "checkpoint.auto_insert_metric_name": False})


def main(args: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        InferlCLI(InferlModule, PromptDataModule, args=args, parser_class=ConciseArgumentParser,
                  save_config_kwargs={"overwrite": True},
                  trainer_defaults={"log_every_n_steps": 1, "plugins": [
                      {"class_path": "modules.checkpoint_io.AtomicCheckpointIO"}]}, auto_configure_optimizers=False)
    except (DataError, ConfigError) as error:
        # bad data or settings: one line that says what and how to fix it, not a traceback
        print(f"inferl: error: {error}", file=sys.stderr)
        sys.exit(2)
