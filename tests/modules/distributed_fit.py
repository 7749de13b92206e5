"""A tiny fit for the distributed tests, run as a script so that Lightning launches its ranks from this script and
never re-executes pytest: `python tests/modules/distributed_fit.py --strategy fsdp --devices 2 --out DIR ...`.

The run is built so that N processes with `--batch-size b` each equal one process with batch N * b: greedy
sampling (every rank samples the same way), sequence-mean loss aggregation, an objective whose weights are not zero
for identical samples (`ShiftedReward`), plain SGD (Adam amplifies float rounding of near-zero gradients), and the
prompt stream's global batch (b x N records, split across ranks) equal to the single process's batch.

Each rank writes DIR/<tag>-rank<r>.json: prompt ids, local and logged (rank-reduced) metrics per step, its sampling
seed, the strategy, whether the policy's parameters are DTensors, and the result of an uneven-generation check;
rank 0 writes the full policy weights to DIR/<tag>-weights.pt. `build()` is imported by the tests for the
single-process reference run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]

from fit_helpers import strategy_for, tiny_data, tiny_module  # noqa: E402

from datamodules.types import Groups  # noqa: E402
from modules import CriticSettings, KLSettings, SamplingParams, UpdateSettings  # noqa: E402
from modules.checkpoint_io import AtomicCheckpointIO  # noqa: E402
from modules.hparams import GroupSettings  # noqa: E402
from modules.objective import Objective  # noqa: E402
from modules.rollout.sampler import sample  # noqa: E402

#: the settings groups a run may set (build's module_args)
SETTINGS = {"group": GroupSettings, "update": UpdateSettings, "kl": KLSettings, "critic": CriticSettings}


class ShiftedReward(Objective):
    """weights = reward + generated tokens / 4 - 1: they vary with the samples and are not zero when a group's
    samples are identical (greedy sampling; the tiny model's rewards are all 0)."""

    k = 1

    def weights(self, groups: Groups, step: int):
        self._value = float(groups.rewards.float().mean())
        return groups.rewards.float() + groups.costs.float() / 4 - 1.0


class Recorder(L.Callback):
    """Writes what each rank saw and logged, step by step (see the module docstring)."""

    def __init__(self, path: Path, uneven_generation: bool) -> None:
        self.path = path
        self.uneven_generation = uneven_generation
        self.record: dict = {"steps": []}

    def on_train_start(self, trainer, pl_module) -> None:
        from torch.distributed.tensor import DTensor

        self.record.update(rank=trainer.global_rank, world_size=trainer.world_size,
                           strategy=type(trainer.strategy).__name__, seed=pl_module.generator.initial_seed(),
                           start_step=trainer.global_step,
                           dtensor_params=all(isinstance(p, DTensor) for p in pl_module.policy.parameters()))
        if self.uneven_generation:  # rank 0's completions end at their first token, the others' run to the limit
            eos = list(range(len(pl_module.tokenizer))) if trainer.global_rank == 0 else []
            with torch.no_grad():
                greedy = SamplingParams(max_new_tokens=6, temperature=0)
                samples = sample(pl_module.policy, [[5, 6, 7], [8, 9]], 2, greedy, eos_ids=eos or [10**6], pad_id=0,
                                 keep_going=lambda done: pl_module.any_rank_samples(not done))
            self.record["uneven_lengths"] = samples.completion_lengths.tolist()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.record["steps"].append({"prompts": [r.id for r in batch]})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        rollout = pl_module.last_rollout
        local = sum(v.reward for v in rollout.verdicts) / len(rollout.verdicts)
        self.record["steps"][-1].update(step=trainer.global_step, logged=logged, local_reward_mean=local,
                                        local_stats=dict(pl_module.last_stats))

    def on_train_end(self, trainer, pl_module) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        weights = get_model_state_dict(pl_module.policy, options=StateDictOptions(full_state_dict=True,
                                                                                  cpu_offload=True))
        self.path.with_name(self.path.name + f"-rank{trainer.global_rank}.json").write_text(json.dumps(self.record))
        if trainer.global_rank == 0:
            torch.save(weights, self.path.with_name(self.path.name + "-weights.pt"))


class StatsTap(L.Callback):
    """Keeps the module's latest update statistics (the per-rank loss before the cross-rank reduction)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        optimize = pl_module.optimize

        def tapped(*args, **kwargs):
            stats = optimize(*args, **kwargs)
            pl_module.last_stats = stats
            return stats

        pl_module.optimize = tapped


def build(strategy: str, devices: int, batch_size: int, steps: int, out: Path, tag: str,
          uneven_generation: bool = False, accelerator: str = "cpu",
          **module_args) -> tuple[L.Trainer, L.LightningModule, L.LightningDataModule]:
    """The trainer, module and data of a run; `module_args` are InferlModule's settings groups as dicts, over these
    defaults (e.g. kl={"coef": 0.1}, critic={"kind": "shared"})."""
    settings = {"group": {"size": 2, "sampling": SamplingParams(max_new_tokens=5, temperature=0.0)},
                "update": {"loss_aggregation": "sequence-mean", "ppo_epochs": 2}}
    for name, values in module_args.items():
        settings[name] = {**settings.get(name, {}), **values}
    module = tiny_module(optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
                         **{name: SETTINGS[name](**values) for name, values in settings.items()})
    data = tiny_data(batch_size=batch_size)
    trainer = L.Trainer(
        max_steps=steps, accelerator=accelerator, devices=devices, strategy=strategy_for(strategy), logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        plugins=[AtomicCheckpointIO()],
        callbacks=[ShiftedReward(), StatsTap(), Recorder(out / tag, uneven_generation),
                   ModelCheckpoint(dirpath=out / "ckpt", save_last=True, every_n_train_steps=1, save_top_k=-1)])
    return trainer, module, data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", choices=["single", "ddp", "fsdp"], required=True)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tag", default="run")
    parser.add_argument("--resume", action="store_true", help="resume from OUT/ckpt/last.ckpt")
    parser.add_argument("--uneven-generation", action="store_true")
    parser.add_argument("--module-args", type=json.loads, default={}, help="JSON: more InferlModule arguments")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    trainer, module, data = build(args.strategy, args.devices, args.batch_size, args.steps, args.out, args.tag,
                                  args.uneven_generation, args.accelerator, **args.module_args)
    trainer.fit(module, datamodule=data, ckpt_path=str(args.out / "ckpt" / "last.ckpt") if args.resume else None)


if __name__ == "__main__":
    main()
