"""Distributed training in real processes on CPU (gloo): DDP and FSDP2 (modules.sharding) fits of a tiny model equal
one process on the same data, checkpoint, resume; prompts are sharded, seeds differ per rank, metrics are reduced,
uneven generation does not hang; the trainer presets parse; 8-bit optimizers are refused under FSDP2.

The 2-process runs are launched as scripts (tests/modules/distributed_fit.py, fsdp_checks.py) so that Lightning
starts its second rank from the script, never from pytest. Each costs a process start-up (about 10 s on 2 cores),
so the checks are combined into few runs; DDP and the extra variants are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import lightning as L
import pytest
import torch
from distributed_fit import build
from fit_helpers import tiny_module

from modules import ConfigError, TinyPolicy
from modules.sharding import FSDP2Strategy, mesh_sizes

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LAUNCH_TIMEOUT = 420  # a hung collective (e.g. uneven generation) fails the test instead of blocking the suite


def launch(script: str, *args: str) -> None:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, str(HERE / script), *map(str, args)], cwd=REPO, capture_output=True,
                            text=True, timeout=LAUNCH_TIMEOUT, env=env)
    assert result.returncode == 0, result.stderr[-6000:]


def ranks(out: Path, tag: str) -> list[dict]:
    return [json.loads((out / f"{tag}-rank{rank}.json").read_text()) for rank in (0, 1)]


def single_process(out: Path, steps: int, **module_args) -> tuple[dict, dict[str, torch.Tensor]]:
    """The reference: one process, batch 4 (= 2 ranks x 2), same data and settings, in this process."""
    trainer, module, data = build("single", 1, 4, steps, out, "run", **module_args)
    trainer.fit(module, datamodule=data)
    return json.loads((out / "run-rank0.json").read_text()), torch.load(out / "run-weights.pt")


def fit_and_resume(strategy: str, out: Path, module_args: dict, first_steps: int = 2, steps: int = 4,
                   uneven_generation: bool = False) -> tuple[list[dict], list[dict]]:
    extra = ["--module-args", json.dumps(module_args)]
    launch("distributed_fit.py", "--strategy", strategy, "--devices", 2, "--batch-size", 2, "--steps", first_steps,
           "--out", out, *extra, *(["--uneven-generation"] if uneven_generation else []))
    first = ranks(out, "run")
    launch("distributed_fit.py", "--strategy", strategy, "--devices", 2, "--batch-size", 2, "--steps", steps,
           "--out", out, "--tag", "resumed", "--resume", *extra)
    return first, ranks(out, "resumed")


def check_equals_single(single: dict, single_weights: dict, first: list[dict], resumed: list[dict], out: Path,
                        strategy: str) -> None:
    assert [r["strategy"] for r in first] == [strategy] * 2 and first[0]["world_size"] == 2
    assert [r["seed"] for r in first] == [0, 1]  # each rank offsets the sampling seed by its rank
    assert [r["start_step"] for r in resumed] == [2, 2]  # resumed from last.ckpt, not from scratch
    steps = [list(pair) for pair in zip(first[0]["steps"], first[1]["steps"])]
    steps += [list(pair) for pair in zip(resumed[0]["steps"], resumed[1]["steps"])]
    assert len(steps) == len(single["steps"]) == 4
    for index, (expected, (rank0, rank1)) in enumerate(zip(single["steps"], steps)):
        # prompts: disjoint across ranks, together the single process's batch
        assert not set(rank0["prompts"]) & set(rank1["prompts"]), index
        assert rank0["prompts"] + rank1["prompts"] == expected["prompts"], index
        # logged metrics are reduced over ranks: equal on both, the mean of the ranks' own values
        assert rank0["logged"] == rank1["logged"], index
        for name, local in (("train/entropy", "entropy"), ("train/loss", "loss")):
            mean = (rank0["local_stats"][local] + rank1["local_stats"][local]) / 2
            assert rank0["logged"][name] == pytest.approx(mean, abs=1e-5), (index, name)
        assert rank0["logged"]["train/reward_mean"] == pytest.approx(
            (rank0["local_reward_mean"] + rank1["local_reward_mean"]) / 2)
        # the same losses as one process over the union batch
        for name in ("train/loss", "train/reward_mean", "train/response_len", "train/kl"):
            if name in expected["logged"]:
                assert rank0["logged"][name] == pytest.approx(expected["logged"][name], abs=1e-5), (index, name)
    weights = torch.load(out / "resumed-weights.pt")
    initial = TinyPolicy(hidden_size=32, num_layers=2, intermediate_size=64, seed=0).load_model().state_dict()
    assert set(weights) == set(single_weights)
    for name, value in single_weights.items():
        assert torch.allclose(weights[name], value, atol=1e-5), name
    assert max(float((single_weights[n] - initial[n]).abs().max()) for n in initial) > 0.05  # training moved them


def check_checkpoint(out: Path, sharded: bool) -> None:
    last = out / "ckpt" / "last.ckpt"
    if sharded:  # a distributed-checkpoint directory: one shard file per rank and the metadata
        assert last.is_dir() and (last / "meta.pt").is_file() and (last / ".metadata").is_file()
        assert len(list(last.glob("*.distcp"))) == 2
        meta = torch.load(last / "meta.pt", weights_only=True)
    else:
        assert last.is_file()
        meta = torch.load(last, weights_only=True)
    assert not [p.name for p in last.parent.iterdir() if p.name.startswith(".")]  # no partial or old copies left
    states = meta["sampling_generator_states"]  # all_gathered from both ranks
    assert states.shape[0] == 2 and not torch.equal(states[0], states[1])


@pytest.fixture(scope="module")
def single_kl(tmp_path_factory):
    return single_process(tmp_path_factory.mktemp("single"), 4, kl={"coef": 0.1})


def test_fsdp2_fit_equals_one_process_checkpoints_and_resumes(tmp_path, single_kl):
    first, resumed = fit_and_resume("fsdp", tmp_path, {"kl": {"coef": 0.1}}, uneven_generation=True)
    assert all(r["dtensor_params"] for r in first)  # the policy really is sharded
    # generation with rank 0 done after one token and rank 1 running to the limit finished (any_rank_samples)
    assert first[0]["uneven_lengths"] == [1, 1, 1, 1] and first[1]["uneven_lengths"] == [6, 6, 6, 6]
    check_checkpoint(tmp_path, sharded=True)
    check_equals_single(*single_kl, first, resumed, tmp_path, "FSDP2Strategy")


@pytest.mark.slow
def test_ddp_fit_equals_one_process_checkpoints_and_resumes(tmp_path, single_kl):
    first, resumed = fit_and_resume("ddp", tmp_path, {"kl": {"coef": 0.1}})
    check_checkpoint(tmp_path, sharded=False)
    check_equals_single(*single_kl, first, resumed, tmp_path, "DDPStrategy")


@pytest.mark.slow
def test_fsdp2_with_a_shared_value_head_and_micro_batches_equals_one_process(tmp_path):
    # micro-batches of 3 sorted by length mix the ranks' prompts differently: the log-prob path must still run the
    # same number of sharded forwards on every rank (it did not when the shared-prompt path was on under FSDP2)
    settings = {"critic": {"kind": "shared"}, "kl": {"coef": 0.1}, "update": {"micro_batch_size": 3}}
    single = single_process(tmp_path / "single", 4, **settings)
    first, resumed = fit_and_resume("fsdp", tmp_path / "fsdp", settings)
    check_equals_single(*single, first, resumed, tmp_path / "fsdp", "FSDP2Strategy")


@pytest.mark.slow
def test_fsdp2_logprob_gradients_generation_and_resharding(tmp_path):
    launch("fsdp_checks.py", tmp_path / "checks.json")
    results = json.loads((tmp_path / "checks.json").read_text())
    for name in ("split, shared prompt True", "one call, shared prompt True", "split, shared prompt False",
                 "one call, shared prompt False"):
        assert results[name]["dtensor_params"], name
        assert results[name]["missing_grads"] == [], name
        assert results[name]["value_error"] < 1e-5 and results[name]["grad_error"] < 1e-5, (name, results[name])
    assert results["rank0"]["lengths"] == [1] * 4 and results["rank1"]["lengths"] == [6] * 4
    assert results["rank0"]["forwards"] == results["rank1"]["forwards"] == 6  # in lockstep: prefill + 5 steps
    assert results["rank0"]["reference_resharded"] and results["rank1"]["reference_resharded"]
    assert results["configure_model"]["idempotent"] and results["configure_model"]["layers_sharded"]
    assert results["configure_model"]["sharded"] == {
        "policy": True, "reference": True, "critic": True, "value_head": True}


def small_demo(tmp_path: Path, warm_start_steps: int = 5, val_records: int = 4, val_batch_size: int = 32) -> Path:
    """configs/demo.yaml with a short warm start, few validation prompts, a KL reference, writing under tmp_path."""
    import yaml

    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"] == "callbacks.SupervisedWarmStart":
            callback["init_args"]["steps"] = warm_start_steps
    config["trainer"].update(val_check_interval=2, enable_progress_bar=False)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path)
    config["checkpoint"].update(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=1)
    config["data"]["val"]["init_args"]["num_records"] = val_records
    config["data"]["val_batch_size"] = val_batch_size
    config["model"]["kl"] = {"coef": 0.05}
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_cli_fit_validate_and_resume_with_the_fsdp_preset(tmp_path):
    args = ["--config", str(small_demo(tmp_path)), "--config", "configs/trainer/fsdp.yaml", "--trainer.devices", "2"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    for extra in (["--trainer.max_steps", "2"], ["--trainer.max_steps", "3", "--ckpt_path", "last"]):
        result = subprocess.run([sys.executable, "-m", "app", "fit", *args, *extra], cwd=REPO, capture_output=True,
                                text=True, timeout=LAUNCH_TIMEOUT, env=env)
        assert result.returncode == 0, result.stderr[-6000:]
    last = tmp_path / "ckpt" / "last.ckpt"
    assert last.is_dir() and torch.load(last / "meta.pt", weights_only=True)["global_step"] == 3
    assert list(tmp_path.glob("demo/version_*/config.yaml"))  # LightningCLI's saved config is in the run's log dir


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["ddp", "fsdp"])
def test_validation_with_more_records_on_one_rank(tmp_path, preset):
    # 3 prompts in batches of 1 on 2 ranks: rank 0 has 2 batches, rank 1 one real batch and one padding batch, so
    # that sharded generation keeps both ranks in step (without the padding, FSDP2 hung here)
    config = small_demo(tmp_path, warm_start_steps=0, val_records=3, val_batch_size=1)
    result = subprocess.run([sys.executable, "-m", "app", "fit", "--config", str(config), "--config",
                             f"configs/trainer/{preset}.yaml", "--trainer.devices", "2", "--trainer.max_steps", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert result.returncode == 0, result.stderr[-6000:]


# ----------------------------------------------------------------------------------------- in this process
def parse_only(*args: str):
    """The CLI's parsed config of `args`, nothing instantiated."""
    from app.cli import ConciseArgumentParser, InferlCLI
    from datamodules.datamodule import PromptDataModule
    from modules.module import InferlModule

    class ParseOnly(InferlCLI):
        def instantiate_classes(self) -> None:
            pass

    with mock.patch.object(sys, "argv", ["inferl"]):  # pytest's own arguments are not the CLI's
        return ParseOnly(InferlModule, PromptDataModule, args=list(args), run=False,
                         parser_class=ConciseArgumentParser, auto_configure_optimizers=False).config


