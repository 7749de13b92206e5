"""Mean reward (k = 1): the objective every inference-aware one is compared against."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from callbacks.estimators import mean_weights
from callbacks.estimators.common import out_dtype
from datamodules.types import Groups
from modules.objective import Objective


class MeanReward(Objective):
    """Maximise expected reward with leave-one-out baselines (RLOO; GRPO with `normalize="group_std"`).

    Args:
        normalize: "none" (RLOO, the default) or "group_std" (divide by the group's reward std, as GRPO does;
            this reweights prompts by how mixed their rewards are).
        eps: added to the std when normalising, so all-equal groups get zero weights, not NaN.
        length_penalty: alpha >= 0: the weights are those of the shaped reward r - alpha * (generated tokens), the
            fixed per-token price most RL libraries offer as a length penalty (compare callbacks.BudgetConstrained,
            whose price lambda adapts until the mean length meets a budget). 0 = off.
    """

    k = 1

    def __init__(self, normalize: Literal["none", "group_std"] = "none", eps: float = 1e-6,
                 length_penalty: float = 0.0) -> None:
        if length_penalty < 0:
            raise ValueError(f"length_penalty must be >= 0, got {length_penalty}")
        self.normalize = normalize
        self.eps = eps
        self.length_penalty = float(length_penalty)
        self._value = 0.0

    def identity(self) -> dict:
        identity = {"normalize": self.normalize}
        return {**identity, "length_penalty": self.length_penalty} if self.length_penalty else identity

    def weights(self, groups: Groups, step: int) -> Tensor:
        self._value = float(groups.rewards.float().mean())
        rewards = groups.rewards
        if self.length_penalty > 0:
            rewards = rewards.double() - self.length_penalty * groups.costs.to(rewards.device).double()
        return mean_weights(rewards, normalize=self.normalize, eps=self.eps).to(out_dtype(groups.rewards))
