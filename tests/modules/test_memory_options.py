"""Memory options: gradient checkpointing, bf16 (mixed and true), the bitsandbytes 8-bit optimizer, LoRA and QLoRA
(a 4-bit or 8-bit frozen base with LoRA adapters). CPU steps here; the `gpu` tests run the same on CUDA."""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from fit_helpers import tiny_data, tiny_module, tiny_trainer

from datamodules.types import Samples, Verdict
from modules import KLSettings, LoraParams, MemorySettings, PretrainedPolicy, TinyPolicy
from modules.logprobs import token_logprobs
from modules.module import samples_rows
from modules.rollout.sampler import SamplingParams, sample

REPO = Path(__file__).resolve().parents[2]


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def changed(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, value in model.state_dict().items() if not torch.equal(value, before[name])}


def rollout(module, device: str = "cpu") -> Samples:
    data = tiny_data()
    prompts = [module.encode_prompt(record) for record in data.train_task.records[:4]]
    return sample(module.policy, prompts, 4, SamplingParams(max_new_tokens=5), eos_ids=module.eos_token_ids(),
                  pad_id=module.tokenizer.pad_token_id, generator=torch.Generator(device).manual_seed(0))


def gradients(module, samples: Samples) -> dict[str, torch.Tensor]:
    """Gradients of the summed completion log-probs over all samples, in train mode."""
    module.policy.train()
    module.policy.zero_grad(set_to_none=True)
    rows = torch.arange(samples.completion_ids.shape[0])
    logprobs, _ = token_logprobs(module.policy, *samples_rows(samples, rows))
    logprobs.sum().backward()
    return {name: p.grad.clone() for name, p in module.policy.named_parameters() if p.requires_grad}


def odd_length_verdicts(records, texts, stage="train") -> list[Verdict]:
    return [Verdict(reward=float(len(text) % 2)) for text in texts]


def rewarding_data():
    """tiny_data whose verifier rewards odd-length completions, so that a random tiny policy has a learning signal at
    once (on the arithmetic task every reward is 0: no advantage, no gradient; weight decay alone moves weights)."""
    data = tiny_data()
    data.verify = odd_length_verdicts
    return data


def qlora_policy(quantization: str = "4bit", seed: int = 0) -> TinyPolicy:
    return TinyPolicy(hidden_size=32, num_layers=2, intermediate_size=64, seed=seed, quantization=quantization)


# ------------------------------------------------------------------------------------------ gradient checkpointing
@pytest.mark.parametrize("lora", [None, LoraParams(rank=4)], ids=["full", "lora"])
def test_gradient_checkpointing_gives_the_same_gradients(lora):
    modules = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same LoRA initialisation
        modules.append(tiny_module(memory=MemorySettings(lora=lora, gradient_checkpointing=checkpointing)))
    plain, checkpointed = modules
    samples = rollout(plain)
    recomputed = count_recomputation(checkpointed.policy)
    expected, got = gradients(plain, samples), gradients(checkpointed, samples)
    assert expected.keys() == got.keys() and expected
    for name, value in expected.items():
        assert torch.allclose(got[name], value, atol=1e-5, rtol=1e-4), name
    assert recomputed == [True]  # backward ran the layer again
    assert not count_recomputation(plain.policy)


def count_recomputation(model: torch.nn.Module) -> list[bool]:
    """From now on, one True per call of the first decoder layer's MLP made inside backward (a recomputation). The
    MLP's forward is wrapped: transformers' checkpointing reruns `forward`, outside module hooks."""
    calls = []
    mlp = model.get_decoder().layers[0].mlp
    forward = mlp.forward

    def counting(*args, **kwargs):
        if torch._C._current_autograd_node() is not None:
            calls.append(True)
        return forward(*args, **kwargs)

    mlp.forward = counting
    return calls


def test_gradient_checkpointing_fit_step_with_a_pretrained_policy(tmp_path):
    """from_pretrained gives an eval-mode model, which Lightning keeps: checkpointing (train mode only in
    transformers) must still run in the update."""
    source = TinyPolicy(hidden_size=32, num_layers=2, intermediate_size=64)
    source.load_model().save_pretrained(tmp_path)
    source.load_tokenizer().save_pretrained(tmp_path)
    module = tiny_module(policy=PretrainedPolicy(str(tmp_path)), kl=KLSettings(coef=0.1),
                         memory=MemorySettings(gradient_checkpointing=True))
    recomputed = count_recomputation(module.policy)
    before = snapshot(module.policy)
    tiny_trainer(2).fit(module, datamodule=rewarding_data())
    assert len(recomputed) == 2  # one micro-batch per step
    assert len(changed(module.policy, before)) > len(before) // 2