@pytest.mark.parametrize("preset, expected", [
    ("single", {"devices": 1, "num_nodes": 1, "strategy": "auto"}),
    ("ddp", {"devices": "2", "strategy": "lightning.pytorch.strategies.DDPStrategy"}),
    ("fsdp", {"devices": "2", "strategy": "modules.sharding.FSDP2Strategy"}),
    ("fsdp_multinode", {"devices": "2", "num_nodes": 2, "accelerator": "gpu",
                        "strategy": "modules.sharding.FSDP2Strategy"}),
])
def test_trainer_presets_compose_with_a_run_config(preset, expected):
    devices = [] if preset == "single" else ["--trainer.devices", "2"]
    config = parse_only("--config", "configs/demo.yaml", "--config", f"configs/trainer/{preset}.yaml", *devices)
    trainer = config["trainer"]
    strategy = trainer["strategy"]
    for key, value in expected.items():
        got = strategy if key != "strategy" or isinstance(strategy, str) else strategy["class_path"]
        assert (got if key == "strategy" else trainer[key]) == value, key
    if "FSDP2" in str(expected["strategy"]):  # both sizes set explicitly (Lightning's auto would be tensor-parallel)
        assert strategy["init_args"]["data_parallel_size"] == "auto"
        assert strategy["init_args"]["tensor_parallel_size"] == 1
    assert config["model"]["policy"]["class_path"] == "modules.TinyPolicy"  # the run config is still there


