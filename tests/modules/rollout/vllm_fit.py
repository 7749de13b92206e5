"""A tiny fit with vLLM rollouts, run as a script so that Lightning launches its ranks from here, never from pytest:
`python tests/modules/rollout/vllm_fit.py --strategy ddp|fsdp|single --devices N --steps S --out DIR [--resume]`.

Each rank writes DIR/<tag>-rank<r>.json with, per training step: the prompt ids, the sampled completions, the
global step whose weights the engine held, and (after each rollout) whether the engine's greedy completions and
sampled-token log-probs equal the trainer's on the current policy (torch sampler greedy, trainer forward).
`build()` is imported by tests/modules/rollout/test_vllm.py for the in-process runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the colocated engine (also set by VLLMRollout itself)
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[2]), str(HERE.parent)]

import lightning as L  # noqa: E402
import torch  # noqa: E402
from fit_helpers import strategy_for, tiny_data  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from callbacks import MeanReward  # noqa: E402
from modules import InferlModule, SamplingParams, TinyPolicy  # noqa: E402
from modules.hparams import GroupSettings, MemorySettings, UpdateSettings  # noqa: E402
from modules.policy import LoraParams  # noqa: E402
from modules.rollout.sampler import sample  # noqa: E402
from modules.rollout.vllm import VLLMRollout  # noqa: E402

GREEDY = SamplingParams(max_new_tokens=6, temperature=0)
#: a TinyPolicy that vLLM's CPU attention runs (head size 64 / 2 = 32)
POLICY = dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, seed=0)


class CheckedVLLMRollout(VLLMRollout):
    """The real engine; after each rollout it also compares itself with the trainer on the current policy."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.checks: list[dict] = []

    def generate(self, prompt_ids, group_size, params, generator):
        samples = super().generate(prompt_ids, group_size, params, generator)
        module = self.module
        trainer_logprobs = module.batched_logprobs(module.policy, samples)
        mask = samples.completion_mask.bool()
        was_training = module.policy.training
        module.policy.eval()
        try:
            torch_greedy = sample(module.policy, prompt_ids, 1, GREEDY, eos_ids=module.eos_token_ids(),
                                  pad_id=module.tokenizer.pad_token_id,
                                  keep_going=lambda local_done: module.any_rank_samples(not local_done))
        finally:
            module.policy.train(was_training)
        engine_greedy = super().generate(prompt_ids, 1, GREEDY, torch.Generator().manual_seed(0))
        self.checks.append({
            "step": module.global_step, "engine_step": self.weights_loaded_at_step,
            "logprob_max_diff": float((trainer_logprobs - samples.sampling_logprobs)[mask].abs().max()),
            "greedy_equal": rows(engine_greedy) == rows(torch_greedy),
            "completions": rows(samples)})
        return samples


def rows(samples) -> list[list[int]]:
    """Each sample's completion tokens."""
    return [ids[:int(n)].tolist() for ids, n in zip(samples.completion_ids, samples.completion_lengths)]


class Recorder(L.Callback):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.record: dict = {"steps": []}

    def on_train_start(self, trainer, pl_module) -> None:
        self.record.update(rank=trainer.global_rank, world_size=trainer.world_size, start_step=trainer.global_step,
                           strategy=type(trainer.strategy).__name__, engine_id=id(pl_module.engine.llm))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.record["steps"].append({"prompts": [r.id for r in batch]})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.record["steps"][-1]["check"] = pl_module.engine.checks[-1]

    def on_train_end(self, trainer, pl_module) -> None:
        self.path.with_name(f"{self.path.name}-rank{trainer.global_rank}.json").write_text(json.dumps(self.record))


def build(strategy: str, devices: int, steps: int, out: Path, tag: str, lora: bool = False,
          batch_size: int = 2) -> tuple[L.Trainer, InferlModule, L.LightningDataModule]:
    module = InferlModule(
        policy=TinyPolicy(**POLICY), rollout=CheckedVLLMRollout(kv_cache_gib=0.25),
        group=GroupSettings(size=4, sampling=SamplingParams(max_new_tokens=6)),
        update=UpdateSettings(max_grad_norm=None),
        memory=MemorySettings(lora=LoraParams(rank=4, alpha=8) if lora else None),
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-2))
    data = tiny_data(batch_size=batch_size)
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", devices=devices, strategy=strategy_for(strategy), logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[MeanReward(), Recorder(out / tag),
                   ModelCheckpoint(dirpath=out / "ckpt", save_last=True, every_n_train_steps=1, save_top_k=-1)])
    return trainer, module, data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", choices=["single", "ddp", "fsdp"], required=True)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tag", default="run")
    parser.add_argument("--resume", action="store_true", help="resume from OUT/ckpt/last.ckpt")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    trainer, module, data = build(args.strategy, args.devices, args.steps, args.out, args.tag)
    trainer.fit(module, datamodule=data, ckpt_path=str(args.out / "ckpt" / "last.ckpt") if args.resume else None)


if __name__ == "__main__":
    main()
