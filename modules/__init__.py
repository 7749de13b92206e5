"""The LightningModule, the policy sources, the rollout sampler and the loss functions."""

from modules.module import ConfigError, InferlModule
from modules.policy import PolicySource, PretrainedPolicy, TinyPolicy
from modules.sampler import SamplingParams

__all__ = ["ConfigError", "InferlModule", "PolicySource", "PretrainedPolicy", "SamplingParams", "TinyPolicy"]