def test_fsdp2_strategy_resolves_auto_sizes_to_pure_data_parallel():
    trainer = L.Trainer(strategy=FSDP2Strategy(), accelerator="cpu", devices=2, num_nodes=3, logger=False)
    strategy = trainer.strategy
    assert isinstance(strategy, FSDP2Strategy) and strategy.num_processes * strategy.num_nodes == 6
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == ("auto", 1)
    assert mesh_sizes("auto", 1, 6) == (6, 1)  # what setup_environment builds the mesh from
    assert mesh_sizes("auto", "auto", 6) == (6, 1)  # Lightning's own "auto" would make it (3 nodes, 2) tensor-parallel
    assert mesh_sizes(4, 1, 6) == (4, 1)  # explicit sizes are kept (Lightning then checks 4 x 1 == 6)


def test_8bit_optimizer_is_refused_under_fsdp2():
    import bitsandbytes

    module = tiny_module(optimizer=lambda params: bitsandbytes.optim.AdamW8bit(params, lr=1e-3))
    module.trainer = L.Trainer(strategy=FSDP2Strategy(), accelerator="cpu", devices=1, logger=False)
    with pytest.raises(ConfigError, match=r"model\.optimizer: .*AdamW8bit.*torch\.optim\.AdamW"):
        module.configure_optimizers()
    module.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)  # one device: 8-bit optimizers work
    assert type(module.configure_optimizers()).__name__ == "AdamW8bit"
    fsdp_adamw = tiny_module(optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3))
    fsdp_adamw.trainer = L.Trainer(strategy=FSDP2Strategy(), accelerator="cpu", devices=1, logger=False)
    assert isinstance(fsdp_adamw.configure_optimizers(), torch.optim.AdamW)


