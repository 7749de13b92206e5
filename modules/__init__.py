"""The LightningModule, the policy sources, the rollout sampler and the loss functions."""

from modules.module import ConfigError, InferlModule
from modules.policy import LoraParams, PolicySource, PretrainedPolicy, TinyPolicy
from modules.reference import ReferenceChoice
from modules.sampler import SamplingParams

__all__ = ["ConfigError", "InferlModule", "LoraParams", "PolicySource", "PretrainedPolicy", "ReferenceChoice",
           "SamplingParams", "TinyPolicy"]
