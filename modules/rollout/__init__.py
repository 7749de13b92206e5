"""Rollout engines: what draws G completions per prompt from the policy, for training, validation, test and
predict alike. `RolloutEngine` (engine.py) is the interface the module calls; `TorchRollout` (sampler.py: batched
generation with a shared-prefix KV cache, no dependency beyond torch) is the default; `SamplingParams` says how to
sample. Chosen in YAML as `model.rollout: {class_path: modules.rollout.TorchRollout}`."""

from modules.rollout.engine import RolloutEngine
from modules.rollout.sampler import SamplingParams, TorchRollout, sample

__all__ = ["RolloutEngine", "SamplingParams", "TorchRollout", "sample"]


def __getattr__(name: str):
    """`modules.rollout.VLLMRollout` on first use only, so that importing the project never imports vllm."""
    if name == "VLLMRollout":
        from modules.rollout.vllm import VLLMRollout

        return VLLMRollout
    raise AttributeError(f"module 'modules.rollout' has no attribute {name!r}")