# ------------------------------------------------------------------------------------------ bf16
def test_bf16_mixed_fit_step_on_cpu():
    module = tiny_module(kl=KLSettings(coef=0.1))
    before = snapshot(module.policy)
    tiny_trainer(2, precision="bf16-mixed").fit(module, datamodule=rewarding_data())
    assert module.policy.dtype == torch.float32  # mixed: float32 weights, bf16 autocast
    assert len(changed(module.policy, before)) > len(before) // 2


def test_bf16_true_fit_step_with_a_bf16_policy(tmp_path):
    source = TinyPolicy(hidden_size=32, num_layers=2, intermediate_size=64)
    source.load_model().save_pretrained(tmp_path)
    source.load_tokenizer().save_pretrained(tmp_path)
    module = tiny_module(policy=PretrainedPolicy(str(tmp_path), dtype="bfloat16"), kl=KLSettings(coef=0.1))
    assert module.policy.dtype == torch.bfloat16 and module.reference.dtype == torch.bfloat16
    before = snapshot(module.policy)
    tiny_trainer(2, precision="bf16-true").fit(module, datamodule=rewarding_data())
    assert module.policy.dtype == torch.bfloat16
    assert len(changed(module.policy, before)) > len(before) // 2


# ------------------------------------------------------------------------------------------ 8-bit optimizer
def test_adamw8bit_from_class_path_fit_step(tmp_path):
    """`model.optimizer: {class_path: bitsandbytes.optim.AdamW8bit}` through the CLI parser, one fit step on CPU;
    the large tensors' optimizer states are 8-bit."""
    from app.cli import InferlCLI
    from datamodules.datamodule import PromptDataModule
    from modules import InferlModule

    config = {
        "trainer": {"max_steps": 1, "accelerator": "cpu", "devices": 1, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
                    "limit_val_batches": 0, "callbacks": [{"class_path": "callbacks.MeanReward"}]},
        "checkpoint": {"dirpath": str(tmp_path)},
        "model": {"policy": {"class_path": "modules.TinyPolicy",
                             "init_args": {"hidden_size": 64, "num_layers": 2, "intermediate_size": 128}},
                  "group": {"size": 4, "sampling": {"max_new_tokens": 5}}, "evaluation": {"samples": 4, "pass_k": 2},
                  "optimizer": {"class_path": "bitsandbytes.optim.AdamW8bit", "init_args": {"lr": 0.01}}},
        "data": {"train": {"class_path": "datamodules.tasks.Arithmetic", "init_args": {"num_records": 40, "digits": 1}},
                 "batch_size": 4},
    }
    cli = InferlCLI(InferlModule, PromptDataModule, args=config, run=False, auto_configure_optimizers=False,
                    save_config_callback=None)  # no config.yaml written into the working directory
    cli.datamodule.verify = odd_length_verdicts
    before = snapshot(cli.model.policy)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    optimizer = cli.trainer.optimizers[0]
    assert isinstance(optimizer, bnb.optim.AdamW8bit)
    states = [state for state in optimizer.state.values() if state]
    assert any(state["state1"].dtype == torch.uint8 for state in states)  # tensors >= 4096 elements: 8-bit state
    assert len(changed(cli.model.policy, before)) > len(before) // 2


