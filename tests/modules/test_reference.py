"""The KL reference options (model.reference): none, a frozen copy, 8-bit / 4-bit copies (bitsandbytes) and, under
LoRA, the policy with its adapters disabled. Each gives the exact copy's log-probs and KL (the quantized ones to a
tolerance), each can be re-made from the current policy (reset_reference), and each survives a checkpoint."""

from __future__ import annotations

import io

import pytest
import torch
from fit_helpers import tiny_data, tiny_module

from datamodules.types import Samples
from modules import ConfigError, KLSettings, LoraParams, MemorySettings, TinyPolicy
from modules.losses import kl_penalty
from modules.policy import quantized_copy
from modules.reference import AdapterReference, freeze, reference_model, weight_bytes
from modules.rollout.sampler import SamplingParams, sample

KINDS = ["copy", "8bit", "4bit", "adapters"]
#: |KL - exact KL| / exact KL, and the mean |log-prob difference| to the exact copy (random tiny weights, k3)
KL_RTOL = {"copy": 1e-6, "adapters": 1e-6, "8bit": 0.01, "4bit": 0.05}
LOGPROB_ATOL = {"copy": 0.0, "adapters": 1e-6, "8bit": 0.005, "4bit": 0.05}


def module_with(kind: str, **kwargs):
    memory = MemorySettings(lora=LoraParams(rank=4) if kind == "adapters" else None)
    return tiny_module(memory=memory, **kwargs, kl=KLSettings(coef=0.1, reference=kind))


@torch.no_grad()
def perturb(model: torch.nn.Module, scale: float = 0.05) -> None:
    """Move the trainable weights (all of them, or the LoRA adapters) away from the reference, the same way each
    time."""
    generator = torch.Generator().manual_seed(0)
    for param in model.parameters():
        if param.requires_grad:
            param.add_(torch.randn(param.shape, generator=generator) * scale)


def rollout(module) -> Samples:
    data = tiny_data()
    data.setup("fit")
    prompts = [module.encode_prompt(record) for record in data.train_task.records[:4]]
    return sample(module.policy, prompts, 4, SamplingParams(max_new_tokens=5), eos_ids=module.eos_token_ids(),
                  pad_id=module.tokenizer.pad_token_id, generator=torch.Generator().manual_seed(0))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float((values * mask).sum() / mask.sum())


@torch.no_grad()
def policy_logprobs(module, samples: Samples) -> torch.Tensor:
    return module.batched_logprobs(module.policy, samples)


@pytest.fixture(scope="module")
def exact():
    """The exact frozen copy, its perturbed policy's samples and log-probs, and the KL between them."""
    module = module_with("copy")
    perturb(module.policy)
    samples = rollout(module)
    logprobs = policy_logprobs(module, samples)
    reference = module.reference_logprobs(samples)
    kl = masked_mean(kl_penalty(logprobs, reference, "k3"), samples.completion_mask)
    return samples, logprobs, reference, kl


@pytest.mark.parametrize("kind", KINDS)
def test_each_reference_gives_the_exact_copy_kl(kind, exact):
    samples, logprobs, exact_reference, exact_kl = exact
    module = module_with(kind)
    perturb(module.policy)  # the reference stays the initial policy (for adapters: the base, adapters off)
    reference = module.reference_logprobs(samples)
    mask = samples.completion_mask
    assert masked_mean((reference - exact_reference).abs(), mask) <= LOGPROB_ATOL[kind]
    kl = masked_mean(kl_penalty(logprobs, reference, "k3"), mask)
    assert exact_kl > 0.01
    assert abs(kl - exact_kl) <= KL_RTOL[kind] * exact_kl, (kl, exact_kl)
    # and the reference is not the (perturbed) policy
    assert masked_mean((reference - policy_logprobs(module, samples)).abs(), mask) > 0.05


def test_reference_kinds_are_what_they_say():
    import bitsandbytes as bnb

    copy, int8, nf4, adapters = (module_with(kind) for kind in KINDS)
    linear = lambda m: m.model.layers[0].mlp.up_proj  # noqa: E731
    assert type(linear(copy.reference)) is torch.nn.Linear
    assert isinstance(linear(int8.reference), bnb.nn.Linear8bitLt)
    assert isinstance(linear(nf4.reference), bnb.nn.Linear4bit)
    assert isinstance(adapters.reference, AdapterReference) and adapters.reference.policy is adapters.policy
    for module in (copy, int8, nf4):
        assert not any(p.requires_grad for p in module.reference.parameters())
    lora = MemorySettings(lora=LoraParams(rank=4))
    assert tiny_module(kl=KLSettings(coef=0.1), memory=lora).reference_kind == "adapters"  # auto
    assert tiny_module(kl=KLSettings(coef=0.1)).reference_kind == "copy"  # auto


@pytest.mark.parametrize("kind", ["auto", *KINDS])
def test_no_reference_memory_without_kl(kind):
    memory = MemorySettings(lora=LoraParams(rank=4) if kind == "adapters" else None)
    module = tiny_module(memory=memory, kl=KLSettings(coef=0.0, reference=kind))
    assert module.reference is None
    assert weight_bytes(module) == weight_bytes(module.policy)


