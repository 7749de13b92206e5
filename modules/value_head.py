"""The PPO critic: a value head on a causal LM's final hidden states, on the policy's own trunk or on a separate
critic model. transformers has no value-head model class (TRL keeps one); this one is a single linear layer."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from modules.errors import ConfigError
from modules.policy import PolicySource

CriticKind = Literal["none", "shared", "separate"]


class ValueHead(torch.nn.Module):
    """V(s_t) [N, L] from the hidden states [N, L, H] that predict each completion token (state before token t).

    Starts at zero (weight and bias): the first GAE advantages are then gamma^i lambda^i times the objective's
    weight at i tokens before the end (the weight itself at every token for gamma = lambda = 1, as without a critic).
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.proj.weight)
        torch.nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.proj(hidden.to(self.proj.weight.dtype)).squeeze(-1).float()


def build_critic(kind: CriticKind, source: PolicySource | None, policy_source: PolicySource, policy: torch.nn.Module,
                 tokenizer) -> tuple[torch.nn.Module | None, ValueHead | None]:
    """(separate critic model or None, value head or None) for `model.critic.kind`: "none" (critic-free: the objective's
    weights are the advantages), "shared" (a head on the policy's trunk), "separate" (a head on its own model, which
    reads the policy's token ids, so it must have the policy's tokenizer); `source` None = a fresh copy of the
    policy from `policy_source`."""
    if kind == "none":
        return None, None
    if kind == "shared":
        return None, ValueHead(hidden_size(policy))
    if kind == "separate":
        if source is not None and source.load_tokenizer().get_vocab() != tokenizer.get_vocab():
            raise ConfigError("model.critic.model has another tokenizer than model.policy: the critic reads the "
                              "policy's token ids; use a critic model with the policy's tokenizer")
        model = (source or policy_source).load_model().train()  # from_pretrained returns eval mode
        head = model.get_output_embeddings()
        if head is not None and head.weight is not model.get_input_embeddings().weight:
            head.requires_grad_(False)  # the value head reads the trunk: an LM head with no gradient breaks DDP
        return model, ValueHead(hidden_size(model))
    raise ConfigError(f"model.critic.kind must be none, shared or separate, got {kind!r}")


def hidden_size(model: torch.nn.Module) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.hidden_size)


def last_token_values(values: Tensor, lengths: Tensor) -> Tensor:
    """The value at each sequence's last completion token: values [N, L], lengths [N] -> [N] (0 for empty ones)."""
    last = (lengths.long() - 1).clamp(min=0)[:, None]
    return values.gather(1, last).squeeze(1) * (lengths > 0)