# ------------------------------------------------------------------------------------------ LoRA and QLoRA
def test_lora_trains_only_the_adapters():
    module = tiny_module(kl=KLSettings(coef=0.1), memory=MemorySettings(lora=LoraParams(rank=4, alpha=8)))
    trainable = {name for name, p in module.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    before = snapshot(module.policy)
    tiny_trainer(2).fit(module, datamodule=rewarding_data())
    moved = changed(module.policy, before)
    assert moved and all("lora_" in name for name in moved)
    assert any("lora_B" in name for name in moved)


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_base_with_lora_fit_step_changes_only_the_adapters(quantization):
    module = tiny_module(policy=qlora_policy(quantization), kl=KLSettings(coef=0.1),
                         memory=MemorySettings(lora=LoraParams(rank=4, alpha=8)))
    kind = bnb.nn.Linear4bit if quantization == "4bit" else bnb.nn.Linear8bitLt
    assert isinstance(module.policy.get_decoder().layers[0].mlp.up_proj.base_layer, kind)
    assert module.reference_kind == "adapters"
    before = snapshot(module.policy)
    tiny_trainer(2).fit(module, datamodule=rewarding_data())
    moved = changed(module.policy, before)
    assert moved and all("lora_" in name for name in moved), sorted(moved - {n for n in moved if "lora_" in n})
    assert any("lora_B" in name for name in moved)


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_pretrained_policy_loads_4bit_for_qlora(dtype, tmp_path):
    source = TinyPolicy(hidden_size=32, num_layers=2, intermediate_size=64)
    source.load_model().save_pretrained(tmp_path)
    source.load_tokenizer().save_pretrained(tmp_path)
    policy = PretrainedPolicy(str(tmp_path), dtype=dtype, quantization="4bit")
    module = tiny_module(policy=policy, kl=KLSettings(coef=0.1), memory=MemorySettings(lora=LoraParams(rank=4)))
    layer = module.policy.get_decoder().layers[0].mlp.up_proj.base_layer
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert layer.compute_dtype == {"auto": torch.float32, "bfloat16": torch.bfloat16}[dtype]  # the stored dtype
    samples = rollout(module)
    assert module.reference_logprobs(samples).isfinite().all()


def test_qlora_gradients_are_unchanged_by_a_rollout():
    """On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights at the first eval-mode no-grad forward into a
    layout whose matmul has no backward (wrong gradients, no error); modules.policy.patch_bnb_layers turns that off."""
    module = tiny_module(policy=qlora_policy("4bit"), memory=MemorySettings(lora=LoraParams(rank=4, alpha=8)))
    with torch.no_grad():
        for name, p in module.policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # non-zero adapters, so that every path carries gradient
    samples = rollout(tiny_module())  # token ids from another model: this one has not run in eval mode yet
    before = gradients(module, samples)
    module.policy.eval()
    with torch.no_grad():  # as in a rollout: where the repacking happened
        rollout(module)
    after = gradients(module, samples)
    for name, value in before.items():
        assert torch.allclose(after[name], value, atol=1e-6), name


def test_qlora_resumes_from_a_checkpoint(tmp_path):
    """A Lightning checkpoint of a 4-bit base + LoRA module (4-bit weights with their quantization statistics) loads
    into a module built from another seed, and training goes on from the saved weights."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    first = tiny_module(policy=qlora_policy("4bit"), kl=KLSettings(coef=0.1),
                        memory=MemorySettings(lora=LoraParams(rank=4, alpha=8)))
    tiny_trainer(1, [ModelCheckpoint(dirpath=tmp_path, save_last=True)], enable_checkpointing=True).fit(
        first, datamodule=rewarding_data())
    saved = snapshot(first.policy)
    resumed = tiny_module(policy=qlora_policy("4bit", seed=5), kl=KLSettings(coef=0.1),
                          memory=MemorySettings(lora=LoraParams(rank=4, alpha=8)))
    trainer = tiny_trainer(1, enable_checkpointing=False)  # max_steps 1 reached: restores, runs no step
    trainer.fit(resumed, datamodule=rewarding_data(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert trainer.global_step == 1
    assert not changed(resumed.policy, saved)


# ------------------------------------------------------------------------------------------ on CUDA
def cuda_trainer(steps: int, **kwargs):
    return tiny_trainer(steps, accelerator="cuda", **kwargs)


@pytest.mark.gpu
def test_bf16_mixed_fit_step_on_cuda():
    module = tiny_module(kl=KLSettings(coef=0.1))
    before = snapshot(module.policy)
    cuda_trainer(2, precision="bf16-mixed").fit(module, datamodule=rewarding_data())
    assert module.policy.device.type == "cuda"
    assert len(changed(module.policy, {k: v.cuda() for k, v in before.items()})) > len(before) // 2


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["8bit", "4bit"])
def test_quantized_reference_on_cuda(kind):
    from modules.losses import kl_penalty

    exact = tiny_module(kl=KLSettings(coef=0.1, reference="copy"))
    quantized = tiny_module(kl=KLSettings(coef=0.1, reference=kind))
    exact.cuda()
    quantized.cuda()  # as Lightning moves it (Module._apply): the bitsandbytes kernels run on CUDA from here
    with torch.no_grad():  # move the policy away from the (initial) references, so that the KL is not ~0
        generator = torch.Generator("cuda").manual_seed(0)
        for param in exact.policy.parameters():
            param.add_(torch.randn(param.shape, generator=generator, device="cuda") * 0.05)
    samples = rollout(exact, "cuda")
    mask = samples.completion_mask
    with torch.no_grad():
        logprobs = exact.batched_logprobs(exact.policy, samples)
    reference, expected = quantized.reference_logprobs(samples), exact.reference_logprobs(samples)
    assert reference.device.type == "cuda"
    assert float(((reference - expected).abs() * mask).sum() / mask.sum()) < {"8bit": 0.005, "4bit": 0.05}[kind]
    kl = lambda ref: float((kl_penalty(logprobs, ref, "k3") * mask).sum() / mask.sum())  # noqa: E731
    assert kl(expected) > 0.01 and abs(kl(reference) - kl(expected)) <= 0.1 * kl(expected)
    cuda_trainer(2, precision="bf16-mixed").fit(quantized, datamodule=rewarding_data())  # KL term in the update
    quantized.reset_reference()  # re-quantized on CUDA from the trained policy
    with torch.no_grad():
        now = quantized.batched_logprobs(quantized.policy, samples)
    assert float(((quantized.reference_logprobs(samples) - now).abs() * mask).sum() / mask.sum()) < 0.1


@pytest.mark.gpu
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_qlora_fit_step_on_cuda(quantization):
    module = tiny_module(policy=qlora_policy(quantization), kl=KLSettings(coef=0.1),
                         memory=MemorySettings(lora=LoraParams(rank=4, alpha=8)))
    before = snapshot(module.policy)
    cuda_trainer(2, precision="bf16-mixed").fit(module, datamodule=rewarding_data())
    moved = {name for name, value in module.policy.state_dict().items() if not torch.equal(value.cpu(), before[name])}
    assert moved and all("lora_" in name for name in moved)


@pytest.mark.gpu
def test_adamw8bit_fit_step_on_cuda():
    module = tiny_module(policy=TinyPolicy(hidden_size=64, num_layers=2, intermediate_size=128),
                         optimizer=lambda params: bnb.optim.AdamW8bit(params, lr=1e-2))
    before = snapshot(module.policy)
    trainer = cuda_trainer(2)
    trainer.fit(module, datamodule=rewarding_data())
    states = [state for state in trainer.optimizers[0].state.values() if state]
    assert any(state["state1"].dtype == torch.uint8 and state["state1"].is_cuda for state in states)
    moved = {name for name, value in module.policy.state_dict().items() if not torch.equal(value.cpu(), before[name])}
    assert len(moved) > len(before) // 2


# ------------------------------------------------------------------------------------------ configs/memory overlays
@pytest.mark.parametrize("overlay", ["lora", "qlora", "reference_4bit"])
def test_memory_overlays_build_with_the_demo(overlay, monkeypatch):
    """configs/memory/<overlay>.yaml composed after configs/demo.yaml builds the module it describes."""
    import sys

    from app.cli import InferlCLI
    from datamodules.datamodule import PromptDataModule
    from modules import InferlModule
    from modules.reference import AdapterReference

    monkeypatch.setattr(sys, "argv", ["inferl"])
    monkeypatch.chdir(REPO)
    args = ["--config", "configs/demo.yaml", "--config", f"configs/memory/{overlay}.yaml", "--model.kl.coef", "0.1"]
    cli = InferlCLI(InferlModule, PromptDataModule, args=args, run=False, auto_configure_optimizers=False,
                    save_config_callback=None)
    module = cli.model
    if overlay == "reference_4bit":
        assert isinstance(module.reference.model.layers[0].mlp.up_proj, bnb.nn.Linear4bit)
    else:
        assert isinstance(module.reference, AdapterReference)
        assert all("lora_" in name for name, p in module.policy.named_parameters() if p.requires_grad)
    if overlay == "qlora":
        assert isinstance(module.policy.get_decoder().layers[0].mlp.up_proj.base_layer, bnb.nn.Linear4bit)
        assert any(getattr(m, "gradient_checkpointing", False) is True for m in module.policy.modules())
        assert cli.trainer.precision == "bf16-mixed"


def test_low_memory_overlay_parses_with_a_task_config(monkeypatch, capsys):
    import sys

    import yaml

    from app.cli import main

    monkeypatch.setattr(sys, "argv", ["inferl"])
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/gsm8k/mean_reward.yaml", "--config", "configs/memory/low_memory.yaml",
              "--print_config"])
    captured = capsys.readouterr()
    assert exit_info.value.code in (0, None), captured.err[-2000:]
    printed = yaml.safe_load(captured.out)
    assert printed["trainer"]["precision"] == "bf16-true"
    assert printed["model"]["policy"]["init_args"]["dtype"] == "bfloat16"
    assert printed["model"]["optimizer"]["class_path"] == "bitsandbytes.optim.AdamW8bit"
    assert printed["model"]["memory"]["gradient_checkpointing"] is True