def test_reference_memory():
    copy, int8, nf4, adapters = (module_with(kind) for kind in KINDS)
    policy = weight_bytes(copy.policy)
    assert weight_bytes(copy) == 2 * policy
    assert weight_bytes(adapters) == weight_bytes(adapters.policy)  # the adapters' reference holds no weights
    assert policy < weight_bytes(nf4) < weight_bytes(int8) < 2 * policy


@pytest.mark.parametrize("kind", KINDS)
def test_reset_reference_makes_it_the_current_policy(kind, exact):
    samples = exact[0]
    mask = samples.completion_mask
    module = module_with(kind)
    perturb(module.policy)
    before = policy_logprobs(module, samples)
    distance = masked_mean((module.reference_logprobs(samples) - before).abs(), mask)
    module.reset_reference()
    after = policy_logprobs(module, samples)
    assert torch.allclose(after, before, atol=1e-5)  # the policy's function does not change (adapters: merged)
    reference = module.reference_logprobs(samples)
    gap = masked_mean((reference - after).abs(), mask)
    assert gap <= {"copy": 0.0, "adapters": 1e-6, "8bit": 0.01, "4bit": 0.1}[kind], (gap, distance)
    assert gap < distance / 2
    if kind in ("8bit", "4bit"):  # exactly a fresh quantization of the current weights
        with reference_model(freeze(quantized_copy(module.policy, kind))) as fresh:
            assert torch.equal(reference, module.batched_logprobs(fresh, samples))
    if kind == "adapters":
        assert all(not p.any() for name, p in module.policy.named_parameters() if "lora_B" in name)
        assert all(p.requires_grad == ("lora_" in name) for name, p in module.policy.named_parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_reference_survives_a_checkpoint(kind, exact):
    """The module's state_dict (what a Lightning checkpoint holds) loads, weights_only, into a module built from
    another seed, and the reference log-probs come back exactly (4-bit: needs modules.policy.patch_bnb_layers)."""
    samples = exact[0]
    module = module_with(kind)
    perturb(module.policy)
    module.reset_reference()  # a reference that differs from any fresh build
    module.reference_logprobs(samples)  # a forward first: 8-bit layers then keep their weights elsewhere
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    other = module_with(kind, policy=TinyPolicy(hidden_size=32, num_layers=2, intermediate_size=64, seed=7))
    other.reference_logprobs(samples)
    other.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    assert torch.equal(other.reference_logprobs(samples), module.reference_logprobs(samples))
    assert torch.equal(policy_logprobs(other, samples), policy_logprobs(module, samples))


def test_8bit_layers_follow_a_device_move(exact):
    """Lightning moves a module with Module._apply, which replaces each weight's data but not the copies an 8-bit
    layer keeps in its matmul state; the forward pre-hook re-points them (here: a clone stands in for a move)."""
    samples = exact[0]
    module = module_with("8bit")
    before = module.reference_logprobs(samples)
    module.reference._apply(lambda t: t.clone())
    assert torch.equal(module.reference_logprobs(samples), before)
    module.reference._apply(lambda t: t.clone())
    with torch.no_grad():
        module.reference.model.layers[0].mlp.up_proj.weight.zero_()  # the moved weight must be the one in use
    assert not torch.equal(module.reference_logprobs(samples), before)


@pytest.mark.parametrize("settings, says", [
    (dict(kl=dict(coef=0.1, reference="adapters")), "adapters needs LoRA"),
    (dict(kl=dict(coef=0.1, reference="4bit"), memory=dict(lora=LoraParams(rank=4))), "use adapters"),
    (dict(kl=dict(coef=0.1, reference="16bit")), "model.kl.reference must be"),
    (dict(policy=TinyPolicy(hidden_size=32, num_layers=2, intermediate_size=64, quantization="4bit")),
     "set model.memory.lora"),
])
def test_settings_that_cannot_work_are_config_errors(settings, says):
    with pytest.raises(ConfigError, match=says):
        kl, memory = KLSettings(**settings.pop("kl", {})), MemorySettings(**settings.pop("memory", {}))
        tiny_module(kl=kl, memory=memory, **settings)


def test_reset_reference_on_a_4bit_base_folds_the_adapters(exact):
    """QLoRA: the adapters are folded into the 4-bit base (dequantize, add, quantize again), then the reference (the
    base, adapters off) is the policy exactly; the policy itself moves by the re-quantization only."""
    samples = exact[0]
    mask = samples.completion_mask
    policy = TinyPolicy(hidden_size=32, num_layers=2, intermediate_size=64, seed=0, quantization="4bit")
    module = tiny_module(policy=policy, kl=KLSettings(coef=0.1), memory=MemorySettings(lora=LoraParams(rank=4)))
    perturb(module.policy)
    before = policy_logprobs(module, samples)
    distance = masked_mean((module.reference_logprobs(samples) - before).abs(), mask)
    module.reset_reference()
    after = policy_logprobs(module, samples)
    assert torch.allclose(module.reference_logprobs(samples), after, atol=1e-6)
    assert masked_mean((after - before).abs(), mask) < distance
    assert all(not p.any() for name, p in module.policy.named_parameters() if "lora_B" in name)
