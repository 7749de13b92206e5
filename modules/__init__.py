"""The LightningModule, its settings, the policy sources, the rollout engines and the loss functions."""

from modules.hparams import CriticSettings, EvalSettings, GroupSettings, KLSettings, MemorySettings, UpdateSettings
from modules.module import ConfigError, InferlModule
from modules.policy import LoraParams, PolicySource, PretrainedPolicy, TinyPolicy
from modules.reference import ReferenceChoice
from modules.rollout import RolloutEngine, SamplingParams, TorchRollout

__all__ = ["ConfigError", "CriticSettings", "EvalSettings", "GroupSettings", "InferlModule", "KLSettings",
           "LoraParams", "MemorySettings", "PolicySource", "PretrainedPolicy", "ReferenceChoice", "RolloutEngine",
           "SamplingParams", "TinyPolicy", "TorchRollout", "UpdateSettings"]