# ----------------------------------------------------------------------------------------- GPUs (NCCL)
@pytest.mark.gpu
@pytest.mark.slow
def test_fsdp2_on_two_gpus_with_nccl(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    launch("distributed_fit.py", "--strategy", "fsdp", "--accelerator", "gpu", "--devices", 2, "--batch-size", 2,
           "--steps", 2, "--out", tmp_path, "--uneven-generation", "--module-args", json.dumps({"kl": {"coef": 0.1}}))
    first = ranks(tmp_path, "run")
    assert all(r["dtensor_params"] for r in first) and first[0]["strategy"] == "FSDP2Strategy"
    assert first[0]["uneven_lengths"] == [1] * 4 and first[1]["uneven_lengths"] == [6] * 4
    check_checkpoint(tmp_path, sharded=True)
    launch("distributed_fit.py", "--strategy", "fsdp", "--accelerator", "gpu", "--devices", 2, "--batch-size", 2,
           "--steps", 3, "--out", tmp_path, "--tag", "resumed", "--resume", "--module-args",
           json.dumps({"kl": {"coef": 0.1}}))
    assert [r["start_step"] for r in ranks(tmp_path, "resumed")] == [2, 2]
    single = single_process(tmp_path / "single", 2, accelerator="gpu", kl={"coef": 0.1})[0]
    for expected, rank0 in zip(single["steps"], first[0]["steps"]):  # GPU kernels: looser than on CPU
        assert rank0["logged"]["train/loss"] == pytest.approx(expected["logged"]["train/loss"], abs=1e-3)


def test_sharded_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    # FSDP2Strategy writes the directory beside the target and swaps it in: a save that fails midway leaves the
    # previous checkpoint as it was (one process: no process group, distributed checkpoint saves locally)
    import lightning.pytorch.strategies.model_parallel as model_parallel

    strategy, path = FSDP2Strategy(), tmp_path / "last.ckpt"

    def save(step: int) -> None:
        strategy.save_checkpoint({"state_dict": {"w": torch.full((2,), float(step))}, "global_step": step}, path)

    def step_of(folder: Path) -> int:
        return torch.load(folder / "meta.pt", weights_only=True)["global_step"]

    save(1)
    assert step_of(path) == 1
    real_save = model_parallel._distributed_checkpoint_save

    def crash(state, folder):
        real_save(state, folder)
        raise OSError("disk full")

    monkeypatch.setattr(model_parallel, "_distributed_checkpoint_save", crash)
    with pytest.raises(OSError, match="disk full"):
        save(2)
    assert step_of(path) == 1  # untouched; the partial copy is cleared by the next save
    monkeypatch.setattr(model_parallel, "_distributed_checkpoint_save", real_save)
    save(3)
    assert step_of(path) == 3 and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    monkeypatch.setattr("modules.checkpoint_io._exchange", lambda a, b: False)  # no renameat2: two renames
    save(4)
    assert step_of(path) == 4 and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_quantized_weights_are_refused_under_fsdp2():
    from modules.sharding import shard_causal_lm

    model = TinyPolicy(hidden_size=32, num_layers=2, intermediate_size=64, seed=0).load_model()
    model.lm_head.weight = torch.nn.Parameter(torch.zeros(3, 3, dtype=torch.uint8), requires_grad=False)  # 4-bit packed
    with pytest.raises(ConfigError, match=r"quantized.*lm_head\.weight"):
        shard_causal_lm(model, mesh=None)
